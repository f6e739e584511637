"""Which workers are online: their queues, pool, concurrency, device, model, and the tasks they hold.

Every worker writes a *heartbeat*, its status (:func:`predraft.workers.heartbeat.worker_status`), every
:data:`HEARTBEAT_SECONDS` where any admin command can read it at once:

- on Redis, to the key ``predraft:worker:<hostname>`` of the broker's database, which expires after
  :data:`OFFLINE_AFTER_SECONDS`;
- on kombu's SQLAlchemy transport (the embedded default, one host), to ``<var_dir>/run/workers/<hostname>.json``.

A heartbeat older than :data:`OFFLINE_AFTER_SECONDS`, or (same host) of a process that is gone, is a
worker that is not online; a worker removes its heartbeat when it stops. On Redis a worker also answers
the ``predraft_status`` remote-control command (a Celery ``inspect``), which ``predraft workers`` sends to
check that each worker answers its broker, and to find a worker whose heartbeat is missing. kombu's
SQLAlchemy transport cannot broadcast, so there is no inspect on the embedded default.

Statuses carry database ids and task names, never patient data.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from predraft.core.clock import as_utc
from predraft.core.settings import Settings, redact_url
from predraft.workers.queues import BrokerUnreachable

STATUS_COMMAND = "predraft_status"
HEARTBEAT_SECONDS = 2.0
OFFLINE_AFTER_SECONDS = 10.0
REDIS_KEY_PREFIX = "predraft:worker:"


@dataclass(frozen=True)
class HeldTask:
    """A task a worker holds: ``active`` (running), ``reserved`` (next to run) or ``scheduled`` (a retry or
    countdown waiting for its ETA)."""

    task_id: str
    task: str
    queue: str
    first_arg: Any
    args: tuple[Any, ...]
    state: str
    eta: datetime | None
    started_at: datetime | None
    #: Tries that failed before this one.
    retries: int = 0


@dataclass(frozen=True)
class WorkerStatus:
    """One online worker, as it described itself."""

    hostname: str
    pid: int
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    device: str
    device_name: str
    model_name: str
    model_version: str
    started_at: datetime | None
    heartbeat_at: datetime | None
    tasks: tuple[HeldTask, ...]
    #: "heartbeat key" (Redis), "heartbeat file" (embedded) or "inspect" (it answered, but wrote no heartbeat).
    source: str
    #: Whether it answered Celery's remote control (None: not asked, or a broker that cannot broadcast).
    answers_inspect: bool | None = None
    #: Every model it reads with, by role (``gate``, then each pack's name): "name version" of its card. Empty from a
    #: worker of an earlier version.
    models: dict[str, str] = field(default_factory=dict)

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            "queues": list(self.queues),
            "pool": self.pool,
            "concurrency": self.concurrency,
            "device": self.device,
            "device_name": self.device_name,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "models": dict(self.models),
            "started_at": _iso(self.started_at),
            "uptime_seconds": round((now - self.started_at).total_seconds(), 1) if self.started_at else None,
            "heartbeat_at": _iso(self.heartbeat_at),
            "heartbeat_age_seconds": (
                round(max(0.0, (now - self.heartbeat_at).total_seconds()), 1) if self.heartbeat_at else None
            ),
            "active": sum(task.state == "active" for task in self.tasks),
            "reserved": sum(task.state == "reserved" for task in self.tasks),
            "scheduled": sum(task.state == "scheduled" for task in self.tasks),
            "source": self.source,
            "answers_inspect": self.answers_inspect,
        }


def broadcasts(broker_url: str) -> bool:
    """Whether workers on this broker answer Celery's remote-control broadcasts (inspect), and keep their
    heartbeat in it (Redis); else they keep it in a file."""
    return broker_url.startswith(("redis://", "rediss://"))


def heartbeat_dir(settings: Settings) -> Path:
    return settings.var_dir / "run" / "workers"


def online_workers(
    settings: Settings,
    *,
    now: datetime | None = None,
    app: Any = None,
    inspect_timeout: float | None = None,
    timeout: float = 3.0,
) -> list[WorkerStatus]:
    """The workers online now, by hostname: those with a fresh heartbeat. With ``app`` and
    ``inspect_timeout`` on a broadcasting broker, each is also asked ``predraft_status`` (waiting that long
    for answers), which sets ``answers_inspect`` and adds a worker that answers without a heartbeat. The
    caller checks first that the broker answers (:func:`predraft.workers.queues.ping_broker`)."""
    now = now or datetime.now(UTC)
    found = {status.hostname: status for status in read_heartbeats(settings, timeout=timeout) if is_alive(status, now)}
    if app is not None and inspect_timeout and broadcasts(settings.broker_url):
        replies = app.control.broadcast(STATUS_COMMAND, reply=True, timeout=inspect_timeout) or []
        answered = {name: data for reply in replies for name, data in reply.items() if isinstance(data, dict)}
        for name, data in answered.items():
            if name not in found and "hostname" in data:
                found[name] = status_from_json(data, source="inspect")
        found = {name: replace(status, answers_inspect=name in answered) for name, status in found.items()}
    return sorted(found.values(), key=lambda status: status.hostname)


def read_heartbeats(settings: Settings, *, timeout: float = 3.0) -> list[WorkerStatus]:
    """Every heartbeat stored, fresh or not (Redis raises :class:`predraft.workers.queues.BrokerUnreachable`)."""
    if broadcasts(settings.broker_url):
        import redis  # here, not at the top: Redis brokers only; `predraft queue stats` must start fast

        client = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            keys = list(client.scan_iter(match=f"{REDIS_KEY_PREFIX}*", count=1000))
            payloads = client.mget(keys) if keys else []
        except redis.RedisError as exc:
            raise BrokerUnreachable(f"broker {redact_url(settings.broker_url)} could not be read: {exc}") from exc
        finally:
            client.close()
        sources = [(payload, "heartbeat key") for payload in payloads if payload is not None]
    else:
        folder = heartbeat_dir(settings)
        sources = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                sources.append((path.read_bytes(), "heartbeat file"))
            except OSError:
                continue  # removed meanwhile by a worker that stopped
    statuses = []
    for payload, source in sources:
        try:
            statuses.append(status_from_json(json.loads(payload), source=source))
        except (ValueError, KeyError, TypeError):
            continue  # written by another version
    return statuses


def is_alive(status: WorkerStatus, now: datetime) -> bool:
    """A fresh heartbeat, and (when the worker is on this host) a process that still runs."""
    if status.heartbeat_at is None or (now - status.heartbeat_at).total_seconds() > OFFLINE_AFTER_SECONDS:
        return False
    if status.hostname.rsplit("@", 1)[-1] == socket.gethostname():
        try:
            os.kill(status.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def status_from_json(data: dict[str, Any], *, source: str) -> WorkerStatus:
    return WorkerStatus(
        hostname=str(data["hostname"]),
        pid=int(data.get("pid") or 0),
        queues=tuple(data.get("queues") or ()),
        pool=str(data.get("pool") or ""),
        concurrency=int(data.get("concurrency") or 0),
        device=str(data.get("device") or ""),
        device_name=str(data.get("device_name") or ""),
        model_name=str(data.get("model_name") or ""),
        model_version=str(data.get("model_version") or ""),
        started_at=_parse(data.get("started_at")),
        heartbeat_at=_parse(data.get("heartbeat_at")),
        tasks=tuple(
            HeldTask(
                task_id=str(task["id"]),
                task=str(task["task"]),
                queue=str(task.get("queue") or ""),
                first_arg=task.get("first_arg"),
                args=tuple(task.get("args") or ()),
                state=str(task["state"]),
                eta=_parse(task.get("eta")),
                started_at=_parse(task.get("started_at")),
                retries=int(task.get("retries") or 0),
            )
            for task in data.get("tasks") or ()
        ),
        source=source,
        models={str(role): str(model) for role, model in models.items()}
        if isinstance(models := data.get("models"), dict)
        else {},
    )


def write_heartbeat_file(path: Path, status: dict[str, Any]) -> None:
    """Write ``status`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(status))
    partial.replace(path)


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value)
    return as_utc(moment)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None

"""In the worker: its status, published as a heartbeat and as the ``predraft_status`` inspect command.

Imported by every worker (``predraft.workers.app.create_celery`` includes it): once the worker is ready a thread
writes :func:`worker_status` every :data:`predraft.workers.presence.HEARTBEAT_SECONDS` to a Redis key that expires
(Redis broker) or to a file (the embedded broker), and removes it when the worker stops. The status names
the worker, its queues, pool and concurrency, its device (the CPU model, or the CUDA device's name), its
model card's name and version (the hip pack's) and every model it reads with (the gate's and each pack's card),
and the tasks it holds (active, reserved, or scheduled for their ETA): ids,
task names and scalar arguments only. :mod:`predraft.workers.presence` reads it. The same thread renews the
leases of the tasks the worker runs (:func:`predraft.workers.leases.renew_leases`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import redis
import torch
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from celery.worker.control import inspect_command
from celery.worker.request import Request

from predraft.core.settings import Settings, get_settings
from predraft.models.scope import GATE_CLASS
from predraft.models.taskcard import load_task_card
from predraft.workers.leases import lease_seconds, renew_leases
from predraft.workers.presence import (
    HEARTBEAT_SECONDS,
    OFFLINE_AFTER_SECONDS,
    REDIS_KEY_PREFIX,
    STATUS_COMMAND,
    broadcasts,
    heartbeat_dir,
    write_heartbeat_file,
)

log = logging.getLogger(__name__)

_started_at: datetime | None = None
_heartbeat: tuple[threading.Thread, threading.Event, Callable[[], None]] | None = None


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def _static_description() -> dict[str, Any]:
    """The device: what does not change while the worker runs."""
    settings = _settings()
    device, device_name = settings.model.device, _cpu_name()
    if device.startswith("cuda"):
        try:
            device_name = (
                torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else "CUDA not available"
            )
        except Exception as exc:  # a broken driver is worth seeing here, not a crash of the heartbeat
            device_name = f"unknown ({type(exc).__name__})"
    return {"device": device, "device_name": device_name}


def models_description(settings: Settings) -> dict[str, Any]:
    """The models the worker reads with, read again at each heartbeat (packs are read from their files on each
    task, so a pack installed or changed while the worker runs is used at once, and shown at once):
    ``model_name`` and ``model_version`` of the card that reads hips, and ``models``, every model by role:
    ``gate`` and each installed pack's name, its card's "name version" (or why it cannot be read)."""
    try:
        gate = load_task_card(settings.model.gate_card_path, verify_weights=False)[0]
        models = {"gate": f"{gate.name} {gate.version}"}
    except Exception as exc:  # a broken card is worth seeing here, not a crash of the heartbeat
        models = {"gate": f"unreadable card ({type(exc).__name__})"}
    try:
        registry = settings.model.packs()
    except Exception as exc:
        unreadable = f"unreadable ({type(exc).__name__})"
        return {
            "model_name": f"unreadable packs ({type(exc).__name__})",
            "model_version": "",
            "models": {**models, "packs": unreadable},
        }
    models.update({installed.name: f"{installed.card.name} {installed.card.version}" for installed in registry.packs})
    hip = registry.for_region(GATE_CLASS)
    return {
        "model_name": hip.card.name if hip is not None else "no pack reads hips",
        "model_version": hip.card.version if hip is not None else "",
        "models": models,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def worker_status(consumer: Any) -> dict[str, Any]:
    """This worker's status as JSON-able data (what ``predraft_status`` answers and the heartbeat holds)."""
    controller = consumer.controller
    tasks: list[dict[str, Any]] = []
    active = {request.id for request in _copy(worker_state.active_requests)}
    for request in _copy(worker_state.reserved_requests):
        tasks.append(_held(request, "active" if request.id in active else "reserved"))
    schedule = getattr(getattr(consumer, "timer", None), "schedule", None)
    for waiting in _copy(getattr(schedule, "queue", None) or []):  # as celery.worker.control.scheduled reads it
        entry_args = getattr(waiting.entry, "args", None) or ()
        if entry_args and isinstance(entry_args[0], Request):
            tasks.append(_held(entry_args[0], "scheduled"))
    queues = sorted(queue.name for queue in (consumer.task_consumer.queues if consumer.task_consumer else []))
    pool = getattr(controller.pool_cls, "__module__", str(controller.pool_cls)).rsplit(".", 1)[-1]
    return {
        "hostname": controller.hostname,
        "pid": os.getpid(),
        "queues": queues,
        "pool": {"thread": "threads"}.get(pool, pool),
        "concurrency": controller.concurrency,
        **_static_description(),
        **models_description(_settings()),
        "started_at": _started_at.isoformat(timespec="seconds") if _started_at else None,
        "heartbeat_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "tasks": tasks,
    }


def _copy(items: Any) -> list[Any]:
    """A list of a set or list other threads change (the consumer adds and removes while we read)."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:
            continue
    return []


def _held(request: Any, state: str) -> dict[str, Any]:
    """A held request as data: ids and scalar arguments only (``classify``'s images are dropped)."""
    args = list(request.args or [])
    eta, started = request.eta, request.time_start
    return {
        "id": request.id,
        "task": request.name,
        "queue": (request.delivery_info or {}).get("routing_key", ""),
        "first_arg": args[0] if args and not isinstance(args[0], list | dict) else None,
        "args": [arg for arg in args if not isinstance(arg, list | dict)],
        "state": state,
        "retries": int((getattr(request, "request_dict", None) or {}).get("retries") or 0),
        "eta": eta if isinstance(eta, str) or eta is None else eta.isoformat(),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds") if started else None,
    }


@inspect_command(name=STATUS_COMMAND)
def _status_command(state: Any, **_: object) -> dict[str, Any]:
    """Celery remote control: this worker's :func:`worker_status`."""
    return worker_status(state.consumer)


@worker_ready.connect(dispatch_uid="predraft-heartbeat-ready")
def _on_ready(sender: Any = None, **_: object) -> None:
    global _started_at, _heartbeat
    _started_at = datetime.now(UTC)
    if sender is None:
        return
    consumer, settings = sender, _settings()
    hostname = consumer.controller.hostname
    if broadcasts(settings.broker_url):
        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=HEARTBEAT_SECONDS, socket_connect_timeout=HEARTBEAT_SECONDS
        )
        key = f"{REDIS_KEY_PREFIX}{hostname}"

        def write(status: dict[str, Any]) -> None:
            client.set(key, json.dumps(status), ex=int(OFFLINE_AFTER_SECONDS))

        def remove() -> None:
            client.delete(key)
            client.close()
    else:
        path = heartbeat_dir(settings) / f"{hostname}.json"

        def write(status: dict[str, Any]) -> None:
            write_heartbeat_file(path, status)

        def remove() -> None:
            path.unlink(missing_ok=True)

    def renew() -> None:
        active = [request.id for request in _copy(worker_state.active_requests)]
        renew_leases(
            settings.database_url,
            holder=hostname,
            task_ids=active,
            seconds=lease_seconds(settings.workers.sweep_stale_seconds),
        )

    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(consumer, write, renew, stop), name="predraft-heartbeat", daemon=True)
    _heartbeat = (thread, stop, remove)
    thread.start()


def _beat(
    consumer: Any, write: Callable[[dict[str, Any]], None], renew: Callable[[], None], stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            write(worker_status(consumer))
        except Exception as exc:  # a heartbeat must never take the worker down (the broker may be away)
            log.warning("could not write this worker's heartbeat: %s: %s", type(exc).__name__, exc)
        try:
            renew()
        except Exception as exc:  # nor the database: the leases then lapse, and the sweeper sends the work again
            log.warning("could not renew this worker's leases: %s", type(exc).__name__)
        stop.wait(HEARTBEAT_SECONDS)


@worker_shutdown.connect(dispatch_uid="predraft-heartbeat-shutdown")
def _on_shutdown(**_: object) -> None:
    global _heartbeat
    if _heartbeat is None:
        return
    thread, stop, remove = _heartbeat
    _heartbeat = None
    stop.set()
    thread.join(timeout=HEARTBEAT_SECONDS + 1)
    try:
        remove()
    except Exception as exc:
        log.warning("could not remove this worker's heartbeat: %s: %s", type(exc).__name__, exc)

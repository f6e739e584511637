"""Prometheus metrics of every predraft process (prometheus-client).

Each process counts what it does and serves its own ``/metrics``: the web app on its HTTP port (with the
queue depths, read from the broker when scraped), the DIMSE listener on ``listener_metrics_port``, each
worker on ``worker_metrics_port`` (:func:`serve_metrics`). ``deploy/prometheus.yml`` scrapes all three.

No label ever holds patient data: labels are transports, outcomes, task names, queue names, devices,
export destination names and review actions.

With several DIMSE listener processes (:mod:`predraft.listener.processes`) the listener's metrics are those of
all of them on the one ``listener_metrics_port``: the processes run prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, a folder of their supervisor's) and the supervisor serves the sum
(:func:`serve_metrics` with ``multiprocess_dir``). One port, not one per process: a port per process would
take the ports after it, which deploy/ gives the workers (9111, 9112), and a restarted process's counts
would start again from 0. Counters keep what a process that died had counted; the open-associations gauge
sums the live processes only.

A worker's metrics are those of its own process: the ``threads`` and ``solo`` pools (the defaults, and
what a GPU worker runs: its micro-batcher needs threads) count everything; a ``prefork`` pool's children
keep their own counts, which this endpoint does not see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Seconds: from a few milliseconds (a draft task) to minutes (a study held up by a slow export).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds from a study's last instance to its SR stored: the product's headline figure (target: 3 s on a CPU).
_TIME_TO_DRAFT_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# --- listener (and STOW-RS in the web app) -------------------------------------------------------------------
INSTANCES_RECEIVED = Counter(
    "predraft_instances_received",
    "Instances received, by transport (dimse, stow) and outcome (a ReceiveStatus "
    "value: stored, duplicate, cannot_understand, out_of_resources, ...).",
    ["transport", "outcome"],
)
BYTES_RECEIVED = Counter(
    "predraft_received_bytes", "Bytes of the instances stored (duplicates and refusals not counted).", ["transport"]
)
ASSOCIATIONS_OPEN = Gauge(
    "predraft_dimse_associations_open",
    "DIMSE associations established and not yet ended (their last C-STORE handler has returned).",
    multiprocess_mode="livesum",  # several listener processes: the sum of those alive
)
ASSOCIATIONS = Counter(
    "predraft_dimse_associations", "DIMSE associations, by outcome: established, rejected, aborted.", ["outcome"]
)
CONNECTIONS_REFUSED = Counter(
    "predraft_dimse_connections_refused",
    "DIMSE connections closed before an association, by reason: "
    "address_not_allowed, too_many_from_address, request_timeout (no whole A-ASSOCIATE-RQ in time), "
    "pdu_too_large.",
    ["reason"],
)
ASSOCIATIONS_ABORTED = Counter(
    "predraft_dimse_associations_aborted",
    "DIMSE associations aborted, by reason: peer (the caller aborted or "
    "dropped the connection), idle_timeout, pdu_too_large, message_too_large (a data set past max_dataset_bytes or "
    "a command set past 64 KiB, counted while it arrives), protocol_error.",
    ["reason"],
)
INPUTS_REFUSED = Counter(
    "predraft_inputs_refused",
    "Inputs refused for crossing a bound, by transport (dimse, stow, wado, qido) and "
    "bound: dataset_bytes, inflated_bytes (also a Deflated data set that cannot be inflated), sequence_depth, "
    "element_count, upload_bytes, invalid_uid, query.",
    ["transport", "bound"],
)

# --- workers -------------------------------------------------------------------------------------------------
TASK_SECONDS = Histogram(
    "predraft_task_duration_seconds",
    "Run time of each task, by task name and state (SUCCESS, RETRY, FAILURE).",
    ["task", "state"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_DRAFT = Histogram(
    "predraft_time_to_draft_seconds",
    "Seconds from a study's last instance received to its draft SR stored.",
    buckets=_TIME_TO_DRAFT_BUCKETS,
)
BATCH_SIZE = Histogram(
    "predraft_classify_batch_size",
    "Images per forward pass of the classifier's micro-batcher.",
    ["device"],
    buckets=_BATCH_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "predraft_classify_inference_seconds",
    "Seconds per forward pass (upload, network, softmax) of one batch.",
    ["device"],
    buckets=_LATENCY_BUCKETS,
)
DECODE_FAILURES = Counter(
    "predraft_decode_failures",
    "Instances whose pixels could not be decoded and prepared, by transfer syntax "
    "(its UID) and reason: error (the decoder refused), crash (the decoder died), timeout, memory.",
    ["transfer_syntax", "reason"],
)
EXPORTS = Counter(
    "predraft_exports",
    "Tries to send an SR to a destination, by destination and outcome: sent, failed (will be "
    "retried), dead (given up).",
    ["destination", "outcome"],
)

# --- web app -------------------------------------------------------------------------------------------------
IMAGES_ROUTED = Counter(
    "predraft_images_routed",
    "Images prepared, by the pack that reads them (predraft.models.pack), or out_of_scope when routing found none.",
    ["pack"],
)
DRAFTS = Counter("predraft_drafts", "Drafts written, by pack (a draft of two regions counts once for each).", ["pack"])
REVIEWS = Counter(
    "predraft_reviews", "Drafts reviewed by a radiologist, by action: accepted, edited, rejected.", ["action"]
)


def record_received(transport: str, outcome: str, size: int) -> None:
    """Count one received instance; ``size`` bytes count only when it was stored."""
    INSTANCES_RECEIVED.labels(transport=transport, outcome=outcome).inc()
    if outcome == "stored" and size > 0:
        BYTES_RECEIVED.labels(transport=transport).inc(size)


class QueueDepthCollector(Collector):
    """``predraft_queue_messages_waiting{queue}``, read from the broker at each scrape (a count per queue,
    never a read of every message), by ``read_depths`` (queue name -> waiting messages). A broker that does
    not answer gives no samples and ``predraft_queue_depth_up 0``: the scrape itself never fails on it."""

    def __init__(self, read_depths: Callable[[], dict[str, int]]) -> None:
        self._read_depths = read_depths

    def describe(self) -> Iterator[Any]:
        return iter(())  # no descriptions at registration: registering must not touch the broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("predraft_queue_depth_up", "1 if the broker answered the queue-depth read, else 0.")
        depth = GaugeMetricFamily(
            "predraft_queue_messages_waiting", "Messages waiting in each queue of the broker.", labels=["queue"]
        )
        try:
            depths = self._read_depths()
        except Exception as exc:  # an unreachable broker must not break the scrape of everything else
            log.warning("queue depths not read: %s", type(exc).__name__)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, waiting in sorted(depths.items()):
                depth.add_metric([queue], waiting)
        yield up
        yield depth


def serve_metrics(host: str, port: int, *, multiprocess_dir: str | None = None) -> int | None:
    """Serve this process's metrics on ``http://host:port/metrics`` (a daemon thread); ``port`` 0: not at all.
    With ``multiprocess_dir``, serve instead the sum of the processes that write their metrics there
    (prometheus-client's multiprocess mode: the listener processes' supervisor).

    Returns the port, or None when ``port`` is 0. Raises OSError naming the address when it is taken, so a
    second worker on one host is told to pick its own ``--metrics-port``.
    """
    if port == 0:
        return None
    registry = REGISTRY
    if multiprocess_dir is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror} (set another port, or 0 for none)"
        ) from exc
    return port

"""Prometheus metrics (the ``prometheus`` extra: ``prometheus-client``).

Counters and histograms are fed by receivers of the lifecycle dispatch signals,
connected by :func:`connect` (when ``RELAY["METRICS"]`` is on, or by
``relayworker --metrics-port``); they count what happens in this process.
Gauges are read from the database at scrape time, so any process shows the
same numbers. Everything is registered in prometheus_client's default
registry, so an existing ``/metrics`` endpoint shows them too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.db import DatabaseError, connections
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from django_relay import queries, signals
from django_relay.conf import settings
from django_relay.health import default_max_age

logger = logging.getLogger("django_relay")

_LABELS = ("queue", "worker")
# Jobs run from milliseconds to minutes, and wait from nothing to a backlog's length.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

#: ``django_relay_jobs_<event>_total``, by queue and worker.
JOBS = {
    event: Counter(f"django_relay_jobs_{event}", f"Jobs {event}.", _LABELS)
    for event in ("enqueued", "started", "completed", "failed", "discarded", "cancelled", "snoozed")
}
JOB_DURATION = Histogram(
    "django_relay_job_duration_seconds",
    "Seconds from the start of an attempt until its outcome is persisted.",
    _LABELS,
    buckets=_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "django_relay_job_queue_wait_seconds",
    "Seconds from a job's scheduled time until a runner started it (database clock).",
    _LABELS,
    buckets=_BUCKETS,
)
RELAY_DURATION = Histogram(
    "django_relay_relay_duration_seconds",
    "Seconds from a relay() call until it has the job's outcome (or gives up).",
    _LABELS,
    buckets=_BUCKETS,
)

_OUTCOMES = {
    signals.job_completed: JOBS["completed"],
    signals.job_failed: JOBS["failed"],
    signals.job_discarded: JOBS["discarded"],
    signals.job_cancelled: JOBS["cancelled"],
    signals.job_snoozed: JOBS["snoozed"],
}


class DatabaseCollector(Collector):
    """Gauges read at scrape time with one query over the unfinished jobs."""

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would call collect(): a query at import time.
        yield from self._families().values()
        yield self._runners(0)

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            what: GaugeMetricFamily(f"django_relay_jobs_{what}", doc, labels=["queue"])
            for what, doc in (
                ("available", "Jobs ready to run now."),
                ("executing", "Jobs a runner is running."),
                ("waiting_for_signal", "Jobs snoozed in await_signal()."),
            )
        }

    def _runners(self, count: int) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "django_relay_runners",
            "Runners whose heartbeat is fresh (as relayhealth judges).",
            value=count,
        )

    def collect(self) -> Iterator[Metric]:
        gauges = self._families()
        try:
            with connections[settings.DATABASE_ALIAS].cursor() as cursor:
                rows = queries.unfinished_counts(cursor, default_max_age())
        except DatabaseError as exc:
            # A scrape still shows the counters; the gap in the gauges says the rest.
            logger.warning("metrics: reading the job counts failed: %s", exc)
            return
        counts = {(queue, what): n for queue, what, n in rows}
        queues = sorted({q for q, _ in counts if q is not None} | set(_configured_queues()))
        for what, gauge in gauges.items():
            for queue in queues:
                gauge.add_metric([queue], counts.get((queue, what), 0))
            yield gauge
        yield self._runners(counts.get((None, "runners"), 0))


def _configured_queues() -> Iterable[str]:
    queues = settings.QUEUES
    return queues if isinstance(queues, dict) else ()


REGISTRY.register(DatabaseCollector())


def count_enqueued(sender: Any, job: Any, **kwargs: Any) -> None:
    """Receiver of ``job_enqueued``."""
    JOBS["enqueued"].labels(job.queue, job.worker).inc()


async def count_started(sender: Any, job: Any, **kwargs: Any) -> None:
    """Receiver of ``job_started``: counts it and observes its queue wait."""
    JOBS["started"].labels(job.queue, job.worker).inc()
    if job.attempted_at is not None and job.scheduled_at is not None:
        wait = (job.attempted_at - job.scheduled_at).total_seconds()
        QUEUE_WAIT.labels(job.queue, job.worker).observe(max(wait, 0.0))


async def count_outcome(signal: Any, sender: Any, job: Any, **kwargs: Any) -> None:
    """Receiver of the outcome signals: counts it and observes its duration."""
    _OUTCOMES[signal].labels(job.queue, job.worker).inc()
    if kwargs.get("duration") is not None:
        JOB_DURATION.labels(job.queue, job.worker).observe(kwargs["duration"])


async def observe_relay(sender: Any, job: Any, duration: float, **kwargs: Any) -> None:
    """Receiver of ``job_relayed``."""
    RELAY_DURATION.labels(job.queue, job.worker).observe(duration)


def connect() -> None:
    """Connect the receivers that feed the counters (connecting twice is harmless)."""
    signals.job_enqueued.connect(count_enqueued, dispatch_uid="django_relay.metrics")
    signals.job_started.connect(count_started, dispatch_uid="django_relay.metrics")
    for signal in _OUTCOMES:
        signal.connect(count_outcome, dispatch_uid="django_relay.metrics")
    signals.job_relayed.connect(observe_relay, dispatch_uid="django_relay.metrics")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def serve(port: int, host: str = "0.0.0.0") -> ThreadingWSGIServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the server.

    ``port`` 0 picks a free port: read it from ``server.server_port``.
    """
    app = make_wsgi_app()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        finally:
            # Each scrape runs in a thread of its own: close the connection it opened.
            connections.close_all()

    server = make_server(host, port, wsgi, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="relay-metrics", daemon=True).start()
    return server

"""Receivers of the dispatch signals that log lifecycle events on ``django_relay.jobs``.

Outcomes (completed, failed, discarded, cancelled, snoozed) are logged by the
runner as it persists them, with their duration; these receivers add the
events the runner does not see as outcomes.
"""

from __future__ import annotations

import logging
from typing import Any

from django_relay import signals
from django_relay.logs import job_fields, jobs_logger


def log_enqueued(sender: Any, job: Any, **kwargs: Any) -> None:
    """DEBUG: ``job 42 app.workers.Mail enqueued on default (available)``."""
    jobs_logger.debug(
        "job %s %s enqueued on %s (%s)",
        job.id,
        job.worker,
        job.queue,
        job.state,
        extra=job_fields(job, "enqueued"),
    )


async def log_started(sender: Any, job: Any, **kwargs: Any) -> None:
    """DEBUG: ``job 42 app.workers.Mail started (attempt 1/20) after 0.003s in queue``."""
    # Both timestamps come from the database's clock: no skew between machines.
    wait = (job.attempted_at - job.scheduled_at).total_seconds() if job.attempted_at else None
    jobs_logger.debug(
        "job %s %s started (attempt %s/%s) after %.3fs in queue",
        job.id,
        job.worker,
        job.attempt,
        job.max_attempts,
        wait or 0.0,
        extra=job_fields(job, "started", wait=wait),
    )


def log_signalled(
    sender: Any, job_id: int, signal_sender: str | None = None, **kwargs: Any
) -> None:
    """INFO: ``job 42 app.workers.Approve signalled by alice``."""
    worker = getattr(sender, "__relay_worker__", None)
    jobs_logger.info(
        "job %s %s signalled by %s",
        job_id,
        worker,
        signal_sender or "(anonymous)",
        extra={
            "event": "signalled",
            "job_id": job_id,
            "worker": worker,
            "signal_sender": signal_sender,
        },
    )


def connect() -> None:
    """Connect the receivers; called from ``AppConfig.ready()`` and by ``relayworker``.

    The DEBUG receivers are connected only when ``django_relay.jobs`` logs DEBUG
    (when Django starts, or after ``relayworker --log-level DEBUG``): a connected
    receiver makes the runner send ``job_started`` for every job, which costs
    throughput even when the line is dropped. Connecting twice is harmless.
    """
    signals.job_signalled.connect(log_signalled, dispatch_uid="django_relay.log_signalled")
    if jobs_logger.isEnabledFor(logging.DEBUG):
        signals.job_enqueued.connect(log_enqueued, dispatch_uid="django_relay.log_enqueued")
        signals.job_started.connect(log_started, dispatch_uid="django_relay.log_started")

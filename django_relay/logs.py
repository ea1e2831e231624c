"""The ``django_relay.jobs`` logger: one line per lifecycle event, with fields.

Each line carries ``extra`` fields that a JSON formatter (python-json-logger,
structlog's stdlib bridge ...) emits as keys: ``event``, ``job_id``, ``worker``,
``queue``, ``attempt``, ``max_attempts``, ``state`` and, where it applies,
``duration`` (seconds), ``wait`` (seconds from ``scheduled_at`` to the start),
``error`` and ``signal_sender``.
"""

from __future__ import annotations

import logging
from typing import Any

#: Lifecycle events: one line each, on this logger.
jobs_logger = logging.getLogger("django_relay.jobs")

#: The event a persisted outcome is, by the state it leaves the job in.
OUTCOME_EVENTS = {
    "completed": "completed",
    "retryable": "failed",
    "discarded": "discarded",
    "cancelled": "cancelled",
    "scheduled": "snoozed",
}

#: The level of each outcome's line: failures stand out at WARNING and ERROR.
OUTCOME_LEVELS = {
    "completed": logging.INFO,
    "retryable": logging.WARNING,
    "discarded": logging.ERROR,
    "cancelled": logging.INFO,
    "scheduled": logging.INFO,
}


def job_fields(job: Any, event: str, **more: Any) -> dict[str, Any]:
    """The ``extra`` of a lifecycle line about ``job`` (a :class:`~django_relay.models.Job`)."""
    return {
        "event": event,
        "job_id": job.id,
        "worker": job.worker,
        "queue": job.queue,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "state": job.state,
        **more,
    }

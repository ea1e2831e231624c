"""The job being executed, available to code running inside ``process``."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django_relay.models import Job

current_job: ContextVar[Job | None] = ContextVar("django_relay_current_job", default=None)

#: When the running attempt times out (``time.monotonic()``), or None without a
#: worker ``timeout``: ``await_signal`` ends its live wait in time to snooze.
attempt_deadline: ContextVar[float | None] = ContextVar(
    "django_relay_attempt_deadline", default=None
)

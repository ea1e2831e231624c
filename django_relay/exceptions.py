"""Every exception django_relay raises on purpose."""

from __future__ import annotations


class RelayError(Exception):
    """Base class of django_relay's errors."""


class EncodeError(RelayError, ValueError):
    """A value cannot be stored: not serializable by the codec, or too large."""


class DecodeError(RelayError, ValueError):
    """Stored data that the codec refuses to decode (an unknown tag, bad JSON)."""


class WorkerError(RelayError):
    """A job names a worker that is not a registered ``@worker`` class."""


class RelayTimeout(RelayError, TimeoutError):
    """The job did not finish within the timeout; it keeps running.

    Re-attach later with ``await_result(exc.job_id)``. ``job_id`` is None when
    ``relay()`` could not even confirm its job's insert within the timeout (the
    database did not answer): that job is then not run (cancelled if its insert
    landed after all, unless a runner started it first or the process exited).
    """

    def __init__(self, job_id: int | None, timeout: float) -> None:
        if job_id is None:
            message = (
                f"relay() could not confirm its job's insert within {timeout:g}s (the "
                "database did not answer); it is cancelled if the insert landed after all"
            )
        else:
            message = f"job {job_id} did not finish within {timeout:g}s (it keeps running)"
        super().__init__(message)
        self.job_id = job_id
        self.timeout = timeout


class RelayDiscard(RelayError):
    """The job was discarded, or entered ``retryable`` while not waiting through retries."""

    def __init__(self, job_id: int, reason: str | None, *, state: str = "discarded") -> None:
        super().__init__(f"job {job_id} {state}: {reason or 'no error recorded'}")
        self.job_id = job_id
        self.reason = reason
        self.state = state


class RelayCancelled(RelayError):
    """The job returned ``Cancel(reason)`` or was cancelled."""

    def __init__(self, job_id: int, reason: str | None) -> None:
        super().__init__(f"job {job_id} cancelled: {reason or 'no reason given'}")
        self.job_id = job_id
        self.reason = reason


class ResultTooLarge(RelayError):
    """The job completed, but its result exceeded ``RELAY["MAX_RESULT_BYTES"]``."""

    def __init__(self, job_id: int, size: int | None, limit: int | None) -> None:
        super().__init__(
            f"job {job_id} completed but its result ({size} bytes) exceeded "
            f"MAX_RESULT_BYTES ({limit}); the result was not stored"
        )
        self.job_id = job_id
        self.size = size
        self.limit = limit


class SignalTimeout(RelayError, TimeoutError):
    """``await_signal`` reached its ``wait_for`` deadline without a signal."""

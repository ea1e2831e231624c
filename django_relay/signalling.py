"""Jobs that pause for a signal: ``await_signal`` (inside a job), ``signal`` (anywhere).

A signal is a :class:`~django_relay.models.JobSignal` row, committed before
``signal()`` returns. The n-th ``await_signal`` call in a run of ``process``
returns the n-th signal delivered to the job, so a run repeated after a snooze, a
retry or a rescue replays the same payloads in the same order.

Waiting has two phases. The live wait blocks in place for ``wait_timeout``
seconds, woken by the ``relay_signal`` NOTIFY. Then the job snoozes, freeing its
slot and connection, until a signal arrives (the insert trigger makes it
available at once) or the ``wait_for`` deadline passes; ``process`` then runs
again from the start and replays its way back to the same ``await_signal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections

from django_relay import codec, queries, signals, tracing
from django_relay.conf import settings
from django_relay.context import attempt_deadline, current_job
from django_relay.exceptions import SignalTimeout
from django_relay.listener.notifier import get_notifier
from django_relay.models import Job
from django_relay.registry import lookup

#: How long a snooze "forever" (``wait_for=None``) lasts: a signal ends it sooner.
_FOREVER = 10 * 365 * 86_400.0


class WaitForSignal(BaseException):
    """Raised by ``await_signal`` to snooze the job; the executor turns it into an ack.

    A ``BaseException``, so a worker's ``except Exception`` does not swallow it.
    """

    def __init__(self, seconds: float, wait: dict[str, Any], seen: int) -> None:
        super().__init__(f"snoozing for a signal for up to {seconds:g}s")
        self.seconds = seconds
        self.wait = wait
        self.seen = seen


def _seconds(wait_for: float | dt.timedelta | None) -> float | None:
    if isinstance(wait_for, dt.timedelta):
        return wait_for.total_seconds()
    if wait_for is not None and (
        isinstance(wait_for, bool) or not isinstance(wait_for, int | float) or wait_for < 0
    ):
        raise ValueError(f"wait_for must be seconds >= 0, a timedelta or None, not {wait_for!r}")
    return wait_for


def _next_signal(job: Job, n: int) -> tuple[dt.datetime, int, bool, Any]:
    with connections[settings.DATABASE_ALIAS].cursor() as cursor:
        now, count, signal_id, payload = queries.nth_signal(
            cursor, job.id, n, job.attempt, job.claim_token
        )
    found = signal_id is not None
    return now, count, found, codec.loads(payload) if found else None


async def await_signal(
    wait_for: float | dt.timedelta | None = None, wait_timeout: float = 5.0
) -> Any:
    """Inside ``process``: wait for the next signal to this job and return its payload.

    Args:
        wait_for: Total wait, measured from the first snooze: seconds, a
            ``timedelta``, or None to wait forever. Persisted in ``job.meta`` so
            later attempts honour the same deadline (database clock).
        wait_timeout: Seconds to block in place before snoozing the job.

    Raises:
        SignalTimeout: the ``wait_for`` deadline passed without a signal.
        RuntimeError: called outside an executing job.
    """
    job = current_job.get()
    if job is None:
        raise RuntimeError("await_signal() can only be called inside a job's process()")
    total = _seconds(wait_for)
    if wait_timeout < 0:
        raise ValueError(f"wait_timeout must be >= 0, not {wait_timeout!r}")
    n = getattr(job, "_relay_signals_awaited", 0) + 1
    wait = job.meta.get("signal_wait") or {}
    if wait.get("n") != n:
        wait = {}  # a new wait: its deadline starts at its first snooze

    woken = asyncio.Event()
    loop = asyncio.get_running_loop()
    job_id = str(job.id)

    def on_signal(payload: str) -> None:
        if payload == job_id:
            loop.call_soon_threadsafe(woken.set)

    # The live wait is a span; a snooze shows as the gap before the next attempt.
    with tracing.waiting("await_signal", job):
        unlisten = get_notifier().listen(queries.SIGNAL_CHANNEL, on_signal)
        try:
            live_until = loop.time() + wait_timeout
            attempt_ends = attempt_deadline.get()
            if attempt_ends is not None:
                # Snooze before the worker's timeout fails the attempt, leaving the
                # snooze's own round trip its share of the time.
                margin = min(1.0, 0.2 * (attempt_ends - time.monotonic()))
                live_until = min(live_until, loop.time() + attempt_ends - time.monotonic() - margin)
            while True:  # subscribed above, so a signal committed from here on wakes us
                now, count, found, payload = await sync_to_async(_next_signal)(job, n)
                if found:
                    job._relay_signals_awaited = n  # type: ignore[attr-defined]
                    job.meta.pop("signal_wait", None)
                    return payload
                deadline = wait.get("deadline")
                if deadline is not None and dt.datetime.fromisoformat(deadline) <= now:
                    raise SignalTimeout(
                        f"job {job.id}: no signal within the wait_for deadline ({deadline})"
                    )
                remaining = live_until - loop.time()
                if remaining <= 0:
                    break
                woken.clear()
                with contextlib.suppress(TimeoutError):  # a NOTIFY, or the backup poll
                    await asyncio.wait_for(woken.wait(), min(remaining, settings.POLL_INTERVAL))
        finally:
            unlisten()
    if not wait:
        until = None if total is None else now + dt.timedelta(seconds=total)
        wait = {
            "n": n,
            "since": now.isoformat(),
            "deadline": None if until is None else until.isoformat(),
        }
    deadline = wait["deadline"]
    seconds = (
        _FOREVER
        if deadline is None
        else max((dt.datetime.fromisoformat(deadline) - now).total_seconds(), 0.0)
    )
    # The counter as we last read it: a signal committed after that read turns the
    # snooze into a run (see queries.ACK), so no wake-up is lost.
    raise WaitForSignal(seconds, wait, seen=count)


def await_signal_sync(
    wait_for: float | dt.timedelta | None = None, wait_timeout: float = 5.0
) -> Any:
    """See await_signal()."""
    return async_to_sync(await_signal)(wait_for, wait_timeout)


def _job_ids(job_id_or_ids: int | Job | Iterable[int | Job]) -> list[int]:
    items = [job_id_or_ids] if isinstance(job_id_or_ids, int | Job) else list(job_id_or_ids)
    ids = []
    for item in items:
        job_id = item.pk if isinstance(item, Job) else item
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise TypeError(f"signal() takes job ids or Jobs, not {item!r}")
        ids.append(job_id)
    return ids


def signal_sync(
    job_id_or_ids: int | Job | Iterable[int | Job],
    payload: Any,
    *,
    sender: str | None = None,
    key: str | None = None,
) -> int:
    """Deliver ``payload`` to one job or many; return how many received it.

    Delivery to a finished or missing job is a no-op. The signal is committed
    (or joins the caller's transaction) before this returns.

    Args:
        job_id_or_ids: A job id, a Job, or a list of them.
        payload: Any value the codec stores (JSON, datetime, Decimal, UUID ...).
        sender: Who sent it, kept for the audit trail (the admin records the user).
        key: An idempotency key: a repeated key is delivered once per job.

    Raises:
        EncodeError: the payload cannot be stored, or is larger than
            ``RELAY["MAX_ARGS_BYTES"]``; nothing is stored.
    """
    job_ids = _job_ids(job_id_or_ids)
    encoded = codec.dumps(payload, limit=settings.MAX_ARGS_BYTES, what="signal payload")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str, not {key!r}")
    if not job_ids:
        return 0
    with connections[settings.DATABASE_ALIAS].cursor() as cursor:
        delivered = queries.send_signal(cursor, job_ids, encoded, sender or "", key)
    if signals.job_signalled.receivers:
        for job_id, worker_path in delivered:
            signals.job_signalled.send(
                sender=lookup(worker_path),
                job_id=job_id,
                payload=payload,
                signal_sender=sender,
            )
    return len(delivered)


async def signal(
    job_id_or_ids: int | Job | Iterable[int | Job],
    payload: Any,
    *,
    sender: str | None = None,
    key: str | None = None,
) -> int:
    """See signal_sync()."""
    return await sync_to_async(signal_sync)(job_id_or_ids, payload, sender=sender, key=key)

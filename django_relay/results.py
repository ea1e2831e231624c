"""Awaiting job results from any process: ``relay``, ``await_result``, ``await_many``.

The waiting itself (subscribe, then check; batched reads; the backup poll; the
re-read on reconnect) is done by the process's listener: see
:mod:`django_relay.listener.waiters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from asgiref.sync import AsyncToSync, async_to_sync, sync_to_async
from django.db import connections

from django_relay import signals, tracing
from django_relay.conf import settings
from django_relay.enqueue import encode, mark_saved, new
from django_relay.exceptions import (
    RelayError,
    RelayTimeout,
)
from django_relay.listener.waiters import Outcome, Registry, Waiter, get_registry, listening
from django_relay.models import Job
from django_relay.registry import lookup

if TYPE_CHECKING:
    from django.tasks import TaskResult

    #: What the waits accept: a job, its id, or a RelayBackend task's result.
    Waitable = Job | int | TaskResult[Any, Any]

logger = logging.getLogger("django_relay")


async def _wait(
    job_ids: list[int], *, timeout: float, poll_interval: float, with_retries: bool
) -> list[Outcome | None]:
    """Outcomes in the order given; None for a job not finished within ``timeout``."""
    registry = get_registry()
    await listening(registry, timeout)
    waiters = [
        Waiter(job_id, with_retries=with_retries, poll_interval=poll_interval) for job_id in job_ids
    ]
    for waiter in waiters:
        registry.notifier.call_soon(registry.add, waiter)
    return await _outcomes(registry, waiters, timeout)


async def _outcomes(
    registry: Registry, waiters: list[Waiter], timeout: float
) -> list[Outcome | None]:
    try:
        if len(waiters) == 1:
            # A relay's wait, of which 10,000 may be pending in a process: a timeout
            # scope holds much less than asyncio.wait (a set, callbacks, a coroutine).
            # At the timeout the future is cancelled: nothing else ever awaits it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiters[0].future
        elif waiters:
            await asyncio.wait([w.future for w in waiters], timeout=timeout)
        return [_settled(w.future) for w in waiters]
    finally:
        _forget(registry, waiters)


def _settled(future: asyncio.Future[Outcome]) -> Outcome | None:
    return future.result() if future.done() and not future.cancelled() else None


def _forget(registry: Registry, waiters: list[Waiter]) -> None:
    for waiter in waiters:
        waiter.active = False
        # A waiter told its outcome was removed by the registry as it told it: only
        # one that gave up (timeout, cancelled) costs a call on the listener's loop.
        if not (waiter.future.done() and not waiter.future.cancelled()):
            registry.notifier.call_soon(registry.remove, waiter)


def ensure_not_in_transaction(action: str) -> None:
    """Refuse to wait for a job from inside an open transaction: it cannot succeed.

    Raises:
        RelayError: a transaction is open on the jobs' database connection.
    """
    if connections[settings.DATABASE_ALIAS].in_atomic_block:
        raise RelayError(
            f"{action} inside an open transaction (transaction.atomic or ATOMIC_REQUESTS) "
            "would always time out: no runner can see the job before the transaction "
            "commits. Commit first (e.g. transaction.on_commit) or wait outside it."
        )


async def _refuse_open_transaction(action: str) -> None:
    """Raise ``RelayError`` when the caller waits inside an open transaction.

    Async views cannot hold one (Django refuses ATOMIC_REQUESTS for them), so a
    transaction can only belong to this thread (a loop run from sync code) or to
    the sync thread that called us through ``async_to_sync``: ask it, only then.
    """
    ensure_not_in_transaction(action)
    if getattr(AsyncToSync.executors, "current", None) is not None:
        await sync_to_async(ensure_not_in_transaction)(action)


#: Other kinds of handle a wait accepts, with how to read their job id. The Django
#: Tasks backend (django_relay.tasks) adds TaskResult when it is imported, which
#: it is before any of its results exists.
_JOB_ID_OF: dict[type, Callable[[Any], int]] = {}


def accept_handle(kind: type, job_id: Callable[[Any], int]) -> None:
    """Let the waits take a ``kind`` of handle, whose job id ``job_id(handle)`` gives."""
    _JOB_ID_OF[kind] = job_id


def _job_id(job_or_id: Waitable) -> int:
    for kind, job_id in _JOB_ID_OF.items():
        if isinstance(job_or_id, kind):
            return job_id(job_or_id)
    if isinstance(job_or_id, Job):
        if job_or_id.pk is None:
            raise RelayError("this job was never enqueued: it has no id")
        return int(job_or_id.pk)
    if isinstance(job_or_id, bool) or not isinstance(job_or_id, int):
        raise TypeError(f"expected a Job or a job id, not {job_or_id!r}")
    return job_or_id


def _defaults(timeout: float | None, poll_interval: float | None) -> tuple[float, float]:
    timeout = settings.DEFAULT_TIMEOUT if timeout is None else timeout
    poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
    if timeout < 0 or poll_interval <= 0:
        raise ValueError("timeout must be >= 0 and poll_interval > 0")
    return timeout, poll_interval


async def await_result(
    job_or_id: Waitable,
    timeout: float | None = None,
    poll_interval: float | None = None,
    with_retries: bool = False,
) -> Any:
    """Wait for an enqueued job and return its result.

    Args:
        job_or_id: The job, its id, or the ``TaskResult`` of a Django task run by
            ``django_relay.tasks.RelayBackend``.
        timeout: Seconds to wait (default ``RELAY["DEFAULT_TIMEOUT"]``, 30).
        poll_interval: Backup poll period, for a lost notification (default 0.5).
        with_retries: Wait through retries for the final outcome.

    Raises:
        RelayTimeout: not finished in time (the job keeps running).
        RelayDiscard: discarded, or retryable while ``with_retries`` is false.
        RelayCancelled: cancelled.
        ResultTooLarge: completed with a result over ``MAX_RESULT_BYTES``.
        RelayError: called inside an open transaction, or no such job.
    """
    job_id = _job_id(job_or_id)
    timeout, poll_interval = _defaults(timeout, poll_interval)
    await _refuse_open_transaction("await_result()")
    [outcome] = await _wait(
        [job_id], timeout=timeout, poll_interval=poll_interval, with_retries=with_retries
    )
    if outcome is None:
        raise RelayTimeout(job_id, timeout)
    return outcome.unwrap()


async def await_many(
    jobs_or_ids: Iterable[Waitable],
    timeout: float | None = 5.0,
    poll_interval: float | None = None,
    with_retries: bool = False,
) -> list[Any]:
    """Wait for many jobs at once; one entry per job, in the order given.

    Each entry is the job's result or the exception instance for it
    (``RelayTimeout`` for one unfinished at the timeout). Never raises for one
    job's failure: partial results come back when the timeout is reached.
    """
    job_ids = [_job_id(j) for j in jobs_or_ids]
    timeout, poll_interval = _defaults(timeout, poll_interval)
    await _refuse_open_transaction("await_many()")
    outcomes = await _wait(
        job_ids, timeout=timeout, poll_interval=poll_interval, with_retries=with_retries
    )
    return [
        _value_or_exception(job_id, outcome, timeout)
        for job_id, outcome in zip(job_ids, outcomes, strict=True)
    ]


def _value_or_exception(job_id: int, outcome: Outcome | None, timeout: float) -> Any:
    if outcome is None:
        return RelayTimeout(job_id, timeout)
    try:
        return outcome.unwrap()
    except RelayError as exc:
        return exc


async def relay_job(
    job: Job,
    *,
    timeout: float | None = None,
    poll_interval: float | None = None,
    with_retries: bool = False,
    cancel_on_timeout: bool = False,
    on_enqueued: Callable[[Job], Awaitable[object]] | None = None,
) -> Any:
    """Enqueue ``job`` and wait for its result (``Worker.relay`` calls this).

    The job is inserted on the listener's own connection, batched with the other
    relays of the moment (a relay is never part of the caller's transaction: that
    could not succeed, and is refused), and its waiter is registered before the
    job can be seen as finished.

    The job's id is reserved before its insert, so the listener sends the insert
    again after a connection failure without ever inserting it twice. If
    the insert cannot be confirmed within ``timeout``, ``RelayTimeout`` is raised
    with ``job_id`` None, and the job is not run (cancelled if it landed, unless a
    runner already started it).

    With ``cancel_on_timeout``, a job that has not started when the caller gives
    up (timeout, or the awaiting task is cancelled) is cancelled. ``on_enqueued``
    is awaited once the job is inserted (Django's ``task_enqueued`` for tasks).
    """
    # One span for the round trip: the job's send and process spans are its children.
    with tracing.waiting(f"relay {job.queue}", job):
        return await _relay_job(
            job,
            timeout=timeout,
            poll_interval=poll_interval,
            with_retries=with_retries,
            cancel_on_timeout=cancel_on_timeout,
            on_enqueued=on_enqueued,
        )


async def _relay_job(
    job: Job,
    *,
    timeout: float | None,
    poll_interval: float | None,
    with_retries: bool,
    cancel_on_timeout: bool,
    on_enqueued: Callable[[Job], Awaitable[object]] | None,
) -> Any:
    timeout, poll_interval = _defaults(timeout, poll_interval)
    called = asyncio.get_running_loop().time()
    deadline = called + timeout
    await _refuse_open_transaction("relay()")
    with tracing.producing([job]):  # writes the job's trace context into its meta
        row = encode(job)
        registry = get_registry()
        await listening(registry, timeout)
        waiter = Waiter(0, with_retries=with_retries, poll_interval=poll_interval)
        inserted: asyncio.Future[tuple[Any, ...]] = waiter.loop.create_future()
        registry.notifier.call_soon(registry.inserter.enqueue, row, waiter, inserted)
        try:
            async with asyncio.timeout_at(deadline):  # wait_for() without its own coroutine
                saved = await inserted
        except BaseException as exc:
            # Gave up before learning the job's id: nobody could wait for it.
            waiter.active = False
            registry.notifier.call_soon(registry.abandon, waiter)
            if isinstance(exc, TimeoutError):
                raise RelayTimeout(None, timeout) from None
            raise
        mark_saved([job], [saved])
    try:
        try:
            # A duplicate of a unique job enqueued nothing: say nothing.
            if signals.job_enqueued.receivers and not job.conflict:
                await signals.job_enqueued.asend(sender=lookup(job.worker), job=job)
            if on_enqueued is not None and not job.conflict:
                await on_enqueued(job)
        except BaseException:
            _forget(registry, [waiter])  # cancelled, or a receiver raised
            raise
        remaining = max(deadline - waiter.loop.time(), 0.0)
        [outcome] = await _outcomes(registry, [waiter], remaining)
        if signals.job_relayed.receivers:
            await signals.job_relayed.asend(
                sender=lookup(job.worker), job=job, duration=waiter.loop.time() - called
            )
    except asyncio.CancelledError:
        if cancel_on_timeout and job.pk is not None:
            _give_up(job.pk, "the relay was cancelled")
        raise
    if outcome is None:
        if cancel_on_timeout:
            _give_up(job.pk, f"nobody waited for it after {timeout:g}s")
        raise RelayTimeout(job.pk, timeout)
    return outcome.unwrap()


def _give_up(job_id: int, reason: str) -> None:
    registry = get_registry()
    registry.notifier.submit(registry.cancel_unstarted(job_id, reason))


async def relay_new(
    klass: type,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    poll_interval: float | None = None,
    with_retries: bool = False,
    cancel_on_timeout: bool = False,
    **opts: Any,
) -> Any:
    """``Worker.relay``: build a job for ``klass`` and relay it (see :func:`relay_job`)."""
    return await relay_job(
        new(klass, args, **opts),
        timeout=timeout,
        poll_interval=poll_interval,
        with_retries=with_retries,
        cancel_on_timeout=cancel_on_timeout,
    )


def relay_new_sync(klass: type, args: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """See relay_new()."""
    return async_to_sync(relay_new)(klass, args, **kwargs)


def await_result_sync(job_or_id: Waitable, **kwargs: Any) -> Any:
    """See await_result()."""
    return async_to_sync(await_result)(job_or_id, **kwargs)


def await_many_sync(jobs_or_ids: Iterable[Waitable], **kwargs: Any) -> list[Any]:
    """See await_many()."""
    return async_to_sync(await_many)(jobs_or_ids, **kwargs)

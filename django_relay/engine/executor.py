"""Runs user code: one job's ``process``, mapped to the ack that finishes it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.dispatch import Signal

from django_relay import codec, signals, tracing
from django_relay.conf import settings
from django_relay.context import attempt_deadline, current_job
from django_relay.engine.threads import JOB_THREAD_PREFIX, JobThreads
from django_relay.exceptions import EncodeError, WorkerError
from django_relay.jobs import cascade_cancelled
from django_relay.logs import OUTCOME_EVENTS, OUTCOME_LEVELS, job_fields, jobs_logger
from django_relay.models import Job, JobState
from django_relay.queries import Ack
from django_relay.registry import Cancel, Snooze, default_backoff, lookup, options_of, resolve
from django_relay.signalling import WaitForSignal

logger = logging.getLogger("django_relay")

_OUTCOME_SIGNALS = {
    JobState.COMPLETED: signals.job_completed,
    JobState.RETRYABLE: signals.job_failed,
    JobState.DISCARDED: signals.job_discarded,
    JobState.CANCELLED: signals.job_cancelled,
    JobState.SCHEDULED: signals.job_snoozed,
}


class Finished(NamedTuple):
    """An attempt's end: the ack to persist, and what to persist if PostgreSQL refuses it."""

    klass: type | None
    ack: Ack
    #: ``refused(reason)``: the ack that records the attempt as failed, saying why.
    refused: Callable[[str], Ack]


class Unstorable(Exception):
    """PostgreSQL refused to store what an attempt produced."""


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL and lone surrogates backslash-escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_entry(
    attempt: int, kind: str, error: str, tb: str | None = None, **extra: str | None
) -> str:
    """The encoded entry appended to ``Job.errors`` for an attempt: always storable."""
    entry: dict[str, object] = {"attempt": attempt, "kind": kind, "error": storable(error)}
    if tb:
        entry["traceback"] = storable(tb)
    entry.update((key, None if value is None else storable(value)) for key, value in extra.items())
    return codec.dumps(entry)


def _error(job: Job, kind: str, error: str, tb: str | None = None) -> str:
    return error_entry(job.attempt, kind, error, tb)


def _raised(job: Job, exc: BaseException) -> str:
    # Which class was raised, and by which attempt (runner node, start time): Django's
    # TaskResult reports each failed attempt's exception class and worker.
    return error_entry(
        job.attempt,
        "error",
        describe(exc),
        _traceback(exc),
        exception=f"{type(exc).__module__}.{type(exc).__qualname__}",
        node=job.attempted_by,
        started=job.attempted_at.isoformat() if job.attempted_at else None,
    )


def describe(exc: BaseException) -> str:
    """``"ValueError: bad input"``: the error line recorded for an attempt."""
    try:
        text = str(exc)
    except Exception as failure:  # the exception's own __str__ is broken
        text = f"<str() raised {type(failure).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return ""


def decide(
    job: Job, outcome: object, *, backoff: float | Callable[[], float], max_result_bytes: int
) -> Ack:
    """Map what ``process`` produced (a value or an exception) to the ack to persist.

    ``backoff`` is the retry delay, or a function giving it: it is asked for only
    when the attempt is retried (a raise, or a result the codec refuses).
    """
    # The sequence starts at 1: a job that was never claimed (no token) fences itself off.
    ack = functools.partial(Ack, job.id, job.attempt, token=job.claim_token or 0)
    match outcome:
        case WaitForSignal(seconds=seconds, wait=wait, seen=seen):
            # Waiting is not failing: the attempt is given back, like a snooze.
            meta = codec.dumps({"signal_wait": wait})
            return ack(
                JobState.SCHEDULED, delay=seconds, attempt_delta=-1, meta=meta, signals_seen=seen
            )
        case Snooze(seconds=seconds):
            return ack(JobState.SCHEDULED, delay=seconds, attempt_delta=-1)
        case Cancel(reason=reason):
            return ack(JobState.CANCELLED, error=_error(job, "cancel", reason) if reason else None)
        case BaseException() as exc:
            error = _raised(job, exc)
            if job.attempt >= job.max_attempts:
                return ack(JobState.DISCARDED, error=error)
            return ack(
                JobState.RETRYABLE, error=error, delay=backoff() if callable(backoff) else backoff
            )
    try:
        result = (
            None if outcome is None else codec.dumps(outcome, limit=max_result_bytes, what="result")
        )
    except codec.TooLarge as exc:
        # Completed all the same: retrying would produce the same oversized value.
        too_large = {"result_too_large": {"size": exc.size, "limit": exc.limit}}
        return ack(JobState.COMPLETED, meta=codec.dumps(too_large))
    except (ValueError, RecursionError) as exc:
        # EncodeError, and what json refuses beyond the codec's checks (an int too
        # long to print, nesting past the recursion limit, a lone surrogate): the
        # attempt fails, as a raise would.
        if not isinstance(exc, EncodeError):
            exc = EncodeError(f"result cannot be stored: {describe(exc)}")
        return decide(job, exc, backoff=backoff, max_result_bytes=max_result_bytes)
    return ack(JobState.COMPLETED, result=result)


_close_old_connections = sync_to_async(close_old_connections)

_orm_lock = threading.Lock()
# Django connections opened outside the job threads: in a runner, asgiref's
# thread-sensitive thread, where async jobs and await_signal reach the ORM.
_orm_connections: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()
# In each job thread, ``opened``: the Django connections opened in that thread.
_job_thread = threading.local()


def _track_connection(sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    thread = threading.current_thread()
    if thread.name.startswith(JOB_THREAD_PREFIX):
        opened = getattr(_job_thread, "opened", None)
        if opened is None:
            opened = _job_thread.opened = weakref.WeakSet()
        opened.add(connection)
    # The main thread runs the event loop (its connection, if any, is from start-up).
    elif thread is not threading.main_thread():
        with _orm_lock:
            _orm_connections.add(connection)


connection_created.connect(_track_connection, dispatch_uid="django_relay.executor")


def _orm_connected() -> bool:
    if not _orm_connections:  # the common case: no async job used the ORM
        return False
    with _orm_lock:
        return any(wrapper.connection is not None for wrapper in _orm_connections)


def _thread_connected() -> bool:
    # Only this thread adds to its set: no lock.
    opened = getattr(_job_thread, "opened", None)
    return opened is not None and any(wrapper.connection is not None for wrapper in opened)


def _run_sync(process: Any, job: Job) -> Any:
    # A thread of the pool is a long-lived "request" for Django's connection
    # handling: close_old_connections() around each job, as around a request. It
    # only ever closes an open connection of this thread, so it is skipped when
    # none is open: then it has nothing to do, and it costs more than a no-op job.
    if _thread_connected():
        close_old_connections()
    try:
        return process(job)
    finally:
        if _thread_connected():
            close_old_connections()


async def _call(process: Any, job: Job, threads: JobThreads | None) -> Any:
    if inspect.iscoroutinefunction(process):
        if threads is None:
            return await process(job)
        # An async job reaches the ORM through asgiref's thread-sensitive thread,
        # whose connection outlives the job as a request's would: like Django around
        # each request, close it there if it broke or aged out (a database restart
        # would otherwise fail every later job of this runner). Only when such a
        # connection is open: a thread hop per job costs more than most jobs.
        if _orm_connected():
            await _close_old_connections()
        try:
            return await process(job)
        finally:
            if _orm_connected():
                await _close_old_connections()
    if threads is None:
        # In-process draining (django_relay.testing): run on the caller's thread and
        # connection, inside its transaction.
        return await sync_to_async(process)(job)
    context = contextvars.copy_context()  # so current_job is set inside the thread
    return await threads.run(context.run, _run_sync, process, job)


async def _run(process: Any, job: Job, threads: JobThreads | None, timeout: float | None) -> Any:
    if not timeout:
        return await _call(process, job, threads)
    try:
        async with asyncio.timeout(timeout) as deadline:
            return await _call(process, job, threads)
    except TimeoutError:
        if deadline.expired():  # ours; not a TimeoutError that process raised
            raise TimeoutError(f"timed out after {timeout:g}s") from None
        raise


async def execute(job: Job, threads: JobThreads | None) -> Finished:
    """Run ``job``'s worker and return the ack that finishes the attempt.

    With tracing on, the attempt is a consumer span in the enqueuer's trace.
    """
    if not tracing.enabled():
        return await _execute(job, threads)
    with tracing.processing(job) as span:
        finished = await _execute(job, threads)
        tracing.finish(span, finished.ack.state, finished.ack.error)
    return finished


async def _execute(job: Job, threads: JobThreads | None) -> Finished:
    """See execute(). Never raises for anything the worker does: a constructor, a ``process``, a
    ``str()`` of an exception or a result that fails each end in an ack.
    """
    instance: Any = None

    def refused(ack: Ack) -> Callable[[str], Ack]:
        what = "result" if ack.result is not None else f"{ack.state} outcome"

        def instead(reason: str) -> Ack:
            return decide(
                job,
                Unstorable(f"PostgreSQL refused to store this attempt's {what}: {reason}"),
                backoff=lambda: _backoff(instance, job),
                max_result_bytes=settings.MAX_RESULT_BYTES,
            )

        return instead

    try:
        klass = resolve(job.worker)
    except WorkerError as exc:
        # Never run: an unknown path may not name code we trust.
        ack = Ack(
            job.id,
            job.attempt,
            JobState.DISCARDED,
            error=_error(job, "worker", str(exc)),
            token=job.claim_token or 0,
        )
        return Finished(None, ack, refused(ack))
    timeout = options_of(klass).timeout
    token = current_job.set(job)
    deadline = attempt_deadline.set(time.monotonic() + timeout if timeout else None)
    try:
        instance = klass()
        if signals.job_started.receivers:
            await send(signals.job_started, klass, job)
        outcome = await _run(instance.process, job, threads, timeout)
    except WaitForSignal as wait:
        outcome = wait
    except (Exception, SystemExit) as exc:  # a job's sys.exit() must not stop the runner
        outcome = exc
    finally:
        attempt_deadline.reset(deadline)
        current_job.reset(token)
    ack = decide(
        job,
        outcome,
        backoff=lambda: _backoff(instance, job),
        max_result_bytes=settings.MAX_RESULT_BYTES,
    )
    return Finished(klass, ack, refused(ack))


def _backoff(instance: Any, job: Job) -> float:
    """The worker's ``backoff(job)``, or the default when it fails or is not sensible."""
    if instance is None:  # its constructor failed: no backoff() to ask
        return default_backoff(job.attempt)
    try:
        seconds = float(instance.backoff(job))
    except Exception:
        logger.exception("job %s: %s.backoff() failed; using the default", job.id, job.worker)
        return default_backoff(job.attempt)
    if not math.isfinite(seconds) or seconds < 0:
        logger.error(
            "job %s: %s.backoff() returned %r; using the default", job.id, job.worker, seconds
        )
        return default_backoff(job.attempt)
    return seconds


def report(
    klass: type | None, job: Job, ack: Ack, started: float, acked: bool
) -> Coroutine[Any, Any, None] | None:
    """Log the outcome, once its ack is persisted; return its dispatch signal to send."""
    duration = time.perf_counter() - started
    if not acked:
        logger.warning(
            "job %s: attempt %s is no longer this runner's (rescued, given back or "
            "cancelled meanwhile); its outcome (%s) was dropped",
            job.id,
            ack.attempt,
            ack.state,
            extra=job_fields(job, "dropped", state=ack.state, duration=duration),
        )
        return None
    job.state = ack.state
    level = OUTCOME_LEVELS.get(ack.state, logging.INFO)
    if jobs_logger.isEnabledFor(level):
        error = codec.loads(ack.error).get("error") if ack.error else None
        jobs_logger.log(
            level,
            "job %s %s %s in %.1fms (attempt %s/%s)%s",
            job.id,
            job.worker,
            ack.state,
            duration * 1000,
            ack.attempt,
            job.max_attempts,
            f": {error}" if error else "",
            extra=job_fields(
                job, OUTCOME_EVENTS.get(ack.state, ack.state), duration=duration, error=error
            ),
        )
    signal = _OUTCOME_SIGNALS.get(ack.state)  # type: ignore[call-overload]
    if _may_cascade(job, ack) and signals.job_cancelled.receivers:
        return _send_with_cascade(signal, klass, job, duration)
    if signal is None or not signal.receivers:
        return None
    return send(signal, klass, job, duration=duration)


async def send(signal: Signal, sender: type | None, job: Job, **kwargs: Any) -> None:
    """Send a lifecycle signal; a receiver that raises is logged, never propagated.

    Async receivers run on the caller's loop, sync ones in a thread.
    """
    for receiver, response in await signal.asend_robust(sender=sender, job=job, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "job %s: signal receiver %s failed", job.id, _name(receiver), exc_info=response
            )


def _name(receiver: object) -> str:
    return getattr(receiver, "__qualname__", None) or repr(receiver)


_background: set[asyncio.Future[Any]] = set()


def soon(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in the background (signal sending), keeping it referenced till done."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _load(job_ids: list[int]) -> list[Job]:
    close_old_connections()  # the runner's ORM thread may hold a connection that died
    try:
        return list(Job.objects.using(settings.DATABASE_ALIAS).filter(pk__in=job_ids))
    finally:
        close_old_connections()


async def announce(signal: Signal, job_ids: list[int]) -> None:
    """Send ``signal`` for jobs the runner ended outside an attempt (rescued, unreadable).

    Never raises: a failure to load the jobs or of a receiver is logged.
    """
    if not signal.receivers or not job_ids:
        return
    try:
        jobs = await sync_to_async(_load)(job_ids)
    except Exception:
        logger.exception("could not load jobs %s to send their signals", job_ids)
        return
    for job in jobs:
        await send(signal, lookup(job.worker), job)


def _may_cascade(job: Job, ack: Ack) -> bool:
    return job.workflow_id is not None and ack.state in (JobState.DISCARDED, JobState.CANCELLED)


async def _send_with_cascade(signal: Any, klass: type | None, job: Job, duration: float) -> None:
    # The ack's trigger cancelled the step's dependents: job_cancelled for them too.
    if signal is not None and signal.receivers:
        await send(signal, klass, job, duration=duration)
    for dependent in await sync_to_async(cascade_cancelled)([job.id]):
        await send(signals.job_cancelled, lookup(dependent.worker), dependent)

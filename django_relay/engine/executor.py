"""Runs user code: one job's ``process``, mapped to the ack that finishes it."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from django_relay import codec, signals, tracing
from django_relay.conf import settings
from django_relay.context import current_job
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


def _error(job: Job, kind: str, error: str, tb: str | None = None) -> str:
    entry = {"attempt": job.attempt, "kind": kind, "error": error}
    if tb:
        entry["traceback"] = tb
    return codec.dumps(entry)


def describe(exc: BaseException) -> str:
    """``"ValueError: bad input"``: the error line recorded for an attempt."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide(
    job: Job, outcome: object, *, backoff: float | Callable[[], float], max_result_bytes: int
) -> Ack:
    """Map what ``process`` produced (a value or an exception) to the ack to persist.

    ``backoff`` is the retry delay, or a function giving it: it is asked for only
    when the attempt is retried (a raise, or a result the codec refuses).
    """
    match outcome:
        case WaitForSignal(seconds=seconds, wait=wait, seen=seen):
            # Waiting is not failing: the attempt is given back, like a snooze.
            return Ack(
                job.id,
                job.attempt,
                JobState.SCHEDULED,
                delay=seconds,
                attempt_delta=-1,
                meta=codec.dumps({"signal_wait": wait}),
                signals_seen=seen,
            )
        case Snooze(seconds=seconds):
            return Ack(job.id, job.attempt, JobState.SCHEDULED, delay=seconds, attempt_delta=-1)
        case Cancel(reason=reason):
            return Ack(
                job.id,
                job.attempt,
                JobState.CANCELLED,
                error=_error(job, "cancel", reason) if reason else None,
            )
        case BaseException() as exc:
            tb = "".join(traceback.format_exception(exc))
            if job.attempt >= job.max_attempts:
                return Ack(
                    job.id,
                    job.attempt,
                    JobState.DISCARDED,
                    error=_error(job, "error", describe(exc), tb),
                )
            return Ack(
                job.id,
                job.attempt,
                JobState.RETRYABLE,
                error=_error(job, "error", describe(exc), tb),
                delay=backoff() if callable(backoff) else backoff,
            )
    try:
        result = (
            None if outcome is None else codec.dumps(outcome, limit=max_result_bytes, what="result")
        )
    except codec.TooLarge as exc:
        # Completed all the same: retrying would produce the same oversized value.
        too_large = {"result_too_large": {"size": exc.size, "limit": exc.limit}}
        return Ack(job.id, job.attempt, JobState.COMPLETED, meta=codec.dumps(too_large))
    except EncodeError as exc:
        return decide(job, exc, backoff=backoff, max_result_bytes=max_result_bytes)
    return Ack(job.id, job.attempt, JobState.COMPLETED, result=result)


def _run_sync(process: Any, job: Job) -> Any:
    # A thread of the pool is a long-lived "request" for Django's connection handling.
    close_old_connections()
    try:
        return process(job)
    finally:
        close_old_connections()


async def _call(process: Any, job: Job, threads: Executor | None) -> Any:
    if inspect.iscoroutinefunction(process):
        return await process(job)
    if threads is None:
        # In-process draining (django_relay.testing): run on the caller's thread and
        # connection, inside its transaction.
        return await sync_to_async(process)(job)
    context = contextvars.copy_context()  # so current_job is set inside the thread
    return await asyncio.get_running_loop().run_in_executor(
        threads, context.run, _run_sync, process, job
    )


async def execute(job: Job, threads: Executor | None) -> tuple[type | None, Ack]:
    """Run ``job``'s worker and return the ack that finishes the attempt."""
    if not tracing.enabled():
        return await _execute(job, threads)
    with tracing.processing(job) as span:
        klass, ack = await _execute(job, threads)
        tracing.finish(span, ack.state, ack.error)
    return klass, ack


async def _execute(job: Job, threads: Executor | None) -> tuple[type | None, Ack]:
    try:
        klass = resolve(job.worker)
    except WorkerError as exc:
        # Never run: an unknown path may not name code we trust.
        return None, Ack(
            job.id, job.attempt, JobState.DISCARDED, error=_error(job, "worker", str(exc))
        )
    timeout = options_of(klass).timeout
    instance = klass()
    token = current_job.set(job)
    try:
        if signals.job_started.receivers:
            await signals.job_started.asend(sender=klass, job=job)
        coro = _call(instance.process, job, threads)
        outcome = await (asyncio.wait_for(coro, timeout) if timeout else coro)
    except WaitForSignal as wait:
        outcome = wait
    except TimeoutError as exc:
        outcome = TimeoutError(f"timed out after {timeout:g}s") if timeout else exc
    except Exception as exc:
        outcome = exc
    finally:
        current_job.reset(token)
    return klass, decide(
        job,
        outcome,
        backoff=lambda: _backoff(instance, job),
        max_result_bytes=settings.MAX_RESULT_BYTES,
    )


def _backoff(instance: Any, job: Job) -> float:
    """The worker's ``backoff(job)``, or the default when it fails or is not sensible."""
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
) -> Coroutine[Any, Any, object] | None:
    """Log the outcome, once its ack is persisted; return its dispatch signal to send."""
    duration = time.perf_counter() - started
    if not acked:
        logger.warning(
            "job %s: attempt %s was rescued or released meanwhile; its outcome (%s) was dropped",
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
    # Async receivers run on the caller's loop, sync ones in a thread.
    return signal.asend(sender=klass, job=job, duration=duration)


def _may_cascade(job: Job, ack: Ack) -> bool:
    return job.workflow_id is not None and ack.state in (JobState.DISCARDED, JobState.CANCELLED)


async def _send_with_cascade(signal: Any, klass: type | None, job: Job, duration: float) -> None:
    # The ack's trigger cancelled the step's dependents: job_cancelled for them too.
    if signal.receivers:
        await signal.asend(sender=klass, job=job, duration=duration)
    for dependent in await sync_to_async(cascade_cancelled)([job.id]):
        await signals.job_cancelled.asend(sender=lookup(dependent.worker), job=dependent)

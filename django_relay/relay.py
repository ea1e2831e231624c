"""Awaiting job results from any process: ``await_result`` and ``await_many``.

A waiter is registered with the process's listener before its job is read
(subscribe, then check), so a job that finished a moment earlier is still seen.
Each NOTIFY from the ``relay_finished`` trigger names a job; the listener reads
the outcomes of every notified job in one query and wakes their waiters on the
waiters' own loops. A backup poll re-reads a waiter's job every
``poll_interval``, so a lost notification costs at most that.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import AsyncToSync, async_to_sync, sync_to_async

from django_relay import codec, queries, signals
from django_relay.conf import settings
from django_relay.exceptions import (
    RelayCancelled,
    RelayDiscard,
    RelayError,
    RelayTimeout,
    ResultTooLarge,
)
from django_relay.models import TERMINAL_STATES, Job
from django_relay.notifier import Notifier, get_notifier
from django_relay.pg import Link
from django_relay.workers import encode, ensure_not_in_transaction, mark_saved, resolve

logger = logging.getLogger("django_relay")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a waiter learns of its job: one row of ``queries.fetch_outcomes``."""

    job_id: int
    state: str | None  # None: there is no such job
    result: str | None = None
    error: str | None = None
    too_large: dict[str, int] | None = None

    def is_final(self, with_retries: bool) -> bool:
        if self.state is None or self.state in TERMINAL_STATES:
            return True
        return self.state == "retryable" and not with_retries

    def exception(self) -> RelayError | None:
        """The error this outcome stands for, or None when it carries a value."""
        match self.state:
            case None:
                return RelayError(f"there is no job {self.job_id} (never enqueued, or pruned)")
            case "completed" if self.too_large:
                return ResultTooLarge(
                    self.job_id, self.too_large.get("size"), self.too_large.get("limit")
                )
            case "completed":
                return None
            case "cancelled":
                return RelayCancelled(self.job_id, self.error)
            case state:
                return RelayDiscard(self.job_id, self.error, state=state)

    def unwrap(self) -> Any:
        """The job's result, or raise the exception for how it ended."""
        exc = self.exception()
        if exc is not None:
            raise exc
        return codec.loads(self.result)


class _Waiter:
    __slots__ = ("active", "future", "job_id", "loop", "next_poll", "poll_interval", "with_retries")

    def __init__(self, job_id: int, *, with_retries: bool, poll_interval: float) -> None:
        self.job_id = job_id
        self.with_retries = with_retries
        self.poll_interval = poll_interval
        self.next_poll = time.monotonic() + poll_interval
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Outcome] = self.loop.create_future()
        self.active = True

    def offer(self, outcome: Outcome) -> None:
        """Called on the listener's thread with a fresh read of the job."""
        if self.active and outcome.is_final(self.with_retries):
            self.active = False
            self.loop.call_soon_threadsafe(_resolve, self.future, outcome)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # it may have timed out meanwhile: drop the late news
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Registry:
    """The waiters of this process, by job id. Lives on the listener's loop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.waiters: dict[int, set[_Waiter]] = {}
        self.link = Link("relay")
        self.insert_link = Link("relay-insert")
        self._inserts: list[tuple[queries.NewJob, _Waiter, asyncio.Future[Any]]] = []
        self._inserting = False
        self._wanted: set[int] = set()
        self._reading = False
        self._polls: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._ticking = False
        self.primed = False

    def add(self, waiter: _Waiter) -> None:
        if not waiter.active:
            return  # its caller gave up before it was registered
        self.waiters.setdefault(waiter.job_id, set()).add(waiter)
        heapq.heappush(self._polls, (waiter.next_poll, next(self._seq), waiter))
        self._want([waiter.job_id])  # subscribe, then check
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().create_task(self._tick())

    def enqueue(
        self, row: queries.NewJob, waiter: _Waiter, inserted: asyncio.Future[tuple[Any, ...]]
    ) -> None:
        """Insert ``row`` (with the others queued meanwhile), then wait on it."""
        self._inserts.append((row, waiter, inserted))
        if not self._inserting:
            self._inserting = True
            asyncio.get_running_loop().create_task(self._insert())

    async def _insert(self) -> None:
        try:
            while self._inserts:
                batch, self._inserts = self._inserts, []
                rows = [row for row, _, _ in batch]
                try:
                    # Not retried: after a lost reply the job may exist; the callers
                    # see the error, as they would from enqueue().
                    returned = await self.insert_link.run(
                        partial(queries.ainsert_jobs, jobs=rows), retry=False
                    )
                except Exception as exc:
                    for _, waiter, inserted in batch:
                        waiter.loop.call_soon_threadsafe(_fail, inserted, exc)
                    continue
                for (_, waiter, inserted), saved in zip(batch, returned, strict=True):
                    waiter.job_id = saved[0]
                    self.add(waiter)  # subscribe, then check
                    waiter.loop.call_soon_threadsafe(_resolve, inserted, saved)
        finally:
            self._inserting = False

    def remove(self, waiter: _Waiter) -> None:
        waiter.active = False
        waiters = self.waiters.get(waiter.job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.waiters[waiter.job_id]

    def on_finished(self, payload: str) -> None:
        try:
            job_id = int(json.loads(payload)["id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed relay_finished payload: %r", payload[:200])
            return
        if job_id in self.waiters:
            self._want([job_id])

    def on_reconnect(self) -> None:
        # Notifications sent while we were away are gone: read every waited job.
        self._want(list(self.waiters))

    def _want(self, job_ids: Iterable[int]) -> None:
        self._wanted.update(job_ids)
        if self._wanted and not self._reading:
            self._reading = True
            asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        # Ids wanted while a read is in flight wait for the next one: one query each.
        try:
            while self._wanted:
                job_ids, self._wanted = list(self._wanted), set()
                rows = await self.link.run(partial(queries.fetch_outcomes, job_ids=job_ids))
                found = {row[0]: Outcome(*row) for row in rows}
                for job_id in job_ids:
                    outcome = found.get(job_id) or Outcome(job_id, None)
                    for waiter in list(self.waiters.get(job_id, ())):
                        waiter.offer(outcome)
        except Exception:
            logger.exception("reading job outcomes failed; the backup poll retries")
        finally:
            self._reading = False

    async def _tick(self) -> None:
        """The backup poll: one query per tick for every waiter whose poll is due."""
        try:
            while self.waiters:
                now = time.monotonic()
                due: list[int] = []
                while self._polls and self._polls[0][0] <= now:
                    _, _, waiter = heapq.heappop(self._polls)
                    if waiter.active:
                        due.append(waiter.job_id)
                        waiter.next_poll = now + waiter.poll_interval
                        heapq.heappush(self._polls, (waiter.next_poll, next(self._seq), waiter))
                if due:
                    self._want(due)
                pause = self._polls[0][0] - now if self._polls else 0.05
                await asyncio.sleep(min(max(pause, 0.005), 0.05))
        finally:
            self._ticking = False
            self._polls = [p for p in self._polls if p[2].active]

    async def cancel_unstarted(self, job_id: int, reason: str) -> None:
        try:
            await self.link.run(lambda conn: queries.cancel_unstarted(conn, [job_id], reason))
        except Exception:
            logger.exception("could not cancel job %s after its waiter gave up", job_id)


_current: tuple[Notifier, _Registry] | None = None
_current_lock = threading.Lock()


def _registry() -> _Registry:
    """This process's registry, hooked to this process's notifier."""
    global _current
    notifier = get_notifier()
    with _current_lock:
        if _current is None or _current[0] is not notifier:
            registry = _Registry(notifier)
            notifier.listen(queries.FINISHED_CHANNEL, registry.on_finished)
            notifier.on_reconnect(registry.on_reconnect)
            notifier.on_close(registry.link.close)
            notifier.on_close(registry.insert_link.close)
            _current = (notifier, registry)
        return _current[1]


async def _listening(registry: _Registry, timeout: float) -> None:
    # The first wait of a process lets LISTEN become live, so the first relay is
    # not left to the backup poll. Later outages are covered by that poll and by
    # the re-read on reconnect, so nobody waits for them here.
    if registry.primed:
        return
    live = registry.notifier.live(queries.FINISHED_CHANNEL)
    if not live.is_set():
        await asyncio.get_running_loop().run_in_executor(None, live.wait, min(timeout, 5.0))
    registry.primed = True


async def _wait(
    job_ids: list[int], *, timeout: float, poll_interval: float, with_retries: bool
) -> list[Outcome | None]:
    """Outcomes in the order given; None for a job not finished within ``timeout``."""
    registry = _registry()
    await _listening(registry, timeout)
    waiters = [
        _Waiter(job_id, with_retries=with_retries, poll_interval=poll_interval)
        for job_id in job_ids
    ]
    for waiter in waiters:
        registry.notifier.call_soon(registry.add, waiter)
    return await _outcomes(registry, waiters, timeout)


async def _outcomes(
    registry: _Registry, waiters: list[_Waiter], timeout: float
) -> list[Outcome | None]:
    try:
        if waiters:
            await asyncio.wait([w.future for w in waiters], timeout=timeout)
        return [w.future.result() if w.future.done() else None for w in waiters]
    finally:
        for waiter in waiters:
            waiter.active = False
            registry.notifier.call_soon(registry.remove, waiter)


async def _refuse_open_transaction(action: str) -> None:
    """Raise ``RelayError`` when the caller waits inside an open transaction.

    Async views cannot hold one (Django refuses ATOMIC_REQUESTS for them), so a
    transaction can only belong to this thread (a loop run from sync code) or to
    the sync thread that called us through ``async_to_sync``: ask it, only then.
    """
    ensure_not_in_transaction(action)
    if getattr(AsyncToSync.executors, "current", None) is not None:
        await sync_to_async(ensure_not_in_transaction)(action)


def _job_id(job_or_id: Job | int) -> int:
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
    job_or_id: Job | int,
    timeout: float | None = None,
    poll_interval: float | None = None,
    with_retries: bool = False,
) -> Any:
    """Wait for an enqueued job and return its result.

    Args:
        job_or_id: The job, or its id.
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
    jobs_or_ids: Iterable[Job | int],
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
) -> Any:
    """Enqueue ``job`` and wait for its result (``Worker.relay`` calls this).

    The job is inserted on the listener's own connection, batched with the other
    relays of the moment (a relay is never part of the caller's transaction: that
    could not succeed, and is refused), and its waiter is registered before the
    job can be seen as finished.

    With ``cancel_on_timeout``, a job that has not started when the caller gives
    up (timeout, or the awaiting task is cancelled) is cancelled.
    """
    timeout, poll_interval = _defaults(timeout, poll_interval)
    deadline = asyncio.get_running_loop().time() + timeout
    await _refuse_open_transaction("relay()")
    row = encode(job)
    registry = _registry()
    await _listening(registry, timeout)
    waiter = _Waiter(0, with_retries=with_retries, poll_interval=poll_interval)
    inserted: asyncio.Future[tuple[Any, ...]] = waiter.loop.create_future()
    registry.notifier.call_soon(registry.enqueue, row, waiter, inserted)
    try:
        mark_saved([job], [await inserted])
        if signals.job_enqueued.receivers:
            await signals.job_enqueued.asend(sender=resolve(job.worker), job=job)
        remaining = max(deadline - waiter.loop.time(), 0.0)
        [outcome] = await _outcomes(registry, [waiter], remaining)
    except asyncio.CancelledError:
        waiter.active = False
        if cancel_on_timeout and job.pk is not None:
            _give_up(job.pk, "the relay was cancelled")
        raise
    if outcome is None:
        if cancel_on_timeout:
            _give_up(job.pk, f"nobody waited for it after {timeout:g}s")
        raise RelayTimeout(job.pk, timeout)
    return outcome.unwrap()


def _give_up(job_id: int, reason: str) -> None:
    registry = _registry()
    registry.notifier.submit(registry.cancel_unstarted(job_id, reason))


def await_result_sync(job_or_id: Job | int, **kwargs: Any) -> Any:
    """See await_result()."""
    return async_to_sync(await_result)(job_or_id, **kwargs)


def await_many_sync(jobs_or_ids: Iterable[Job | int], **kwargs: Any) -> list[Any]:
    """See await_many()."""
    return async_to_sync(await_many)(jobs_or_ids, **kwargs)

"""The waiters of this process, served by its listener (see :mod:`django_relay.results`).

A waiter is registered on the listener's loop before its job is read (subscribe,
then check). Each ``relay_finished`` NOTIFY names a job; the registry reads the
outcomes of every notified job in one query and wakes their waiters on the
waiters' own loops. A backup poll re-reads a waiter's job every ``poll_interval``
(all waiters due in a tick in one query), so a lost notification costs at most
that, and a reconnection re-reads every waited job. Jobs that relay() enqueues
are inserted here too, batched, on the listener's own connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from django_relay import codec, queries
from django_relay.exceptions import (
    RelayCancelled,
    RelayDiscard,
    RelayError,
    ResultTooLarge,
)
from django_relay.listener.notifier import Notifier, get_notifier
from django_relay.models import TERMINAL_STATES
from django_relay.pg import CONNECTION_ERRORS, Link

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


class Waiter:
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


def _refused(exc: Exception) -> bool:
    # The database answered that it refuses the statement (a constraint, bad data, a
    # trigger's error): nothing was inserted and the connection is fine. A connection
    # failure (OperationalError) is not a refusal: the batch is sent again as it is.
    return isinstance(exc, psycopg.DatabaseError) and not isinstance(exc, psycopg.OperationalError)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


#: Job ids a registry reserves at a time for relay()'s inserts.
_ID_BLOCK = 64


@dataclass(slots=True)
class _Insert:
    """A job relay() asked to insert, and where to tell it the row."""

    row: queries.NewJob
    waiter: Waiter
    inserted: asyncio.Future[tuple[Any, ...]]
    #: A try may have reached the database: the row may exist.
    sent: bool = False


class Registry:
    """The waiters of this process, by job id. Lives on the listener's loop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.waiters: dict[int, set[Waiter]] = {}
        self.link = Link("relay")
        self.insert_link = Link("relay-insert")
        self._inserts: list[_Insert] = []
        self._inserting = False
        self._ids: collections.deque[int] = collections.deque()
        self._wanted: set[int] = set()
        self._reading = False
        self._polls: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self._ticking = False
        self.primed = False

    def add(self, waiter: Waiter) -> None:
        if not waiter.active:
            return  # its caller gave up before it was registered
        self.waiters.setdefault(waiter.job_id, set()).add(waiter)
        heapq.heappush(self._polls, (waiter.next_poll, next(self._seq), waiter))
        self._want([waiter.job_id])  # subscribe, then check
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().create_task(self._tick())

    def enqueue(
        self, row: queries.NewJob, waiter: Waiter, inserted: asyncio.Future[tuple[Any, ...]]
    ) -> None:
        """Insert ``row`` (with the others queued meanwhile), then wait on it."""
        self._inserts.append(_Insert(row, waiter, inserted))
        if not self._inserting:
            self._inserting = True
            asyncio.get_running_loop().create_task(self._insert())

    async def _insert(self) -> None:
        try:
            while self._inserts:
                batch, self._inserts = self._inserts, []
                await self._insert_batch(batch)
        finally:
            self._inserting = False

    async def _insert_batch(self, batch: list[_Insert]) -> None:
        """Insert ``batch``, trying again after connection failures until its callers give up.

        Each row's id is reserved before its first try, so a try whose reply was
        lost (the connection died, or the deadline passed, with the statement sent)
        is safe to repeat: the row that landed is found, never inserted twice.
        """
        delay = 0.05
        while True:
            # A relay that gave up before any try reached the database is simply
            # not enqueued; one whose try may have landed is settled (and cancelled).
            batch = [entry for entry in batch if entry.waiter.active or entry.sent]
            if not batch:
                return

            async def insert(conn: psycopg.AsyncConnection, rows: list[_Insert]) -> list[Any]:
                await self._reserve_ids(conn, rows)
                for entry in rows:
                    entry.sent = True
                return await queries.ainsert_reserved_jobs(conn, [entry.row for entry in rows])

            try:
                returned = await self.insert_link.run(partial(insert, rows=batch), retry=False)
            except CONNECTION_ERRORS as exc:
                logger.warning(
                    "relay insert failed (%s); trying again in %.2fs", exc or "deadline", delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                if not _refused(exc):
                    for entry in batch:
                        entry.waiter.loop.call_soon_threadsafe(_fail, entry.inserted, exc)
                    return
                # Refused: nothing was inserted. Split the batch in halves and insert
                # each again, so only the rows it refuses fail, each with its own
                # error, for log2(len(batch)) extra statements per refused row.
                for entry in batch:
                    entry.sent = False
                if len(batch) == 1:
                    batch[0].waiter.loop.call_soon_threadsafe(_fail, batch[0].inserted, exc)
                    return
                half = len(batch) // 2
                await self._insert_batch(batch[:half])
                await self._insert_batch(batch[half:])
                return
            for entry, saved in zip(batch, returned, strict=True):
                entry.waiter.job_id = saved[0]
                if entry.waiter.active:
                    self.add(entry.waiter)  # subscribe, then check
                    entry.waiter.loop.call_soon_threadsafe(_resolve, entry.inserted, saved)
                else:
                    self._cancel_abandoned(saved[0])
            return

    async def _reserve_ids(self, conn: psycopg.AsyncConnection, rows: list[_Insert]) -> None:
        # The id is the insert's idempotency key: given once, kept across tries.
        # Reserved a block at a time, so a relay rarely pays a round trip for it.
        missing = [entry for entry in rows if entry.row.id is None]
        if len(missing) > len(self._ids):
            wanted = max(len(missing) - len(self._ids), _ID_BLOCK)
            self._ids.extend(await queries.reserve_job_ids(conn, wanted))
        for entry in missing:
            entry.row = dataclasses.replace(entry.row, id=self._ids.popleft())

    def abandon(self, waiter: Waiter) -> None:
        """Its relay gave up before it learnt its job's id: that job must not run for nobody.

        Called on the listener's loop, after the caller set ``waiter.active`` false:
        an insert still pending sees that; one that already landed is cancelled here.
        """
        self.remove(waiter)
        if waiter.job_id:
            self._cancel_abandoned(waiter.job_id)

    def _cancel_abandoned(self, job_id: int) -> None:
        reason = "its relay gave up before the insert was confirmed"
        asyncio.get_running_loop().create_task(self.cancel_unstarted(job_id, reason))

    def remove(self, waiter: Waiter) -> None:
        waiter.active = False
        waiters = self.waiters.get(waiter.job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.waiters[waiter.job_id]

    def on_finished(self, payload: str) -> None:
        event = queries.finished_payload(payload)
        if event is None:
            logger.warning("ignoring a malformed relay_finished payload: %r", payload[:200])
            return
        job_id = event[0]
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


_current: tuple[Notifier, Registry] | None = None
_current_lock = threading.Lock()


def get_registry() -> Registry:
    """This process's registry, hooked to this process's notifier."""
    global _current
    notifier = get_notifier()
    with _current_lock:
        if _current is None or _current[0] is not notifier:
            registry = Registry(notifier)
            notifier.listen(queries.FINISHED_CHANNEL, registry.on_finished)
            notifier.on_reconnect(registry.on_reconnect)
            notifier.on_close(registry.link.close)
            notifier.on_close(registry.insert_link.close)
            _current = (notifier, registry)
        return _current[1]


async def listening(registry: Registry, timeout: float) -> None:
    # The first wait of a process lets LISTEN become live, so the first relay is
    # not left to the backup poll. Later outages are covered by that poll and by
    # the re-read on reconnect, so nobody waits for them here.
    if registry.primed:
        return
    live = registry.notifier.live(queries.FINISHED_CHANNEL)
    if not live.is_set():
        await asyncio.get_running_loop().run_in_executor(None, live.wait, min(timeout, 5.0))
    registry.primed = True

"""The waiters of this process, served by its listener (see :mod:`django_relay.results`).

A waiter is registered on the listener's loop before its job is read (subscribe,
then check). Each ``relay_finished`` NOTIFY names the jobs a statement finished;
the registry reads the outcomes of those it waits for in one query and wakes
their waiters on the waiters' own loops. A backup poll re-reads a waiter's job
every ``poll_interval`` (all waiters due in a tick in one query), so a lost
notification costs at most that, and a reconnection re-reads every waited job.
The jobs relay() enqueues are inserted by :mod:`.inserter`, which hands each
waiter back here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django_relay import codec, queries
from django_relay.exceptions import (
    RelayCancelled,
    RelayDiscard,
    RelayError,
    ResultTooLarge,
)
from django_relay.listener.futures import call_soon, resolve
from django_relay.listener.inserter import Inserter
from django_relay.listener.notifier import Notifier, get_notifier
from django_relay.models import TERMINAL_STATES
from django_relay.pg import Link

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
    __slots__ = (
        "active",
        "future",
        "job_id",
        "loop",
        "next_poll",
        "poll_interval",
        "subscribed",
        "with_retries",
    )

    def __init__(self, job_id: int, *, with_retries: bool, poll_interval: float) -> None:
        self.job_id = job_id
        self.with_retries = with_retries
        self.poll_interval = poll_interval
        self.next_poll = time.monotonic() + poll_interval
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Outcome] = self.loop.create_future()
        self.active = True
        #: Our channel is in the job's ``waiters`` (relay() inserted it so, or the
        #: registry added it); until then the registry subscribes before it reads.
        self.subscribed = False

    def offer(self, outcome: Outcome) -> None:
        """Called on the listener's thread with a fresh read of the job."""
        if self.active and outcome.is_final(self.with_retries):
            self.active = False
            call_soon(self.loop, resolve, self.future, outcome)


class Registry:
    """The waiters of this process, by job id. Lives on the listener's loop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.waiters: dict[int, set[Waiter]] = {}
        self.link = Link("relay")
        self.inserter = Inserter(
            waiter_channel=notifier.finished_channel,
            on_inserted=self.add,
            on_abandoned=self._cancel_abandoned,
        )
        self._wanted: set[int] = set()
        self._unsubscribed: set[int] = set()
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
        self._want([waiter.job_id], subscribe=not waiter.subscribed)  # subscribe, then check
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().create_task(self._tick())

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
        events = queries.finished_payload(payload)
        if events is None:
            logger.warning("ignoring a malformed relay_finished payload: %r", payload[:200])
            return
        waited = [job_id for job_id, _, _ in events if job_id in self.waiters]
        if waited:
            self._want(waited)

    def on_reconnect(self) -> None:
        # Notifications sent while we were away are gone: read every waited job.
        self._want(list(self.waiters))

    def _want(self, job_ids: Iterable[int], subscribe: bool = False) -> None:
        (self._unsubscribed if subscribe else self._wanted).update(job_ids)
        if (self._wanted or self._unsubscribed) and not self._reading:
            self._reading = True
            asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        # Ids wanted while a read is in flight wait for the next one: one query each.
        try:
            while self._wanted or self._unsubscribed:
                subscribe, self._unsubscribed = list(self._unsubscribed), set()
                read, self._wanted = list(self._wanted.difference(subscribe)), set()
                rows = []
                if subscribe:
                    channel = self.notifier.finished_channel
                    subscribing = partial(queries.subscribe, job_ids=subscribe, channel=channel)
                    rows += await self.link.run(subscribing)
                    for job_id in subscribe:
                        for waiter in self.waiters.get(job_id, ()):
                            waiter.subscribed = True
                if read:
                    rows += await self.link.run(partial(queries.fetch_outcomes, job_ids=read))
                found = {row[0]: Outcome(*row) for row in rows}
                for job_id in [*subscribe, *read]:
                    outcome = found.get(job_id) or Outcome(job_id, None)
                    for waiter in list(self.waiters.get(job_id, ())):
                        waiter.offer(outcome)
                        if not waiter.active:  # told, or given up: its caller need not say so
                            self.remove(waiter)
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
                unsubscribed: list[int] = []
                while self._polls and self._polls[0][0] <= now:
                    _, _, waiter = heapq.heappop(self._polls)
                    if waiter.active:
                        (due if waiter.subscribed else unsubscribed).append(waiter.job_id)
                        waiter.next_poll = now + waiter.poll_interval
                        heapq.heappush(self._polls, (waiter.next_poll, next(self._seq), waiter))
                if due:
                    self._want(due)
                if unsubscribed:  # its subscription failed: try again
                    self._want(unsubscribed, subscribe=True)
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
            notifier.listen(notifier.finished_channel, registry.on_finished)
            notifier.on_reconnect(registry.on_reconnect)
            notifier.on_close(registry.link.close)
            notifier.on_close(registry.inserter.link.close)
            _current = (notifier, registry)
        return _current[1]


async def listening(registry: Registry, timeout: float) -> None:
    # The first wait of a process lets LISTEN become live, so the first relay is
    # not left to the backup poll. Later outages are covered by that poll and by
    # the re-read on reconnect, so nobody waits for them here.
    if registry.primed:
        return
    live = registry.notifier.live(registry.notifier.finished_channel)
    if not live.is_set():
        await asyncio.get_running_loop().run_in_executor(None, live.wait, min(timeout, 5.0))
    registry.primed = True

"""relay()'s inserts: batched, on the listener's loop and a connection of their own.

Rows queued while a batch is in flight go in the next one. Each row's id is
reserved before its first try, so a try whose reply was lost is safe to repeat.
Once a row is in, its waiter is handed to the waiters' registry (subscribe, then
check); a row whose relay gave up meanwhile is handed back to be cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import psycopg

from django_relay import queries
from django_relay.listener.futures import call_soon, fail, resolve
from django_relay.pg import ConnectionLost, Link

logger = logging.getLogger("django_relay")


def _refused(exc: Exception) -> bool:
    # The database answered that it refuses the statement (a constraint, bad data, a
    # trigger's error): nothing was inserted and the connection is fine. Any other
    # error the server answered with (OperationalError's classes) fails the batch as
    # it is; a lost connection (ConnectionLost) is not an answer: the batch is sent again.
    return isinstance(exc, psycopg.DatabaseError) and not isinstance(exc, psycopg.OperationalError)


class Waiter(Protocol):
    """What the inserter needs of a waiter (``waiters.Waiter``)."""

    job_id: int
    active: bool
    subscribed: bool
    loop: asyncio.AbstractEventLoop


#: Job ids the inserter reserves at a time for relay()'s inserts.
_ID_BLOCK = 64


@dataclass(slots=True)
class _Insert:
    """A job relay() asked to insert, and where to tell it the row."""

    row: queries.NewJob
    waiter: Waiter
    inserted: asyncio.Future[tuple[Any, ...]]
    #: A try may have reached the database: the row may exist.
    sent: bool = False


class Inserter:
    """Inserts relay()'s jobs in batches. Lives on the listener's loop."""

    def __init__(
        self,
        *,
        waiter_channel: str,
        on_inserted: Callable[[Any], None],
        on_abandoned: Callable[[int], None],
    ) -> None:
        self.link = Link("relay-insert")
        self._waiter_channel = waiter_channel
        self._on_inserted = on_inserted
        self._on_abandoned = on_abandoned
        self._pending: list[_Insert] = []
        self._inserting = False
        self._ids: collections.deque[int] = collections.deque()

    def enqueue(
        self, row: queries.NewJob, waiter: Waiter, inserted: asyncio.Future[tuple[Any, ...]]
    ) -> None:
        """Insert ``row`` (with the others queued meanwhile), then wait on it."""
        self._pending.append(_Insert(row, waiter, inserted))
        if not self._inserting:
            self._inserting = True
            asyncio.get_running_loop().create_task(self._insert())

    async def _insert(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
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
                return await queries.ainsert_reserved_jobs(
                    conn, [entry.row for entry in rows], self._waiter_channel
                )

            try:
                returned = await self.link.run(partial(insert, rows=batch), retry=False)
            except ConnectionLost as exc:
                logger.warning(
                    "relay insert failed (%s); trying again in %.2fs", exc or "deadline", delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                if not _refused(exc):
                    for entry in batch:
                        call_soon(entry.waiter.loop, fail, entry.inserted, exc)
                    return
                # Refused: nothing was inserted. Split the batch in halves and insert
                # each again, so only the rows it refuses fail, each with its own
                # error, for log2(len(batch)) extra statements per refused row.
                for entry in batch:
                    entry.sent = False
                if len(batch) == 1:
                    call_soon(batch[0].waiter.loop, fail, batch[0].inserted, exc)
                    return
                half = len(batch) // 2
                await self._insert_batch(batch[:half])
                await self._insert_batch(batch[half:])
                return
            for entry, saved in zip(batch, returned, strict=True):
                entry.waiter.job_id = saved[0]
                # A unique job's duplicate was inserted by someone else: not ours to hear.
                entry.waiter.subscribed = not saved[4]
                if entry.waiter.active:
                    self._on_inserted(entry.waiter)  # subscribe, then check
                    call_soon(entry.waiter.loop, resolve, entry.inserted, saved)
                else:
                    self._on_abandoned(saved[0])
            return

    async def _reserve_ids(self, conn: psycopg.AsyncConnection, rows: list[_Insert]) -> None:
        # The id is the insert's idempotency key: given once, kept across tries.
        # Reserved a block at a time, so a relay rarely pays a round trip for it.
        # Under a stream of relays the batches follow each other: twice the batch's
        # need is reserved, so the next batch of its size needs no round trip of its own.
        missing = [entry for entry in rows if entry.row.id is None]
        if len(missing) > len(self._ids):
            wanted = max(2 * len(missing) - len(self._ids), _ID_BLOCK)
            self._ids.extend(await queries.reserve_job_ids(conn, wanted))
        for entry in missing:
            entry.row.id = self._ids.popleft()

"""Persists acks in batches: whatever finished while the last batch was written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from django_relay import queries
from django_relay.engine.executor import describe, error_entry, storable
from django_relay.models import JobState
from django_relay.pg import Link

logger = logging.getLogger("django_relay")

#: Acks written by one statement at most.
MAX_BATCH = 1000


class Acker:
    """Collects acks and writes each batch in one statement.

    There is no timer: a batch is written as soon as the previous one is done, so
    an idle runner acks at once and a busy one acks many jobs per round trip. A
    job's slot is freed as soon as its ``process`` returns; until its ack lands the
    attempt stays in :attr:`unsettled`, so nobody mistakes it for an orphan.

    Every attempt ends in exactly one written ack: one PostgreSQL refuses is
    replaced by what its ``refused`` callback gives (the attempt recorded as
    failed, saying why), else by a discard that says the outcome could not be
    stored. Only when even that cannot be written is the attempt left in
    :attr:`lost`, for the reconcile duty to record (and count).
    """

    def __init__(self, node: str, on_settled: Callable[[], None] | None = None) -> None:
        self.node = node
        self._on_settled = on_settled
        self.link = Link("ack")
        self._pending: list[_Entry] = []
        #: Claim tokens of attempts whose ack is queued or being written.
        self.unsettled: set[int] = set()
        #: Claim tokens of attempts none of whose acks could be written.
        self.lost: set[int] = set()
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-acker")

    def submit(
        self,
        ack: queries.Ack,
        refused: Callable[[str], queries.Ack] | None = None,
        written: Callable[[queries.Ack | None], object] | None = None,
    ) -> None:
        """Queue ``ack``; ``refused(reason)`` gives the ack to write if PostgreSQL refuses it.

        Once the batch is written, ``written`` is called with the ack that was
        written (``ack`` or its replacement), or None when the attempt was no longer
        ours (fenced off); never when nothing could be written (logged here). It is
        called by the acker itself, not scheduled (a future and a loop callback per
        job cost more than the call): one that raises is logged.
        """
        self._pending.append(_Entry(ack, refused, written))
        self.unsettled.add(ack.token)
        self._idle.clear()
        self._kick.set()

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._pending:
                self._kick.set()  # more than one batch waits: go round again
            if not batch:
                self._idle.set()
                continue
            written = await self._write(batch)
            for entry in batch:
                token = entry.ack.token
                self.unsettled.discard(token)
                if entry.written is not None and token in written:
                    try:
                        entry.written(written[token])
                    except Exception:
                        logger.exception("job %s: reporting its outcome failed", entry.ack.job_id)
            if self._on_settled is not None:
                self._on_settled()
            if not self._pending:
                self._idle.set()

    async def _write(self, batch: list[_Entry]) -> dict[int, queries.Ack | None]:
        """Write ``batch``: token -> the ack written (None: fenced off); lost ones missing.

        Repeating a write is safe (an ack that landed matches no row again), so a
        connection failure is simply retried. Any other error means an ack the
        database refuses: write the others one by one, and replace that one.
        """
        acks = [entry.ack for entry in batch]
        try:
            ours = await self.link.run(partial(queries.ack, node=self.node, acks=acks))
        except Exception as exc:
            if len(batch) == 1:
                return await self._replace(batch[0], exc)
            written: dict[int, queries.Ack | None] = {}
            for entry in batch:
                written |= await self._write([entry])
            return written
        return {ack.token: ack if ack.token in ours else None for ack in acks}

    async def _replace(self, entry: _Entry, exc: Exception) -> dict[int, queries.Ack | None]:
        ack = entry.ack
        reason = describe(exc)
        logger.error(
            "job %s: PostgreSQL refused the outcome (%s) of attempt %s: %s; recording the "
            "attempt as failed instead",
            ack.job_id,
            ack.state,
            ack.attempt,
            storable(reason),
        )
        candidates = [entry.refused, partial(_unstorable, ack)]
        for make in candidates:
            if make is None:
                continue
            try:
                instead = make(reason)
                ours = await self.link.run(partial(queries.ack, node=self.node, acks=[instead]))
            except Exception as failure:
                logger.error(
                    "job %s: the replacement outcome failed too: %s",
                    ack.job_id,
                    storable(describe(failure)),
                )
                continue
            return {ack.token: instead if instead.token in ours else None}
        logger.error(
            "job %s: no outcome of attempt %s could be written; the runner records it "
            "as lost at its next reconcile",
            ack.job_id,
            ack.attempt,
        )
        self.lost.add(ack.token)
        return {}

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued ack is written; False if ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.link.close()


class _Entry(NamedTuple):
    ack: queries.Ack
    refused: Callable[[str], queries.Ack] | None
    written: Callable[[queries.Ack | None], object] | None


def _unstorable(ack: queries.Ack, reason: str) -> queries.Ack:
    """The last resort: discard, keeping only our own text (no result, no user meta)."""
    error = error_entry(
        ack.attempt, "unstorable", f"the outcome ({ack.state}) could not be stored: {reason}"
    )
    return queries.Ack(ack.job_id, ack.attempt, JobState.DISCARDED, error=error, token=ack.token)

"""Persists acks in batches: whatever finished while the last batch was written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from django_relay import queries
from django_relay.pg import Link

logger = logging.getLogger("django_relay")

#: Acks written by one statement at most.
MAX_BATCH = 1000


class Acker:
    """Collects acks and writes each batch in one statement.

    There is no timer: a batch is written as soon as the previous one is done, so
    an idle runner acks at once and a busy one acks many jobs per round trip. A
    job's slot is freed as soon as its ``process`` returns; until its ack lands the
    job stays in :attr:`unsettled`, so nobody mistakes it for an orphan.
    """

    def __init__(self, node: str, on_settled: Callable[[], None] | None = None) -> None:
        self.node = node
        self._on_settled = on_settled
        self.link = Link("ack")
        self._pending: list[tuple[queries.Ack, asyncio.Future[bool]]] = []
        #: Ids of jobs whose ack is queued or being written.
        self.unsettled: set[int] = set()
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-acker")

    def submit(self, ack: queries.Ack) -> asyncio.Future[bool]:
        """Queue ``ack``; the future says, once it is persisted, if the attempt was ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((ack, future))
        self.unsettled.add(ack.job_id)
        self._idle.clear()
        self._kick.set()
        return future

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
            ours = await self._write([ack for ack, _ in batch])
            for ack, future in batch:
                self.unsettled.discard(ack.job_id)
                if not future.done():
                    future.set_result(ack.job_id in ours)
            if self._on_settled is not None:
                self._on_settled()
            if not self._pending:
                self._idle.set()

    async def _write(self, acks: list[queries.Ack]) -> set[int]:
        """Write ``acks``; the ids that were still ours.

        Repeating a write is safe (an ack that landed matches no row again), so a
        connection failure is simply retried. Any other error means one ack the
        database refuses: write the others one by one, and leave that job to be
        given back by the reconcile duty rather than stop acking for everyone.
        """
        try:
            return await self.link.run(partial(queries.ack, node=self.node, acks=acks))
        except Exception:
            if len(acks) == 1:
                logger.exception(
                    "job %s: its outcome could not be written; it will be given back and run again",
                    acks[0].job_id,
                )
                return set()
        ours: set[int] = set()
        for ack in acks:
            ours |= await self._write([ack])
        return ours

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

"""Persists acks in batches: whatever finished while the last batch was written."""

from __future__ import annotations

import asyncio
from functools import partial

from django_relay import queries
from django_relay.pg import Link


class Acker:
    """Collects acks and writes each batch in one statement.

    There is no timer: a batch is written as soon as the previous one is done, so
    an idle runner acks at once and a busy one acks many jobs per round trip.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.link = Link("ack")
        self._pending: list[tuple[queries.Ack, asyncio.Future[bool]]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-acker")

    async def submit(self, ack: queries.Ack) -> bool:
        """Queue ``ack``; return once it is persisted, True if the attempt was still ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((ack, future))
        self._kick.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            acks = [ack for ack, _ in batch]
            # Repeating a batch is safe: an ack that already landed matches no row.
            ours = await self.link.run(partial(queries.ack, node=self.node, acks=acks))
            for ack, future in batch:
                if not future.done():
                    future.set_result(ack.job_id in ours)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.link.close()

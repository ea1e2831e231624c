"""Keeps a runner honest: heartbeat (on its own thread), staging, rescuing orphans, pruning."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial

from django_relay import queries, signals
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Heartbeat:
    """The runner's heartbeat, on a thread, event loop and connection of its own.

    A job that blocks the runner's event loop (an ``async def process`` calling
    blocking code) must not silence the heartbeat: past ``RESCUE_AFTER`` every job
    of the runner would be rescued and run twice.
    """

    def __init__(self, node: str, queues: dict[str, int]) -> None:
        self.node = node
        self._queues = json.dumps(queues)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._first: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def start(self) -> None:
        """Start beating; return once the first beat is recorded (our node exists)."""
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._run(),), name="relay-heartbeat", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(self._first)

    async def _run(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        link = Link("heartbeat")
        beat = partial(
            queries.heartbeat,
            node=self.node,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self._queues,
        )
        try:
            while not self._stopping.is_set():
                try:
                    await link.run(beat)
                    if not self._first.done():
                        self._first.set_result(None)
                except Exception:
                    logger.exception(
                        "heartbeat failed; it runs again in %ss", settings.HEARTBEAT_INTERVAL
                    )
                await asyncio.sleep(settings.HEARTBEAT_INTERVAL)
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            await link.close()
            self._done.set_result(None)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop beating (before the node is forgotten, so no beat brings it back)."""
        self._stopping.set()
        if self._thread is None:
            return
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._task.cancel)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(self._done), timeout)


async def watch_loop(stopping: asyncio.Event) -> None:
    """Warn when the runner's event loop was blocked (jobs, acks and claims all wait)."""
    threshold = settings.LOOP_BLOCKED_WARNING
    period = min(max(threshold / 4, 0.05), 1.0)
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        before = loop.time()
        await asyncio.sleep(period)
        blocked = loop.time() - before - period
        if blocked >= threshold:
            logger.warning(
                "the runner's event loop was blocked for %.1fs: an async process() called "
                "blocking code (use sync_to_async, or a plain def process, which runs in a "
                "thread); meanwhile no job of this runner made progress",
                blocked,
            )


class Lifeline:
    """Periodic upkeep on one connection; each duty on its own period."""

    def __init__(self, node: str, reconcile: Callable[[], Awaitable[None]]) -> None:
        self.node = node
        self.link = Link("maintenance")
        self._reconcile = reconcile
        self._due: dict[str, float] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        watcher = asyncio.create_task(watch_loop(stopping), name="relay-loop-watch")
        try:
            await self._run(stopping)
        finally:
            watcher.cancel()

    async def _run(self, stopping: asyncio.Event) -> None:
        duties: list[tuple[str, float | None, Callable[[], Awaitable[object]]]] = [
            ("stage", settings.STAGE_INTERVAL, self._stage),
            ("rescue", settings.HEARTBEAT_INTERVAL, self._rescue),
            ("reconcile", settings.HEARTBEAT_INTERVAL, self._reconcile),
            ("prune", None if settings.PRUNE_AFTER is None else 60.0, self._prune),
        ]
        tick = min(period for _, period, _ in duties if period)
        while not stopping.is_set():
            now = time.monotonic()
            for name, period, duty in duties:
                if period is None or self._due.get(name, 0.0) > now:
                    continue
                self._due[name] = now + period
                try:
                    await duty()
                except Exception:
                    logger.exception("%s failed; it runs again in %ss", name, period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), tick)

    async def _stage(self) -> None:
        await self.link.run(queries.stage)

    async def _rescue(self) -> None:
        rows = await self.link.run(lambda conn: queries.rescue(conn, settings.RESCUE_AFTER))
        for job_id, state in rows:
            logger.warning(
                "job %s rescued from a runner that stopped heartbeating: now %s", job_id, state
            )
        discarded = [job_id for job_id, state in rows if state == "discarded"]
        if discarded:  # its attempts were spent: the rescue ended it
            executor.soon(executor.announce(signals.job_discarded, discarded))

    async def _prune(self) -> None:
        deleted = await self.link.run(lambda conn: queries.prune(conn, settings.PRUNE_AFTER))
        if deleted:
            logger.info("pruned %s finished jobs", deleted)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.link.run(lambda conn: queries.forget_node(conn, self.node)), 2.0
            )
        await self.link.close()

"""A runner's liveness: its heartbeat, on a thread of its own, and a blocked-loop warning."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import threading
from functools import partial

from django_relay import queries
from django_relay.conf import settings
from django_relay.engine import turns
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
        #: Queue -> live nodes serving it (``turns.members_by_queue``), read at each beat.
        self.members: dict[str, list[str]] = {}
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
                    self.members = await self._members(link)
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
            if self._stopping.is_set():  # stopped, not crashed: other runners need not wait
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        link.run(lambda conn: queries.forget_node(conn, self.node)), 2.0
                    )
            await link.close()
            self._done.set_result(None)

    async def _members(self, link: Link) -> dict[str, list[str]]:
        # Live: beat within three intervals (at most RESCUE_AFTER); a runner that died
        # keeps its turns until then, each lost wake-up costing at most FETCH_INTERVAL.
        within = min(max(3 * settings.HEARTBEAT_INTERVAL, 1.0), settings.RESCUE_AFTER)
        members = turns.members_by_queue(await link.run(partial(queries.live_nodes, within=within)))
        for queue in json.loads(self._queues):
            if len(members.get(queue, ())) != len(self.members.get(queue, ())):
                logger.info("queue %s: %s runners take turns", queue, len(members.get(queue, ())))
        return members

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop beating, then forget the node (no beat can bring it back)."""
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

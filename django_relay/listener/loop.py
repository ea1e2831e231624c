"""A thread with an event loop of its own, hosting one serving task and others' work.

Async views under WSGI each run in a fresh event loop and ``relay_sync`` waits
in plain threads, so code bound to any caller's loop could not serve them all.
The host owns a thread and a loop (or, in a runner, borrows the runner's loop);
work runs there and hands results to its own loop through :func:`.futures.call_soon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from django_relay.listener import futures


class LoopHost:
    """Runs ``_serve()`` on a loop of its own (or an attached one) until stopped."""

    thread_name = "relay-loop"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._serving: asyncio.Task[None] | None = None

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Release what ``_serve()`` holds, on the loop, when the host stops."""

    # -- any thread -----------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once); returns at once."""
        with self._lock:
            if self._thread is None and self.loop is None:
                self._thread = threading.Thread(
                    target=self._main, name=self.thread_name, daemon=True
                )
                self._thread.start()
        self._started.wait()

    def attach(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Serve on ``loop`` (the caller's, running) instead of a thread of its own.

        A runner process has one loop that matters: serving there saves a thread
        hop on every wake-up. Returns False if the host already started.
        """
        with self._lock:
            if self._thread is not None or self.loop is not None:
                return False
            self.loop = loop
            self._serving = loop.create_task(self._serve(), name=self.thread_name)
        self._started.set()
        return True

    def on_close(self, closer: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Await ``closer()`` on the host's loop when it stops (to close connections)."""
        with self._lock:
            self._closers.append(closer)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run ``coro`` on the host's loop."""
        self.start()
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on the host's loop (a burst of calls wakes it once)."""
        self.start()
        assert self.loop is not None
        futures.call_soon(self.loop, fn, *args)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connections and end the thread (tests; a process exit needs none)."""
        if self._thread is None or self.loop is None:
            return
        self.submit(self._shutdown()).result(timeout)
        self._thread.join(timeout)

    # -- the host's thread ----------------------------------------------------

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self._serving = self.loop.create_task(self._serve())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self._serving)
        self.loop.close()

    async def _shutdown(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
        await self._close()
        with self._lock:
            closers = list(self._closers)
        for closer in closers:
            await closer()

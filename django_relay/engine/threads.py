"""The threads that run plain ``def process`` methods, with timeouts that free slots.

Python cannot stop a thread. A sync ``process`` past its worker's ``timeout``
fails its attempt at the timeout (its slot is freed and the job retried), but
its thread runs on until ``process`` returns. Such overdue threads are not
counted against the runner's concurrency: the pool has room for
``max_overdue`` of them beside one thread per slot (threads are only started
when needed). Past that many, new sync jobs wait for a thread until an overdue
one returns, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django_relay.listener.futures import call_soon, fail, resolve

logger = logging.getLogger("django_relay")


#: Name prefix of these threads (the executor tells Django connections opened in
#: them, which clean up after each job, from those of asgiref's thread).
JOB_THREAD_PREFIX = "relay-job"


class JobThreads:
    """Threads for ``slots`` concurrent sync calls, plus room for ``max_overdue`` hung ones."""

    def __init__(self, slots: int, *, max_overdue: int | None = None) -> None:
        slots = max(1, slots)
        self.max_overdue = slots if max_overdue is None else max(0, max_overdue)
        self._pool = ThreadPoolExecutor(
            max_workers=slots + self.max_overdue, thread_name_prefix=JOB_THREAD_PREFIX
        )
        self._lock = threading.Lock()
        self._overdue: set[Future[Any]] = set()

    async def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        """``fn(*args)`` on a pool thread; cancelled, the call is set aside as overdue.

        Unlike ``asyncio.wrap_future``, which wakes the loop once per call, the
        calls that end together hand their outcomes back with one wake-up.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()

        def work() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:  # SystemExit too: the caller decides
                call_soon(loop, fail, waiter, exc)
            else:
                call_soon(loop, resolve, waiter, value)

        future = self._pool.submit(work)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.overdue(future)  # timed out (or the runner stops): the thread runs on
            raise

    @property
    def overdue_count(self) -> int:
        """Calls given up on (timed out) whose threads still run."""
        with self._lock:
            return len(self._overdue)

    def overdue(self, future: Future[Any]) -> None:
        """The caller gave up on ``future``: while it runs on, its thread is set aside."""
        if future.cancel() or future.done():
            return  # it never started, or it is over: no thread is held
        with self._lock:
            self._overdue.add(future)
            count = len(self._overdue)
        if count > self.max_overdue:
            logger.error(
                "%s sync jobs run on after their attempt ended, more than the %s threads "
                "set aside for them: new sync jobs wait until one of them returns",
                count,
                self.max_overdue,
            )
        else:
            logger.warning(
                "a sync job runs on after its attempt ended (timed out or the runner "
                "stops; Python cannot stop a thread): %s of %s threads set aside for "
                "such jobs in use",
                count,
                self.max_overdue,
            )
        future.add_done_callback(self._returned)

    def _returned(self, future: Future[Any]) -> None:
        with self._lock:
            self._overdue.discard(future)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

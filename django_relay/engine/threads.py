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
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from django_relay.listener.futures import call_soon, fail, resolve

logger = logging.getLogger("django_relay")


#: Name prefix of these threads (the executor tells Django connections opened in
#: them, which clean up after each job, from those of asgiref's thread).
JOB_THREAD_PREFIX = "relay-job"

_PENDING, _RUNNING, _OVER = range(3)

_numbers = itertools.count()


class _Call:
    """One ``fn(*args)`` handed to the threads, and the loop's future for its outcome."""

    __slots__ = ("args", "fn", "loop", "outcome", "state", "waiter")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[Any] = self.loop.create_future()
        self.state = _PENDING  # changed under the pool's lock
        self.outcome: tuple[Callable[[asyncio.Future[Any], Any], None], Any] | None = None


def _hand_back(ended: list[_Call]) -> None:
    """Settle the waiters of ``ended`` calls: one hand-off (and one wake-up) per loop."""
    loops: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
    for call in ended:
        loops.setdefault(call.loop, []).append(call)
    for loop, calls in loops.items():
        call_soon(loop, _settle, calls)


def _settle(calls: list[_Call]) -> None:
    for call in calls:
        if call.outcome is not None:
            settle, value = call.outcome
            call.outcome = None
            settle(call.waiter, value)


class JobThreads:
    """Threads for ``slots`` concurrent sync calls, plus room for ``max_overdue`` hung ones.

    Calls wait in one queue. Waking a parked thread for every call would set the
    whole pool contending for the GIL to run calls that take microseconds, and
    spread a batch's outcomes over many hand-backs: so one thread at most is on
    its way to the queue, and the thread that takes a call wakes the next one
    only if more calls wait. A call that blocks (I/O) lets the woken thread run,
    so slow calls still run side by side; quick ones are run in a row by a
    thread that is already awake. The most recently parked thread is woken
    first, so idle ones stay parked.
    """

    def __init__(self, slots: int, *, max_overdue: int | None = None) -> None:
        slots = max(1, slots)
        self.max_overdue = slots if max_overdue is None else max(0, max_overdue)
        self._size = slots + self.max_overdue
        self._lock = threading.Lock()
        self._calls: deque[_Call] = deque()
        self._threads = 0
        #: Parked threads, each blocked on its own lock until it is released.
        self._parked: list[threading.Lock] = []
        #: The parked (or starting) thread woken to take a call, until it looks.
        self._waking: threading.Lock | None = None
        self._overdue: set[_Call] = set()
        #: Calls that returned, whose outcomes are not handed back yet.
        self._ended: list[_Call] = []
        self._closed = False
        #: The loop where a wake-up is due (see run()).
        self._kicking: asyncio.AbstractEventLoop | None = None

    async def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        """``fn(*args)`` on a pool thread; cancelled, the call is set aside as overdue.

        Unlike ``asyncio.wrap_future``, which wakes the loop once per call, the
        calls that end together hand their outcomes back with one wake-up.
        """
        call = _Call(fn, args)
        with self._lock:
            if self._closed:
                raise RuntimeError("the job threads are shut down")
            self._calls.append(call)
            # A thread is woken once the loop is done with what it runs now: woken at
            # once, it would contend for the GIL with the rest of a batch's calls.
            kick = self._kicking is not call.loop
            self._kicking = call.loop
        if kick:
            call.loop.call_soon(self._kick, call.loop)
        try:
            return await call.waiter
        except asyncio.CancelledError:
            self._given_up(call)  # timed out (or the runner stops): the thread runs on
            raise

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._kicking is loop:
                self._kicking = None
            start = self._wake()
        if start is not None:
            self._start(start)

    def _wake(self) -> threading.Lock | None:
        """With the lock held: get a thread on its way if calls wait and none is.

        Returns the parking lock of a thread to start (outside the lock), if any.
        """
        if self._waking is not None or not self._calls:
            return None
        if self._parked:
            self._waking = self._parked.pop()
            self._waking.release()
            return None
        if self._threads >= self._size:
            return None  # every thread is busy: the first to finish takes the call
        self._threads += 1
        self._waking = threading.Lock()
        self._waking.acquire()
        return self._waking

    def _start(self, parking: threading.Lock) -> None:
        name = f"{JOB_THREAD_PREFIX}_{next(_numbers)}"
        # A daemon: an idle thread never holds up the interpreter's exit (relayworker
        # waits for running ones itself, see its handle()).
        thread = threading.Thread(target=self._work, args=(parking,), name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of resources
            with self._lock:
                self._threads -= 1
                if self._waking is parking:
                    self._waking = None
                ended, self._ended = self._ended, []
                stranded: list[_Call] = []
                if not self._threads:  # nothing would ever take the waiting calls
                    stranded, self._calls = [*self._calls], deque()
            logger.error("could not start a thread for sync jobs: %s", exc)
            if ended:
                _hand_back(ended)
            for call in stranded:
                if call.state == _PENDING:
                    call_soon(call.loop, fail, call.waiter, exc)

    def _work(self, parking: threading.Lock) -> None:
        lock = self._lock
        done: _Call | None = None
        while True:
            with lock:
                if done is not None:
                    done.state = _OVER
                    self._overdue.discard(done)
                    self._ended.append(done)
                    done = None
                if self._waking is parking:
                    self._waking = None
                call = None
                while self._calls:
                    call = self._calls.popleft()
                    if call.state == _PENDING:  # not given up before it started
                        call.state = _RUNNING
                        break
                    call = None
                start = None if call is None else self._wake()  # the next thread on its way
                # Outcomes wait while another thread is on its way to the calls still
                # queued: it takes them on; the thread that finds the queue empty (or
                # no thread to wake) hands them all back, before it runs anything.
                if self._ended and (call is None or self._waking is None):
                    ended, self._ended = self._ended, []
                else:
                    ended = None
                if call is None:
                    if self._closed:
                        self._threads -= 1
                    else:
                        self._parked.append(parking)
            if ended:
                _hand_back(ended)
            if call is None:
                if self._closed:
                    return
                parking.acquire()  # until woken (or shut down)
                continue
            if start is not None:
                self._start(start)
            try:
                call.outcome = (resolve, call.fn(*call.args))
            except BaseException as exc:  # SystemExit too: the caller decides
                call.outcome = (fail, exc)
            done, call = call, None

    @property
    def overdue_count(self) -> int:
        """Calls given up on (timed out) whose threads still run."""
        with self._lock:
            return len(self._overdue)

    def _given_up(self, call: _Call) -> None:
        """The caller gave up on ``call``: while it runs on, its thread is set aside."""
        with self._lock:
            if call.state != _RUNNING:
                call.state = _OVER  # it never started (it is skipped), or it is over
                return
            self._overdue.add(call)
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

    def shutdown(self) -> None:
        """Let idle threads end, and running ones once their call returns; fail waiting calls."""
        with self._lock:
            self._closed = True
            waiting, self._calls = list(self._calls), deque()
            parked, self._parked = self._parked, []
        for parking in parked:
            parking.release()
        for call in waiting:
            if call.state == _PENDING:
                call_soon(call.loop, fail, call.waiter, RuntimeError("the job threads shut down"))

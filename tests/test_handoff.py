"""Handing calls to another thread's loop in bursts (listener.futures.call_soon), and the
job threads that hand sync jobs' outcomes back that way (engine.threads.JobThreads.run)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from django_relay.engine.threads import JobThreads
from django_relay.listener import futures
from tests.conftest import await_for


class _CountingWakeUps:
    """Counts the loop's ``call_soon_threadsafe`` calls (its wake-ups from other threads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self._real = loop.call_soon_threadsafe

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self._real(*args, **kwargs)


async def test_a_burst_of_calls_from_another_thread_runs_in_order_with_one_wake_up(monkeypatch):
    loop = asyncio.get_running_loop()
    wake_ups = _CountingWakeUps(loop)
    monkeypatch.setattr(loop, "call_soon_threadsafe", wake_ups)
    seen: list[int] = []
    done = threading.Event()

    def burst() -> None:
        for i in range(500):
            futures.call_soon(loop, seen.append, i)
        done.set()

    # The loop's thread is held (no await) while the other thread queues the burst.
    thread = threading.Thread(target=burst)
    thread.start()
    assert done.wait(10)
    thread.join()
    await await_for(lambda: len(seen) == 500)
    assert seen == list(range(500))
    assert wake_ups.count == 1
    # The next call after a drain wakes the loop again: nothing is left waiting.
    futures.call_soon(loop, seen.append, 500)
    await await_for(lambda: seen[-1] == 500)
    assert wake_ups.count == 2


async def test_a_call_that_raises_is_reported_and_the_others_still_run():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    seen: list[str] = []
    try:

        def boom() -> None:
            raise ValueError("boom")

        futures.call_soon(loop, seen.append, "before")
        futures.call_soon(loop, boom)
        futures.call_soon(loop, seen.append, "after")
        await await_for(lambda: len(seen) == 2)
    finally:
        loop.set_exception_handler(None)
    assert seen == ["before", "after"]
    assert [type(context["exception"]) for context in reported] == [ValueError]


def test_a_call_to_a_closed_loop_is_dropped_and_holds_nothing():
    loop = asyncio.new_event_loop()
    loop.close()
    futures.call_soon(loop, print, "nobody is there")
    mailbox = futures._mailboxes[loop]
    assert mailbox.calls == [] and not mailbox.scheduled
    futures.call_soon(loop, print, "still nobody")  # tried again, not assumed on its way
    assert mailbox.calls == []


async def test_job_threads_return_values_and_raise_errors_of_their_calls():
    threads = JobThreads(2)
    try:
        assert await threads.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="bad"):
            await threads.run(_raise, ValueError("bad"))
        # A job's sys.exit() comes back as an outcome; it must not end the runner.
        with pytest.raises(SystemExit):
            await threads.run(_raise, SystemExit(3))
        results = await asyncio.gather(*(threads.run(pow, i, 2) for i in range(50)))
        assert results == [i * i for i in range(50)]
    finally:
        threads.shutdown()


async def test_a_call_given_up_on_runs_on_as_overdue_until_it_returns():
    threads = JobThreads(1, max_overdue=1)
    started, release = threading.Event(), threading.Event()

    def hang() -> None:
        started.set()
        release.wait(30)

    try:
        call = asyncio.ensure_future(threads.run(hang))
        await await_for(started.is_set)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert threads.overdue_count == 1
        release.set()
        await await_for(lambda: threads.overdue_count == 0)
    finally:
        release.set()
        threads.shutdown()


def _raise(exc: BaseException) -> None:
    raise exc

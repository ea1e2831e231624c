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


async def test_job_threads_run_calls_that_block_side_by_side():
    # Each call blocks until all ten run at once: a pool that ran them one after
    # another (or woke too few threads) would break the barrier.
    threads = JobThreads(10, max_overdue=0)
    barrier = threading.Barrier(10)
    try:
        results = await asyncio.gather(*(threads.run(barrier.wait, 20) for _ in range(10)))
        assert sorted(results) == list(range(10))
        # Again, with the threads now parked rather than new.
        assert sorted(await asyncio.gather(*(threads.run(barrier.wait, 20) for _ in range(10))))
    finally:
        barrier.abort()
        threads.shutdown()


async def test_a_call_given_up_before_it_starts_never_runs():
    threads = JobThreads(1, max_overdue=0)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hang() -> str:
        started.set()
        release.wait(30)
        return "hung"

    try:
        first = asyncio.ensure_future(threads.run(hang))
        await await_for(started.is_set)
        waiting = asyncio.ensure_future(threads.run(ran.append, "given up"))
        await asyncio.sleep(0)  # it is queued: the one thread is busy
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert threads.overdue_count == 0  # it held no thread
        release.set()
        assert await first == "hung"
        assert await threads.run(ran.append, "next") is None
        assert ran == ["next"]
    finally:
        release.set()
        threads.shutdown()


async def test_past_max_overdue_new_calls_wait_for_a_hung_one_to_return(caplog):
    threads = JobThreads(1, max_overdue=1)
    gates = [threading.Event(), threading.Event()]
    started = [threading.Event(), threading.Event()]

    def hang(n: int) -> None:
        started[n].set()
        gates[n].wait(30)

    try:
        for n in range(2):  # a slot and the one thread set aside: both hung
            call = asyncio.ensure_future(threads.run(hang, n))
            await await_for(started[n].is_set)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        assert threads.overdue_count == 2
        assert "new sync jobs wait until one of them returns" in caplog.text
        ran = threading.Event()
        waiting = asyncio.ensure_future(threads.run(ran.set))
        await asyncio.sleep(0.1)
        assert not ran.is_set()  # no thread to run it
        gates[0].set()
        await waiting
        assert ran.is_set()
        await await_for(lambda: threads.overdue_count == 1)
    finally:
        for gate in gates:
            gate.set()
        threads.shutdown()


async def test_shutdown_ends_idle_threads_and_fails_the_calls_still_waiting():
    threads = JobThreads(1, max_overdue=0)
    started, release = threading.Event(), threading.Event()

    def hang() -> threading.Thread:
        started.set()
        release.wait(30)
        return threading.current_thread()

    try:
        idle = await threads.run(threading.current_thread)
        running = asyncio.ensure_future(threads.run(hang))
        await await_for(started.is_set)
        waiting = asyncio.ensure_future(threads.run(threading.current_thread))
        await asyncio.sleep(0)
        threads.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await waiting
        with pytest.raises(RuntimeError, match="shut down"):
            await threads.run(threading.current_thread)
        release.set()
        thread = await running  # a running call still ends, and hands its outcome back
        assert thread is idle  # the pool's one thread
        await await_for(lambda: not thread.is_alive())
    finally:
        release.set()
        threads.shutdown()


def _raise(exc: BaseException) -> None:
    raise exc

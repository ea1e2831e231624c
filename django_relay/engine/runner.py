"""The runner: producers per queue, one acker, the periodic services, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from django_relay import periodic, queries, signals, stats
from django_relay.conf import settings
from django_relay.engine import executor, turns
from django_relay.engine.acker import Acker
from django_relay.engine.control import QueueControl
from django_relay.engine.heartbeat import Heartbeat, watch_loop
from django_relay.engine.producer import Producer
from django_relay.engine.pruner import Pruner
from django_relay.engine.rescuer import Rescuer
from django_relay.engine.scheduler import Scheduler
from django_relay.engine.service import Periodic
from django_relay.engine.stager import Stager
from django_relay.engine.threads import JobThreads
from django_relay.listener.notifier import get_notifier
from django_relay.pg import Link

logger = logging.getLogger("django_relay")


class Runner:
    """Runs the jobs of ``queues`` (name -> concurrency) until ``stopping`` is set."""

    def __init__(self, queues: dict[str, int]) -> None:
        self.queues = dict(queues)
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.threads = JobThreads(sum(queues.values()))
        self.acker = Acker(self.node, on_settled=self._settled)
        self._claims = Link("claim")
        # Held around each claim and each reconcile: a reconcile must never see a
        # claimed row before its job is in a producer's running set.
        self._claim_lock = asyncio.Lock()
        self.producers = {
            name: Producer(
                name,
                limit,
                node=self.node,
                claim=self._claim,
                acker=self.acker,
                threads=self.threads,
                pass_on=self._pass_on,
            )
            for name, limit in self.queues.items()
        }
        # Queue control and the periodic duties share one connection: each runs for
        # milliseconds every second or more (see "Running at scale" in README.rst).
        self._upkeep = Link("upkeep")
        self.control = QueueControl(self.node, self.producers, self.queues, self._upkeep)
        entries = periodic.entries()
        self.scheduler = Scheduler(entries) if entries else None
        self.failed = False
        self.heartbeat = Heartbeat(self.node, self.queues)
        # Staging, rescuing and pruning: one runner at a time (advisory locks);
        # reconciling: every runner, for its own claims.
        self.services: list[Periodic] = [
            Stager(self._upkeep),
            Rescuer(self._upkeep),
            Reconciler(self._reconcile),
        ]
        if settings.PRUNE_AFTER is not None:
            self.services.append(Pruner(self._upkeep))

    def ready_line(self) -> str:
        queues = ", ".join(f"{q}={n}" for q, n in self.queues.items())
        return f"relayworker {self.node} ready: queues {queues}"

    def running_tokens(self) -> list[int]:
        """Claims (tokens) this runner holds: running, or finished with their ack unwritten."""
        running = [token for p in self.producers.values() for token in p.running]
        return [*running, *self.acker.unsettled]

    async def _claim(
        self, queue: str, limit: int, limits: queries.QueueLimits | None = None
    ) -> list[tuple]:
        async with self._claim_lock:
            try:
                if limits is None:  # the hot path: no lock, no counting
                    return await self._claims.run(
                        lambda conn: queries.claim(conn, queue, limit, self.node)
                    )
                return await self._claims.run(
                    lambda conn: queries.claim_limited(conn, queue, limit, self.node, limits)
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("claiming from %s failed", queue)
                return []

    async def _reconcile(self) -> None:
        lost = list(self.acker.lost)
        async with self._claim_lock:
            given_back = await self._claims.run(
                lambda conn: queries.reconcile(conn, self.node, self.running_tokens(), lost)
            )
        self.acker.lost.difference_update(lost)  # recorded now, or no longer ours
        if given_back:
            logger.warning(
                "gave back %s jobs marked as ours that were not running: %s",
                len(given_back),
                given_back,
            )
        discarded = [job_id for job_id, state in given_back if state == "discarded"]
        if discarded:
            executor.soon(executor.announce(signals.job_discarded, discarded))

    def _available(self, payload: str) -> None:
        note = queries.available_payload(payload)
        if note is None:
            logger.warning("ignoring a malformed relay_available payload: %r", payload[:200])
            return
        producer = self.producers.get(note.queue)
        if producer is None:
            return
        count = turns.share(self.node, self.heartbeat.members.get(note.queue, ()), note)
        if count:
            producer.wake(count, note.hops)

    def _pass_on(self, queue: str, count: int, hops: int) -> bool:
        """Hand ``count`` jobs of ``queue`` to the next runner; False if none is left."""
        members = self.heartbeat.members.get(queue, ())
        note = turns.pass_on(self.node, members, queue, count, hops)
        if note is None:
            return False
        executor.soon(self._notify(queries.AVAILABLE_CHANNEL, note.payload()))
        return True

    async def _notify(self, channel: str, payload: str) -> None:
        try:
            await self._claims.run(lambda conn: queries.notify(conn, channel, payload))
        except Exception:
            logger.exception("passing jobs on to the next runner failed; the poll finds them")

    def _settled(self) -> None:
        for producer in self.producers.values():
            producer.settled()

    def _wake_all(self) -> None:
        for producer in self.producers.values():
            producer.wake()

    async def run(
        self,
        stopping: asyncio.Event,
        *,
        grace: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Serve until ``stopping`` is set, then stop gracefully within ``grace`` seconds."""
        loop = asyncio.get_running_loop()
        # A job's task runs at once until its first real wait: a short async
        # process finishes without a trip through the event loop's queue.
        loop.set_task_factory(asyncio.eager_task_factory)
        notifier = get_notifier()
        notifier.attach(loop)  # LISTEN on this loop: no thread between NOTIFY and claim

        def on_available(payload: str) -> None:
            loop.call_soon_threadsafe(self._available, payload)

        def on_queue_changed(queue: str) -> None:
            loop.call_soon_threadsafe(self.control.changed)

        def on_reconnect() -> None:
            # A reconnected listener may have missed notifications: look again.
            loop.call_soon_threadsafe(self._wake_all)
            loop.call_soon_threadsafe(self.control.changed)

        unlisten = notifier.listen(queries.AVAILABLE_CHANNEL, on_available)
        unlisten_queues = notifier.listen(queries.QUEUE_CHANNEL, on_queue_changed)
        notifier.on_reconnect(on_reconnect)
        if not await _unless_stopped(self._start(), stopping):
            # Stopped while its database could not be reached yet: nothing ran.
            unlisten()
            unlisten_queues()
            await self.heartbeat.stop()
            await self._upkeep.close()
            self.threads.shutdown()
            logger.info("relayworker %s stopped before it was ready", self.node)
            return
        self.acker.start()
        workers = [
            asyncio.create_task(p.run(stopping), name=f"relay-producer-{p.queue}")
            for p in self.producers.values()
        ]
        for service in self.services:
            service.start()
        watcher = asyncio.create_task(watch_loop(stopping), name="relay-loop-watch")
        upkeep = [service.task for service in self.services if service.task is not None]
        # Queue control and the periodic scheduler run in every runner (each
        # coordinates through the database on its own), as tasks beside the services.
        flow = [asyncio.create_task(self.control.run(stopping), name="relay-queue-control")]
        if self.scheduler is not None:
            flow.append(asyncio.create_task(self.scheduler.run(stopping), name="relay-scheduler"))
        logger.info("%s", self.ready_line())
        if on_ready is not None:
            on_ready()
        try:
            # A producer or a service ending on its own is a bug: stop rather than
            # linger as a runner that heartbeats but runs nothing.
            stop = asyncio.create_task(stopping.wait())
            done, _ = await asyncio.wait(
                {stop, *workers, *upkeep, *flow}, return_when=asyncio.FIRST_COMPLETED
            )
            crashed = [] if stopping.is_set() else [t for t in done if t is not stop]
            if crashed:
                self.failed = True
                for task in crashed:
                    logger.critical(
                        "%s stopped unexpectedly: %r; shutting down",
                        task.get_name(),
                        task.exception() if not task.cancelled() else "cancelled",
                    )
                stopping.set()
            stop.cancel()
        finally:
            unlisten()
            unlisten_queues()
            watcher.cancel()
            self.control.changed()  # wakes its loop, which sees ``stopping``
            await asyncio.gather(*flow, return_exceptions=True)
            await self._stop(workers, settings.GRACE_PERIOD if grace is None else grace)

    async def _start(self) -> None:
        await self.heartbeat.start()  # our node exists before we own any job
        await self.control.refresh()  # a paused queue starts nothing, even at start

    async def _stop(self, workers: list[asyncio.Task[None]], grace: float) -> None:
        self._wake_all()  # producers see ``stopping`` and return: no more claims
        # The periodic duties end now, as before any job is waited for.
        await asyncio.gather(*(service.stop() for service in self.services))
        await self._upkeep.close()
        await asyncio.gather(*workers, return_exceptions=True)
        tasks = {t for p in self.producers.values() for t in p.running.values()}
        if tasks:
            logger.info("stopping: waiting up to %gs for %s running jobs", grace, len(tasks))
            _, unfinished = await asyncio.wait(tasks, timeout=grace)
            if unfinished:
                tokens = [token for p in self.producers.values() for token in p.running]
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
                released = await self._claims.run(
                    lambda conn: queries.release(conn, self.node, tokens)
                )
                logger.warning("stopping: gave back %s unfinished jobs", released)
        if not await self.acker.flush(timeout=10.0):
            logger.warning(
                "stopping: some outcomes could not be written; those jobs will be "
                "rescued and run again"
            )
        await self.acker.close()
        await self.heartbeat.stop()  # and forgets our node
        await self._claims.close()
        self.threads.shutdown()
        logger.info("relayworker %s stopped", self.node)
        logger.info("%s", stats.line())


async def _unless_stopped(step: Coroutine[Any, Any, None], stopping: asyncio.Event) -> bool:
    """Run ``step`` to its end, unless ``stopping`` is set first (``step`` is then
    cancelled): whether it ended. Its connections retry until the database answers,
    which a signal must be able to interrupt."""
    task = asyncio.ensure_future(step)
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()  # its exception, if it raised one
    return True


class Reconciler(Periodic):
    """Every ``HEARTBEAT_INTERVAL``: gives back the claims marked ours that we do not hold."""

    name = "reconcile"

    def __init__(self, reconcile: Callable[[], Awaitable[None]]) -> None:
        super().__init__(settings.HEARTBEAT_INTERVAL)
        self._reconcile = reconcile

    async def tick(self) -> None:
        await self._reconcile()

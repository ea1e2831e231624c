"""One producer per queue: claims up to its free slots and starts their jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from django.db.models.base import ModelState

from django_relay import codec, queries
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.engine.acker import Acker
from django_relay.exceptions import DecodeError
from django_relay.models import Job

logger = logging.getLogger("django_relay")


_JSON_COLUMNS = [queries.JOB_COLUMNS.index(name) for name in ("args", "meta", "errors", "deps")]


def build_job(row: tuple) -> Job:
    """A :class:`Job` from a claimed row (columns in ``queries.JOB_COLUMNS`` order).

    Raises:
        DecodeError: a JSON column holds something the codec refuses.
    """
    values = list(row)
    for index in _JSON_COLUMNS:
        values[index] = codec.loads(values[index])
    # What Model.from_db() does, minus the pre_init/post_init dispatch that
    # Model.__init__ sends: at thousands of jobs a second that dispatch shows up.
    job = Job.__new__(Job)
    job.__dict__.update(zip(queries.JOB_COLUMNS, values, strict=True))
    job._state = ModelState()
    job._state.adding = False
    job._state.db = settings.DATABASE_ALIAS
    return job


class Producer:
    """Keeps up to ``limit`` jobs of ``queue`` running."""

    def __init__(
        self, queue: str, limit: int, *, node: str, claim: Callable, acker: Acker, threads: Executor
    ) -> None:
        self.queue = queue
        self.limit = limit
        self.node = node
        self._claim = claim
        self._acker = acker
        self._threads = threads
        self.running: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # The last claim took every free slot, so more jobs may be waiting: a slot
        # that frees up is a reason to claim again. Otherwise the queue was drained
        # and only a NOTIFY (or the poll) brings news.
        self._saturated = False

    def wake(self) -> None:
        """Look for work now (a NOTIFY came, or a slot was freed)."""
        self._wake.set()

    def settled(self) -> None:
        """Acks were written: if we were held back, look for work again."""
        if self._saturated:
            self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and start jobs until ``stopping`` is set."""
        while not stopping.is_set():
            self._wake.clear()
            # Acks in flight count against the slots beyond one batch of them, so
            # claiming never outruns writing outcomes (backpressure on a slow acker).
            backlog = max(len(self._acker.unsettled) - self.limit, 0)
            free = self.limit - len(self.running) - backlog
            if free <= 0:
                self._saturated = True  # woken when a slot frees or acks land
            else:
                rows = await self._claim(self.queue, free)
                for row in rows:
                    self._start(row)
                self._saturated = len(rows) == free
                if self._saturated:
                    continue  # maybe more: claim again as soon as slots free up
            # A NOTIFY, a freed slot, landed acks, or the runner stopping wake us.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.FETCH_INTERVAL)

    def _start(self, row: tuple) -> None:
        job_id, attempt = row[0], row[queries.JOB_COLUMNS.index("attempt")]
        try:
            job = build_job(row)
        except DecodeError as exc:
            # Never run a job we cannot read; discard it, saying why.
            entry = codec.dumps({"attempt": attempt, "kind": "decode", "error": str(exc)})
            self._acker.submit(queries.Ack(job_id, attempt, "discarded", error=entry))
            logger.error("job %s cannot be decoded and was discarded: %s", job_id, exc)
            return
        task = asyncio.create_task(self._execute(job), name=f"relay-job-{job_id}")
        self.running[job_id] = task
        task.add_done_callback(lambda _: self._finished(job_id))

    def _finished(self, job_id: int) -> None:
        del self.running[job_id]
        if self._saturated:
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            klass, ack = await executor.execute(job, self._threads)
        except Exception:  # a bug of ours: never kill the runner
            logger.exception("job %s: unexpected error in the runner", job.id)
            return

        # The slot frees now; the outcome is reported once the ack is written.
        def reported(acked: asyncio.Future[bool]) -> None:
            if acked.cancelled():
                return
            sending = executor.report(klass, job, ack, started, acked.result())
            if sending is not None:
                asyncio.ensure_future(sending).add_done_callback(_log_receiver_failure)

        self._acker.submit(ack).add_done_callback(reported)


def _log_receiver_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a job signal receiver failed", exc_info=task.exception())

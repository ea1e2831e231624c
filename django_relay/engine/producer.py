"""One producer per queue: claims up to its free slots and starts their jobs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from django.db.models.base import ModelState

from django_relay import codec, queries, signals, stats
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.engine.acker import Acker
from django_relay.engine.threads import JobThreads
from django_relay.exceptions import DecodeError
from django_relay.models import Job, JobState
from django_relay.registry import default_backoff

logger = logging.getLogger("django_relay")


_JSON_COLUMNS = [queries.JOB_COLUMNS.index(name) for name in ("args", "meta", "errors", "deps")]
_ATTEMPT = queries.JOB_COLUMNS.index("attempt")
_TOKEN = queries.JOB_COLUMNS.index("claim_token")


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
        self,
        queue: str,
        limit: int,
        *,
        node: str,
        claim: Callable,
        acker: Acker,
        threads: JobThreads,
        pass_on: Callable[[str, int, int], bool] = lambda queue, count, hops: False,
    ) -> None:
        self.queue = queue
        self.limit = limit
        self.node = node
        self._claim = claim
        self._acker = acker
        self._threads = threads
        self._pass_on = pass_on
        #: Running attempts by claim token (a job may run twice here only if it was
        #: rescued from us and claimed again while its stale attempt runs on).
        self.running: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # The last claim took every free slot, so more jobs may be waiting: a slot
        # that frees up is a reason to claim again. Otherwise the queue was drained
        # and only a NOTIFY (or the poll) brings news.
        self._saturated = False
        # What the next claim takes: every free slot (at start, on the backup poll, when
        # a full claim's slots free up, after a reconnect), or only the jobs notified for
        # this runner's turns (``_budget``, from notifications ``_hops`` hops old at least).
        self._claim_all = True
        self._budget = 0
        self._hops = 0
        # The next claim is the backup poll's (FETCH_INTERVAL passed with no wake-up):
        # counted apart, since a poll of a drained queue comes back empty by design.
        self._polled = False
        # Run-time settings from the queue's row (see engine.control): a paused
        # producer claims nothing; with limits it claims through the limited claim.
        self.paused = False
        self.limits: queries.QueueLimits | None = None

    def apply(self, paused: bool, limit: int, limits: queries.QueueLimits | None) -> None:
        """Take new run-time settings; they count from the next claim."""
        self.paused, self.limit, self.limits = paused, limit, limits
        self.wake()

    def wake(self, count: int | None = None, hops: int = 0) -> None:
        """Look for work now: ``count`` jobs notified for our turn, or None for all we can take."""
        if count is None:
            self._claim_all = True
        else:
            self._hops = hops if self._budget == 0 else min(self._hops, hops)
            self._budget += count
        self._wake.set()

    def settled(self) -> None:
        """Acks were written: if we were held back, look for work again."""
        if self._saturated:
            self.wake()

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and start jobs until ``stopping`` is set."""
        while not stopping.is_set():
            self._wake.clear()
            # Acks in flight count against the slots beyond one batch of them, so
            # claiming never outruns writing outcomes (backpressure on a slow acker).
            backlog = max(len(self._acker.unsettled) - self.limit, 0)
            free = self.limit - len(self.running) - backlog
            budget, hops, claim_all, polled = (
                self._budget,
                self._hops,
                self._claim_all,
                self._polled,
            )
            want = free if claim_all else min(free, budget)
            self._claim_all, self._budget, self._polled = False, 0, False
            if self.paused:
                self._saturated = False  # running jobs finish; resuming wakes us
                self._hand_on(budget, hops)
            elif free <= 0:
                self._saturated = True  # woken when a slot frees or acks land
                self._hand_on(budget, hops)
            elif want > 0:
                rows = await self._claim(self.queue, want, self.limits)
                stats.count_claim(len(rows), poll=polled)
                for row in rows:
                    self._start(row)
                # Every free slot filled, and more may be waiting: all we could see, or
                # our turns' jobs beyond our slots (the next runner is handed those).
                rest = budget - len(rows)
                self._saturated = len(rows) == free and (claim_all or rest > 0)
                if self._saturated and rest > 0 and self._hand_on(rest, hops):
                    self._saturated = False
                if self._saturated:
                    self._claim_all = True
                    continue  # maybe more: claim again as soon as slots free up
                if self.limits is not None:
                    # Maybe held back by a limit: one of our jobs finishing frees
                    # capacity, so look again then (other runners' finishes: the poll).
                    self._saturated = True
            # A NOTIFY, a freed slot, landed acks, or the runner stopping wake us.
            try:
                await asyncio.wait_for(self._wake.wait(), settings.FETCH_INTERVAL)
            except TimeoutError:
                self._claim_all = self._polled = True  # the backup poll

    def _hand_on(self, count: int, hops: int) -> bool:
        return count > 0 and self._pass_on(self.queue, count, hops)

    def _start(self, row: tuple) -> None:
        job_id, attempt = row[0], row[_ATTEMPT]
        token = row[_TOKEN]
        try:
            job = build_job(row)
        except Exception as exc:  # DecodeError, and whatever a hostile row may raise
            # Never run a job we cannot read; discard it, saying why.
            why = str(exc) if isinstance(exc, DecodeError) else executor.describe(exc)
            error = executor.error_entry(attempt, "decode", why)
            ack = queries.Ack(job_id, attempt, JobState.DISCARDED, error=error, token=token)
            logger.error(
                "job %s cannot be decoded and is discarded: %s", job_id, executor.storable(why)
            )
            self._acker.submit(ack, written=lambda ours: _announce_discarded(ours, job_id))
            return
        task = asyncio.create_task(self._execute(job), name=f"relay-job-{job_id}")
        self.running[token] = task
        task.add_done_callback(lambda _: self._finished(token))

    def _finished(self, token: int) -> None:
        del self.running[token]
        if self._saturated:
            self.wake()

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            finished = await executor.execute(job, self._threads)
        except Exception as exc:  # a bug of ours: never kill the runner, still end the attempt
            logger.exception("job %s: unexpected error in the runner", job.id)
            ack = executor.decide(
                job,
                exc,
                backoff=lambda: default_backoff(job.attempt),
                max_result_bytes=settings.MAX_RESULT_BYTES,
            )
            finished = executor.Finished(None, ack, lambda _: ack)

        # The slot frees now; the outcome is reported once the ack is written (not
        # when nothing could be: the acker said so).
        def reported(ack: queries.Ack | None) -> None:
            sending = executor.report(
                finished.klass, job, ack or finished.ack, started, ack is not None
            )
            if sending is not None:
                executor.soon(sending)

        self._acker.submit(finished.ack, finished.refused, reported)


def _announce_discarded(written: queries.Ack | None, job_id: int) -> None:
    if written is not None:
        executor.soon(executor.announce(signals.job_discarded, [job_id]))

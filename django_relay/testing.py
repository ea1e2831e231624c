"""Helpers for testing code that enqueues jobs, in your own test suite.

``drain()`` runs the jobs enqueued so far in the calling process, on Django's
connection: inside a test's transaction it sees the test's uncommitted jobs, so
it works with pytest-django's plain ``db`` fixture and ``TestCase`` alike.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import DatabaseError, connections, transaction

from django_relay import queries
from django_relay.conf import settings
from django_relay.engine import executor
from django_relay.engine.producer import build_job
from django_relay.models import Job, JobQuerySet

_NODE = f"drain:{os.getpid()}"


def drain(
    queue: str | None = None,
    *,
    with_scheduled: bool = False,
    with_safety: bool = True,
    max_rounds: int = 100,
) -> dict[str, int]:
    """Run available jobs now, in this process, until none are left.

    Jobs enqueued by the jobs being drained run too. The runner's code paths
    decide each outcome and persist it, so retries, snoozes and errors land on
    the rows exactly as a ``relayworker`` would leave them.

    Args:
        queue: Only this queue (default: every queue).
        with_scheduled: Also run scheduled and retryable jobs, however far off.
        with_safety: When False, an exception raised by ``process`` propagates
            into the test instead of being recorded on the job.
        max_rounds: Stop after this many claim rounds (a job that keeps snoozing
            with ``with_scheduled`` would otherwise run forever).

    Returns:
        How many attempts ended in each state, e.g. ``{"completed": 2}``.
    """
    outcomes: Counter[str] = Counter()
    cursor = connections[settings.DATABASE_ALIAS].cursor()
    with cursor:
        for _ in range(max_rounds):
            names = queries.stage_for_drain(cursor, queue, with_scheduled)
            if not names:
                break
            for name in names:
                for row in queries.claim_on(cursor, name, 1000, _NODE):
                    state = async_to_sync(_run_one)(build_job(row), cursor, with_safety)
                    outcomes[state] += 1
    return dict(outcomes)


async def _run_one(job: Job, cursor: Any, with_safety: bool) -> str:
    started = time.perf_counter()
    klass, ack, refused = await executor.execute(job, None)
    if not with_safety and ack.state in ("retryable", "discarded"):
        _reraise(job, ack)
    ack = await sync_to_async(_persist)(cursor, ack, refused)
    sending = executor.report(klass, job, ack, started, acked=True)
    if sending is not None:
        await sending
    return ack.state


def _persist(cursor: Any, ack: queries.Ack, refused: Any) -> queries.Ack:
    """Write ``ack`` as the runner would: one PostgreSQL refuses is replaced."""
    try:
        with transaction.atomic(using=settings.DATABASE_ALIAS):  # a savepoint in a test
            queries.ack_on(cursor, _NODE, [ack])
    except (DatabaseError, ValueError) as exc:
        ack = refused(executor.describe(exc))
        queries.ack_on(cursor, _NODE, [ack])
    return ack


def _reraise(job: Job, ack: queries.Ack) -> None:
    from django_relay import codec

    error = codec.loads(ack.error) if ack.error else {}
    raise AssertionError(
        f"job {job.id} ({job.worker}) failed: {error.get('error')}\n{error.get('traceback', '')}"
    )


def _worker_path(worker: type | str) -> str:
    return worker if isinstance(worker, str) else worker.__relay_worker__  # type: ignore[attr-defined]


def enqueued_jobs(
    worker: type | str | None = None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    state: str | None = None,
) -> JobQuerySet:
    """Jobs not yet finished, filtered by worker, queue, state and args.

    ``args`` matches when the job's args contain those items (a subset match).
    """
    jobs = Job.objects.unfinished()
    if worker is not None:
        jobs = jobs.filter(worker=_worker_path(worker))
    if queue is not None:
        jobs = jobs.filter(queue=queue)
    if state is not None:
        jobs = jobs.filter(state=state)
    if args:
        jobs = jobs.filter(args__contains=dict(args))
    return jobs.order_by("id")


def assert_enqueued(
    worker: type | str | None = None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    count: int | None = None,
) -> list[Job]:
    """Assert that matching jobs are enqueued (exactly ``count`` of them, if given)."""
    jobs = list(enqueued_jobs(worker, args=args, queue=queue))
    if (count is None and not jobs) or (count is not None and len(jobs) != count):
        wanted = f"{count} job(s)" if count is not None else "a job"
        raise AssertionError(
            f"expected {wanted} for worker={worker!r} args={args!r} queue={queue!r}; found "
            f"{len(jobs)}. Enqueued: {[(j.worker, j.args) for j in enqueued_jobs()]}"
        )
    return jobs


def refute_enqueued(
    worker: type | str | None = None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
) -> None:
    """Assert that no matching job is enqueued."""
    jobs = list(enqueued_jobs(worker, args=args, queue=queue))
    if jobs:
        raise AssertionError(
            f"expected no job for worker={worker!r} args={args!r}; found "
            f"{[(j.id, j.args) for j in jobs]}"
        )

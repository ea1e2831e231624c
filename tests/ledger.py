"""The execution ledger: the battery's ground truth, written by the jobs themselves.

Every execution of a ledger worker gets a fresh token and writes, on a psycopg
connection of its own (autocommit, never Django's), one ``start`` row when it
begins and one ``success`` row when ``process`` is about to return; the token is
part of the job's result. Nothing in django_relay writes here, so the ledger
says what really ran, whatever the job table says.

:func:`audit` compares the ledger with the job table after a case has gone
quiet. A job may *start* more than once (at-least-once: a killed or stopped
runner's attempt is run again), and an execution may even reach its ``success``
row and then lose its ack with its process (a *rerun*, also allowed); but the
outcome a completed job keeps must be the success of the attempt that owned the
row when it finished (``dup_successes`` counts those that are not: a stale ack
that landed, or one attempt run twice), and attempts never exceed ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from django_relay import await_signal, worker
from django_relay.models import Job

TERMINAL = {"completed", "discarded", "cancelled"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS battery_ledger (
    token uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('start', 'success')),
    job_id bigint NOT NULL,
    attempt int NOT NULL,
    node text,
    pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (token, kind)
);
CREATE INDEX IF NOT EXISTS battery_ledger_job ON battery_ledger (job_id);
"""

#: How long a ledger write keeps retrying through a database outage.
WRITE_PATIENCE = 60.0


def conninfo_of(settings_dict: dict[str, Any], **params: Any) -> str:
    """A libpq conninfo string for a Django ``DATABASES`` entry."""
    options = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if isinstance(v, str)}
    options.update(params)
    return psycopg.conninfo.make_conninfo(
        host=settings_dict.get("HOST") or "127.0.0.1",
        port=settings_dict.get("PORT") or 5432,
        user=settings_dict.get("USER") or "postgres",
        password=settings_dict.get("PASSWORD") or None,
        dbname=settings_dict["NAME"],
        **options,
    )


def install(conninfo: str) -> None:
    """Create the ledger table (if needed) and empty it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("TRUNCATE battery_ledger")


# -- writing, inside jobs -------------------------------------------------------

_INSERT = """
INSERT INTO battery_ledger (token, kind, job_id, attempt, node, pid)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""


def _ledger_conninfo() -> str:
    from django.db import connections

    return conninfo_of(
        connections["default"].settings_dict, application_name="relay-ledger", connect_timeout=5
    )


_sync_local = threading.local()
#: Per event loop (a runner has one): a few connections, so ledger writes of many
#: concurrent jobs do not queue behind one another.
_async_pools: dict[int, asyncio.Queue[psycopg.AsyncConnection | None]] = {}
ASYNC_POOL_SIZE = 4


def _write_sync(row: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + WRITE_PATIENCE
    while True:
        try:
            conn = getattr(_sync_local, "conn", None)
            if conn is None or conn.closed:
                conn = _sync_local.conn = psycopg.connect(_ledger_conninfo(), autocommit=True)
            conn.execute(_INSERT, row)
            return
        except psycopg.OperationalError:
            # The database restarted or our connection was ended: the row is keyed by
            # its token, so writing it again after a lost reply is harmless.
            _sync_local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _write_async(row: tuple[Any, ...]) -> None:
    loop_id = id(asyncio.get_running_loop())
    pool = _async_pools.get(loop_id)
    if pool is None:
        pool = _async_pools[loop_id] = asyncio.Queue()
        for _ in range(ASYNC_POOL_SIZE):
            pool.put_nowait(None)  # a slot, connected on first use
    deadline = time.monotonic() + WRITE_PATIENCE
    while True:
        conn = await pool.get()
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(_ledger_conninfo(), autocommit=True)
            await conn.execute(_INSERT, row)
            return
        except psycopg.OperationalError:
            conn = None  # see _write_sync()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            pool.put_nowait(conn)


@dataclass
class Execution:
    """One run of ``process``: its token, and the ledger rows it writes."""

    job: Any
    token: str = field(default_factory=lambda: str(uuid.uuid4()))

    def row(self, kind: str) -> tuple[Any, ...]:
        return (self.token, kind, self.job.id, self.job.attempt, self.job.attempted_by, os.getpid())

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"job": self.job.id, "token": self.token, "attempt": self.job.attempt,
                "pid": os.getpid(), **extra}  # fmt: skip


# -- the workers ------------------------------------------------------------------


def _backoff(self: Any, job: Any) -> float:
    return 0.1


@worker(queue="default", max_attempts=25)
class LedgerWorker:
    """Records its start, works ``pause`` seconds, records its success, returns the token."""

    backoff = _backoff

    async def process(self, job: Any) -> Any:
        run = Execution(job)
        await _write_async(run.row("start"))
        if job.args.get("pause"):
            await asyncio.sleep(job.args["pause"])
        await _write_async(run.row("success"))
        return run.result(value=job.args.get("value"))


@worker(queue="default", max_attempts=25)
class SyncLedgerWorker:
    """:class:`LedgerWorker` with a plain ``def process`` (runs in the runner's threads)."""

    backoff = _backoff

    def process(self, job: Any) -> Any:
        run = Execution(job)
        _write_sync(run.row("start"))
        if job.args.get("pause"):
            time.sleep(job.args["pause"])
        _write_sync(run.row("success"))
        return run.result(value=job.args.get("value"))


@worker(queue="default", max_attempts=25)
class AsyncOrmLedgerWorker:
    """Reads its own row through Django's async ORM (asgiref's shared thread)."""

    backoff = _backoff

    async def process(self, job: Any) -> Any:
        run = Execution(job)
        await _write_async(run.row("start"))
        row = await Job.objects.aget(pk=job.id)
        await _write_async(run.row("success"))
        return run.result(state=row.state, value=job.args.get("value"))


@worker(queue="default", max_attempts=25)
class SignalLedgerWorker:
    """Waits for one signal (``live`` seconds in place, then snoozing); returns its payload."""

    backoff = _backoff

    async def process(self, job: Any) -> Any:
        run = Execution(job)
        await _write_async(run.row("start"))
        payload = await await_signal(wait_for=None, wait_timeout=job.args.get("live", 1.0))
        await _write_async(run.row("success"))
        return run.result(payload=payload, value=job.args.get("value"))


@worker(queue="default", max_attempts=3)
class PoisonWorker:
    """Records its start, then kills its own runner process with SIGKILL."""

    def process(self, job: Any) -> Any:
        _write_sync(Execution(job).row("start"))
        os.kill(os.getpid(), signal.SIGKILL)


# -- auditing, from the test ------------------------------------------------------


@dataclass
class Audit:
    """Figures of one case, from the job table and the ledger."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    dup_starts: int = 0
    max_starts: int = 0
    reruns: int = 0
    dup_successes: int = 0
    over_attempts: int = 0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "states": self.states,
            "lost": self.lost,
            "dup_starts": self.dup_starts,
            "max_starts": self.max_starts,
            "reruns_after_success": self.reruns,
            "dup_successes": self.dup_successes,
            "over_max_attempts": self.over_attempts,
            **({"problems": self.problems[:3]} if self.problems else {}),
        }


def non_terminal(conninfo: str) -> int:
    """How many jobs are not finished."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM django_relay_job WHERE state <> ALL(%s)", [sorted(TERMINAL)]
        ).fetchone()
    return int(row[0]) if row else 0


def audit(
    conninfo: str,
    *,
    expect: str = "completed",
    exceptions: dict[int, str] | None = None,
    snoozes: bool = False,
) -> Audit:
    """Check every job of the database against the ledger (call it once quiet).

    Args:
        expect: the state every job should have ended in; one in another state is lost.
        exceptions: job id -> the state that job should end in instead.
        snoozes: jobs gave attempts back (snoozes, signal waits): bound the attempt
            numbers recorded by their starts rather than the number of starts.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        jobs = conn.execute(
            "SELECT id, state, attempt, max_attempts, attempted_by, result ->> 'token' "
            "FROM django_relay_job ORDER BY id"
        ).fetchall()
        entries = conn.execute(
            "SELECT job_id, kind, token::text, attempt, node FROM battery_ledger"
        ).fetchall()
    starts: dict[int, list[int]] = defaultdict(list)
    successes: dict[int, list[tuple[str, int, str | None]]] = defaultdict(list)
    for job_id, kind, token, attempt, node in entries:
        if kind == "start":
            starts[job_id].append(attempt)
        else:
            successes[job_id].append((token, attempt, node))
    report = Audit(jobs=len(jobs), states=dict(Counter(row[1] for row in jobs)))
    for job_id, state, attempt, max_attempts, node, token in jobs:
        if state != (exceptions or {}).get(job_id, expect):
            report.lost += 1
            if len(report.problems) < 20:
                report.problems.append(f"job {job_id} ended {state} (attempt {attempt})")
        count = len(starts[job_id])
        report.max_starts = max(report.max_starts, count)
        report.dup_starts += count > 1
        spent = max(starts[job_id], default=0) if snoozes else count
        if spent > max_attempts:
            report.over_attempts += 1
            report.problems.append(f"job {job_id}: {count} starts, max_attempts {max_attempts}")
        if state != "completed":
            continue
        mine = [s for s in successes[job_id] if s[1] == attempt and s[2] == node]
        kept = [s for s in successes[job_id] if s[0] == token]
        report.reruns += len(successes[job_id]) - len(kept)
        if len(mine) != 1 or len(kept) != 1 or kept != mine:
            report.dup_successes += 1
            report.problems.append(
                f"job {job_id}: kept result {token} of attempt {attempt} on {node}, "
                f"but the ledger's successes are {successes[job_id]}"
            )
    return report

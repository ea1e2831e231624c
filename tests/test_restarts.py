"""Runners and relays across a database restart, on a throwaway server (never the shared one)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from django_relay import queries
from tests.conftest import RunnerProcess, wait_for
from tests.pgserver import Server, pg_server  # noqa: F401  (a fixture)

TERMINAL = ("completed", "discarded", "cancelled")


def enqueue(server: Server, worker: str, count: int, *, max_attempts: int = 3) -> list[int]:
    row = queries.NewJob(
        worker=worker,
        queue="default",
        args="{}",
        meta="{}",
        max_attempts=max_attempts,
        priority=0,
        scheduled_at=None,
    )
    with psycopg.connect(server.dsn(), autocommit=True) as conn, conn.cursor() as cursor:
        return [saved[0] for saved in queries.insert_jobs(cursor, [row] * count)]


def finished(server: Server, job_ids: list[int], timeout: float = 60.0) -> list[tuple]:
    """``(state, attempt, errors)`` of each job, once every one is terminal."""

    def read() -> list[tuple] | None:
        try:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT id, state, attempt, errors::text FROM django_relay_job "
                    "WHERE id = ANY(%s) ORDER BY id",
                    [job_ids],
                ).fetchall()
        except psycopg.OperationalError:
            return None  # the server is still coming back
        if len(rows) == len(job_ids) and all(row[1] in TERMINAL for row in rows):
            return [(state, attempt, json.loads(errors)) for _, state, attempt, errors in rows]
        return None

    return wait_for(read, timeout, interval=0.1, message=f"jobs {job_ids} to finish")


@pytest.fixture
def runner(pg_server: Server) -> Iterator[RunnerProcess]:  # noqa: F811
    process = pg_server.runner()
    yield process
    process.stop()
    print(f"--- relayworker {process.proc.pid} ---\n{process.output}")


def test_async_jobs_reach_the_orm_again_after_a_database_restart(pg_server, runner):  # noqa: F811
    # The first job opens the Django connection of asgiref's shared thread.
    [(state, _, _)] = finished(pg_server, enqueue(pg_server, "tests.workers.AsyncOrmWorker", 1))
    assert state == "completed"
    pg_server.restart()
    job_ids = enqueue_when_up(pg_server, "tests.workers.AsyncOrmWorker", 5)
    outcomes = finished(pg_server, job_ids)
    assert [state for state, _, _ in outcomes] == ["completed"] * 5, outcomes


def enqueue_when_up(server: Server, worker: str, count: int) -> list[int]:
    def attempt() -> list[int] | None:
        try:
            return enqueue(server, worker, count)
        except psycopg.OperationalError:
            return None

    return wait_for(attempt, 30, interval=0.1, message="the restarted server to accept jobs")

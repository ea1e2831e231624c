"""Runners and relays across a database restart, on a throwaway server (never the shared one)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from django_relay import queries
from tests.conftest import REPO_ROOT, RunnerProcess, wait_for
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


def test_sync_jobs_reach_the_orm_again_after_a_database_restart(pg_server):  # noqa: F811
    # Persistent connections, one job thread: the thread's connection outlives its
    # jobs, dies with the server, and is closed after the job that finds it broken.
    env = {**pg_server.env(), "RELAY_TEST_CONN_MAX_AGE": "none"}
    runner = RunnerProcess(["--queues", "default=1"], env)
    try:
        runner.wait_for_line("ready", timeout=60)
        worker = "tests.workers.SyncOrmRetryingWorker"
        [(state, _, _)] = finished(pg_server, enqueue(pg_server, worker, 1))
        assert state == "completed"
        pg_server.restart()
        job_ids = enqueue_when_up(pg_server, worker, 5)
        outcomes = finished(pg_server, job_ids)
        assert [state for state, _, _ in outcomes] == ["completed"] * 5, outcomes
    finally:
        runner.stop()
        print(f"--- relayworker {runner.proc.pid} ---\n{runner.output}")


def enqueue_when_up(server: Server, worker: str, count: int) -> list[int]:
    def attempt() -> list[int] | None:
        try:
            return enqueue(server, worker, count)
        except psycopg.OperationalError:
            return None

    return wait_for(attempt, 30, interval=0.1, message="the restarted server to accept jobs")


# -- deadlines: a server that stops answering ------------------------------------------


def test_a_listener_whose_server_stops_answering_reconnects(pg_server):  # noqa: F811
    from django.test import override_settings

    from django_relay.listener.notifier import Notifier

    notifier = Notifier()
    fast = {"LISTENER_PING_INTERVAL": 0.2, "LISTENER_PING_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 2}
    with override_settings(RELAY={"LISTEN_DSN": pg_server.dsn(), **fast}):
        notifier.start()
        try:
            wait_for(notifier.connected.is_set, 20, message="the listener to connect")
            epoch = notifier.epoch
            pg_server.pause()  # the socket stays open; nothing answers on it
            try:
                wait_for(
                    lambda: not notifier.connected.is_set(),
                    30,
                    message="the listener to notice its server stopped answering",
                )
            finally:
                pg_server.resume()
            wait_for(
                lambda: notifier.connected.is_set() and notifier.epoch > epoch,
                30,
                message="the listener to reconnect",
            )
        finally:
            notifier.stop()


RELAY_WHILE_PAUSED = """
import asyncio, json, sys
import django
django.setup()
from django_relay import RelayTimeout
from tests.workers import EchoWorker

async def relay(value):
    try:
        await EchoWorker.relay({"value": value}, queue="nobody", timeout=2)
    except RelayTimeout as exc:
        print(json.dumps({"job_id": exc.job_id}), flush=True)

async def main():
    await relay(0)  # the listener and the insert connection are up
    sys.stdin.readline()  # the server was paused meanwhile
    await relay(1)

asyncio.run(main())
"""


def test_a_relay_whose_insert_cannot_complete_raises_within_its_timeout(pg_server):  # noqa: F811
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY_WHILE_PAUSED],
        cwd=REPO_ROOT,
        env=pg_server.env(STATEMENT_TIMEOUT=1.0),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = json.loads(proc.stdout.readline() or "null")
        assert isinstance(first and first["job_id"], int), first  # enqueued, not finished
        pg_server.pause()
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=60)  # a deadline for the test, not a figure
        finally:
            pg_server.resume()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # Not confirmed in time: RelayTimeout without a job id.
    assert json.loads(out.strip().splitlines()[-1]) == {"job_id": None}


RELAYS_ACROSS_A_RESTART = """
import asyncio, json, sys
import django
django.setup()
from tests.workers import RecordWorker

async def wave(values):
    return await asyncio.gather(*(
        RecordWorker.relay({"log": sys.argv[1], "value": v}, timeout=60) for v in values
    ))

async def main():
    await wave(range(5))  # every connection of this process is open, then idle
    print("ready", flush=True)
    sys.stdin.readline()  # the server was restarted meanwhile
    results = await wave(range(5, 55))
    print(json.dumps([r["value"] for r in results]), flush=True)

asyncio.run(main())
"""


def test_relays_after_a_database_restart_return_their_results(pg_server, runner, tmp_path):  # noqa: F811
    log = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAYS_ACROSS_A_RESTART, str(log)],
        cwd=REPO_ROOT,
        env=pg_server.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        pg_server.restart()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)  # a deadline for the test, not a figure
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == list(range(5, 55))
    # Each relay inserted its job once.
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        [(jobs, values)] = conn.execute(
            "SELECT count(*), count(DISTINCT args->'value') FROM django_relay_job "
            "WHERE worker = 'tests.workers.RecordWorker' AND args->>'log' = %s",
            [str(log)],
        ).fetchall()
    assert jobs == values == 55

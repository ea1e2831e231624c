"""Behind a real PgBouncer in transaction mode: relays and jobs work, a LISTEN that cannot
receive is refused by name (``django_relay.E012``), and the listener says so loudly.

Each test starts a throwaway PgBouncer (``tests/pgbouncer.py``) with a pool of 4 server
connections in front of the suite's server, and runs real processes through it: a
``relayworker``, a relaying client, ``manage.py check``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.db import connection

from django_relay import enqueue_many
from django_relay.models import Job
from tests import pgbouncer
from tests.conftest import REPO_ROOT, RunnerProcess, subprocess_env, wait_for
from tests.test_notifier import listener_error
from tests.workers import EchoWorker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bool(pgbouncer.unavailable()), reason=pgbouncer.unavailable() or ""),
]

RELAYS = 300
JOBS = 1000

CLIENT = """
import asyncio, collections, json, sys
import django
django.setup()
from tests.workers import EchoWorker

async def main(count, rounds=3):
    # In rounds, so each statement of the relay connections runs often enough to be
    # prepared (psycopg prepares from its 5th run when prepare_threshold allows it).
    errors = collections.Counter()
    async def one(i):
        try:
            result = await EchoWorker.relay({"value": i}, timeout=60)
        except Exception as exc:
            errors[f"{type(exc).__name__}: {str(exc)[:200]}"] += 1
        else:
            if result != i:
                errors[f"wrong result {result!r} for {i}"] += 1
    for r in range(rounds):
        await asyncio.gather(*(one(i) for i in range(r, count, rounds)))
    print(json.dumps({"failed": sum(errors.values()), "errors": dict(errors)}), flush=True)

asyncio.run(main(int(sys.argv[1])))
"""


@pytest.fixture
def bouncer() -> Iterator[pgbouncer.PgBouncer]:
    db = connection.settings_dict
    proxy = pgbouncer.PgBouncer(
        db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432), db["USER"] or "postgres", pool_size=4
    )
    with proxy:
        yield proxy


def direct_dsn(application_name: str = "relay-listen-direct") -> str:
    """A libpq DSN straight to the suite's server (what RELAY["LISTEN_DSN"] should be)."""
    db = connection.settings_dict
    return (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} "
        f"dbname={db['NAME']} application_name={application_name}"
    )


def pooled_env(bouncer: pgbouncer.PgBouncer, **relay_settings: object) -> dict[str, str]:
    """A subprocess's environment whose DATABASES (OPTIONS untouched) go through PgBouncer."""
    env = subprocess_env(**relay_settings)
    env["DATABASE_URL"] = bouncer.url(connection.settings_dict["NAME"])
    return env


def test_relays_and_jobs_through_pgbouncer_all_succeed(bouncer):
    env = pooled_env(bouncer, LISTEN_DSN=direct_dsn())
    runner = RunnerProcess(["--queues", "default=20", "--log-level", "WARNING"], env)
    try:
        runner.wait_for_line("ready")
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, str(RELAYS)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert client.returncode == 0, client.stderr[-3000:]
        report = json.loads(client.stdout.strip().splitlines()[-1])
        assert report == {"failed": 0, "errors": {}}, client.stderr[-3000:]
        # Plain jobs too: the runner claims, acks and heartbeats through the pool.
        jobs = enqueue_many([EchoWorker.new({"value": i}) for i in range(JOBS)])
        ids = [job.pk for job in jobs]
        wait_for(
            lambda: Job.objects.filter(pk__in=ids, state="completed").count() == JOBS,
            timeout=120,
            message=f"{JOBS} jobs completed through PgBouncer",
        )
        assert not Job.objects.filter(pk__in=ids).exclude(state="completed").exists()
        # The pool was shared: PgBouncer held at most its 4 server connections.
        servers = [s for s in bouncer.show("servers") if s["database"] != "pgbouncer"]
        assert 0 < len(servers) <= 4
    finally:
        runner.stop()
    assert "Traceback" not in runner.output, runner.output[-3000:]


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_e012_names_the_setting_when_listen_goes_through_pgbouncer(bouncer):
    done = manage(pooled_env(bouncer), "check", "--database", "default")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "django_relay.E012" in done.stderr
    assert "RELAY['LISTEN_DSN'] is not set" in done.stderr
    assert "Set RELAY['LISTEN_DSN'] to a direct connection" in done.stderr


def test_e012_passes_with_a_direct_listen_dsn(bouncer):
    done = manage(pooled_env(bouncer, LISTEN_DSN=direct_dsn()), "check", "--database", "default")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "E012" not in done.stdout + done.stderr


def test_e012_is_not_run_without_a_database_named(bouncer):
    # A database check: plain ``check`` (and every command's checks) stay offline.
    done = manage(pooled_env(bouncer), "check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_relayworker_refuses_to_start_when_listen_goes_through_pgbouncer(bouncer):
    runner = RunnerProcess(["--queues", "default=2"], pooled_env(bouncer))
    try:
        runner.proc.wait(60)
    finally:
        runner.stop()
    assert runner.proc.returncode == 1, runner.output
    assert "django_relay.E012" in runner.output
    assert "Set RELAY['LISTEN_DSN'] to a direct connection" in runner.output
    assert "ready" not in runner.output


def test_relayworker_skip_checks_starts_anyway_and_polls(bouncer):
    # A deliberate polling-only set-up: the probe is skipped, the listener says so at ERROR.
    runner = RunnerProcess(["--queues", "default=2", "--skip-checks"], pooled_env(bouncer))
    try:
        runner.wait_for_line("ready")
        job = EchoWorker.enqueue({"value": 7})
        wait_for(lambda: Job.objects.get(pk=job.pk).state == "completed", 30)
        runner.wait_for_line("Set RELAY['LISTEN_DSN'] to a direct connection", timeout=30)
    finally:
        runner.stop()


def test_a_listener_behind_pgbouncer_logs_an_error_naming_the_setting(bouncer, caplog):
    # A web process whose LISTEN goes through the pooler: it keeps serving (by polling)
    # and says so at ERROR, once.
    record, notifier = listener_error(caplog, bouncer.conninfo(connection.settings_dict["NAME"]))
    assert not notifier.probe_ok.is_set()
    assert "Set RELAY['LISTEN_DSN'] to a direct connection" in record.getMessage()
    assert "polling" in record.getMessage()

"""End to end: relay() and friends, with results delivered from real relayworker processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction
from example_app.workers import CalculatorWorker, FlakyWorker

from django_relay import (
    RelayCancelled,
    RelayDiscard,
    RelayError,
    RelayTimeout,
    ResultTooLarge,
    await_many,
    await_result,
    pg,
    queries,
)
from django_relay.listener.notifier import get_notifier
from django_relay.listener.waiters import get_registry as _registry
from django_relay.models import Job
from tests.conftest import REPO_ROOT, await_for
from tests.workers import (
    CancelWorker,
    EchoWorker,
    GateWorker,
    PayloadWorker,
    SnoozeWorker,
    TimeoutWorker,
    read_records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@sync_to_async
def get_job(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def run_sql(statement: str, params: Any = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


sql = sync_to_async(run_sql)


async def wait_for_state(job_id: int, *states: str, timeout: float = 15.0) -> Job:
    async def reached() -> Job | None:
        job = await get_job(job_id)
        return job if job.state in states else None

    return await await_for(reached, timeout, message=f"job {job_id} to be {' or '.join(states)}")


async def no_waiters_left() -> None:
    await await_for(lambda: _registry().waiters == {}, message="the registry to have no waiters")


async def settled(job_id: int) -> str | None:
    """The job's state, read after every statement the relay link had been asked to run.

    The link serializes its statements in order, so this also waits for a pending
    ``cancel_on_timeout`` update to land.
    """
    registry = _registry()
    future = registry.notifier.submit(
        registry.link.run(partial(queries.fetch_outcomes, job_ids=[job_id]))
    )
    rows = await asyncio.wrap_future(future)
    return rows[0][1] if rows else None


@pytest.fixture
def start_runner(start_runner: Any) -> Iterator[Any]:
    """conftest's ``start_runner``, printing the runners' output (shown when a test fails)."""
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        runner = start_runner(*args, **kwargs)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        print(f"--- relayworker {runner.proc.pid} ---\n{runner.output}")


@pytest.fixture
def gate(start_runner: Any, tmp_path: Path) -> Iterator[Path]:
    """A gate file for GateWorker jobs; opened at teardown, before the runners stop."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def subprocess_env() -> dict[str, str]:
    """The environment ``start_runner`` gives its runners, for other helper processes."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELAY_TEST_DB_NAME": connection.settings_dict["NAME"],
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), str(REPO_ROOT / "example_project"), os.environ.get("PYTHONPATH", "")]
        ),
    }


# -- results and outcomes -------------------------------------------------------


async def test_relay_returns_the_result(start_runner):
    start_runner()
    assert await CalculatorWorker.relay({"a": 10, "b": 32}, timeout=10) == {"result": 42}
    results = await asyncio.gather(
        CalculatorWorker.relay({"a": 1, "b": 2}, timeout=10),
        CalculatorWorker.relay({"a": 3, "b": 4}, timeout=10),
        EchoWorker.relay({"value": None}, timeout=10),
    )
    assert results == [{"result": 3}, {"result": 7}, None]
    await no_waiters_left()


def test_relay_sync_returns_the_result(start_runner):
    start_runner()
    assert CalculatorWorker.relay_sync({"a": 10, "b": 32}, timeout=10) == {"result": 42}
    with pytest.raises(RelayCancelled) as info:
        CancelWorker.relay_sync({"reason": "sync says no"}, timeout=10)
    assert info.value.reason == "sync says no"


async def test_await_result_of_a_job_that_already_finished_returns_at_once(start_runner):
    start_runner()
    job = await EchoWorker.aenqueue({"value": "early"})
    await wait_for_state(job.id, "completed")
    # A poll_interval longer than the timeout, and no NOTIFY to come: only the read
    # right after subscribing can find it (else RelayTimeout).
    assert await await_result(job, timeout=10, poll_interval=30) == "early"
    assert await await_result(job.id, timeout=10, poll_interval=30) == "early"


async def test_without_retries_the_first_failure_raises_relay_discard(start_runner):
    start_runner()
    with pytest.raises(RelayDiscard) as info:
        await FlakyWorker.relay({"succeed_on": 3}, timeout=10)
    exc = info.value
    assert exc.reason == "RuntimeError: Flaky failure on attempt 1 (succeeds on 3)"
    assert exc.state == "retryable"
    assert str(exc.job_id) in str(exc)
    # The job itself goes on retrying; waiting through retries gets its result.
    assert await await_result(exc.job_id, timeout=10, with_retries=True) == {"attempt": 3}


async def test_with_retries_waits_through_to_success(start_runner):
    start_runner()
    result = await FlakyWorker.relay({"succeed_on": 3}, timeout=15, with_retries=True)
    assert result == {"attempt": 3}


async def test_with_retries_raises_relay_discard_after_the_last_attempt(start_runner):
    start_runner()
    with pytest.raises(RelayDiscard) as info:
        await FlakyWorker.relay({"succeed_on": 5}, max_attempts=2, timeout=15, with_retries=True)
    assert info.value.state == "discarded"
    assert info.value.reason == "RuntimeError: Flaky failure on attempt 2 (succeeds on 5)"


async def test_relay_cancelled_has_the_reason(start_runner):
    start_runner()
    with pytest.raises(RelayCancelled) as info:
        await CancelWorker.relay({"reason": "out of stock"}, timeout=10)
    assert info.value.reason == "out of stock"
    assert "out of stock" in str(info.value)
    assert (await get_job(info.value.job_id)).state == "cancelled"


async def test_result_too_large_completes_the_job_without_retrying(start_runner):
    start_runner(MAX_RESULT_BYTES=50)
    assert await PayloadWorker.relay({"size": 10}, timeout=10) == "x" * 10
    with pytest.raises(ResultTooLarge) as info:
        await PayloadWorker.relay({"size": 200}, timeout=10, with_retries=True)
    exc = info.value
    assert exc.limit == 50
    assert exc.size > 50
    assert "MAX_RESULT_BYTES" in str(exc)
    job = await get_job(exc.job_id)
    assert (job.state, job.result, job.attempt, job.errors) == ("completed", None, 1, [])


async def test_relay_timeout_leaves_the_job_running_and_await_result_reattaches(start_runner, gate):
    start_runner()
    with pytest.raises(RelayTimeout) as info:
        await GateWorker.relay({"gate": str(gate), "value": "eventually"}, timeout=0.5)
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, RelayError)
    assert str(exc.job_id) in str(exc)
    job = await wait_for_state(exc.job_id, "executing")  # it keeps running
    assert job.attempt == 1
    await no_waiters_left()
    gate.touch()
    assert await await_result(exc.job_id, timeout=10) == "eventually"


async def test_a_snoozed_job_is_waited_through(start_runner, tmp_path):
    start_runner()
    result = await SnoozeWorker.relay({"log": str(tmp_path / "runs"), "seconds": 0.3}, timeout=10)
    assert result["attempts"] == [1, 1]


# -- await_many -------------------------------------------------------------------


async def test_await_many_returns_results_in_input_order(start_runner, gate):
    start_runner()
    first = await GateWorker.aenqueue({"gate": str(gate), "value": "first"})
    others = [await EchoWorker.aenqueue({"value": i}) for i in range(5)]
    given = [first, *[j.id for j in others], others[0]]  # Job or id; a repeat too
    waiting = asyncio.ensure_future(await_many(given, timeout=15))
    for job in others:  # the first job given finishes last
        await wait_for_state(job.id, "completed")
    gate.touch()
    assert await waiting == ["first", 0, 1, 2, 3, 4, 0]
    await no_waiters_left()


async def test_await_many_puts_exceptions_in_place_and_returns_partial_results(start_runner, gate):
    start_runner()
    jobs = [
        await EchoWorker.aenqueue({"value": "ok"}),
        await GateWorker.aenqueue({"gate": str(gate)}),
        await FlakyWorker.aenqueue({"succeed_on": 5}, max_attempts=1),
        await CancelWorker.aenqueue({"reason": "nope"}),
        await EchoWorker.aenqueue({"value": {"n": 2}}),
    ]
    results = await await_many(jobs, timeout=2.0)  # returns at its timeout, partial
    ok, unfinished, discarded, cancelled, last = results
    assert ok == "ok"
    assert last == {"n": 2}
    assert isinstance(unfinished, RelayTimeout)
    assert unfinished.job_id == jobs[1].id
    assert isinstance(discarded, RelayDiscard)
    assert discarded.job_id == jobs[2].id
    assert discarded.reason == "RuntimeError: Flaky failure on attempt 1 (succeeds on 5)"
    assert isinstance(cancelled, RelayCancelled)
    assert cancelled.reason == "nope"
    assert (await get_job(jobs[1].id)).state == "executing"
    await no_waiters_left()
    gate.touch()


# -- mistakes caught ------------------------------------------------------------------


async def test_await_result_of_a_missing_job_raises_at_once(transactional_db):
    with pytest.raises(RelayError, match="there is no job 999999999") as info:
        await await_result(999_999_999, timeout=10)
    assert not isinstance(info.value, RelayTimeout)  # at once, not at the timeout


def test_relay_sync_inside_atomic_raises_at_once():
    # At once: waiting out the timeout would raise RelayTimeout, not this.
    with transaction.atomic(), pytest.raises(RelayError, match="transaction") as info:
        EchoWorker.relay_sync({"value": 1}, timeout=10)
    assert not isinstance(info.value, RelayTimeout)
    assert "inside an open transaction" in str(info.value)
    assert not Job.objects.exists()  # nothing enqueued


async def test_await_result_inside_atomic_raises_at_once(start_runner):
    start_runner()
    job = await EchoWorker.aenqueue({"value": 1})

    def wait_inside_atomic() -> Any:
        with transaction.atomic():
            return async_to_sync(await_result)(job.id, timeout=10)

    with pytest.raises(RelayError, match="transaction") as info:
        await sync_to_async(wait_inside_atomic)()
    assert not isinstance(info.value, RelayTimeout)
    # Outside the transaction the same wait works.
    assert await await_result(job.id, timeout=10) == 1


async def test_cancel_on_timeout_cancels_a_job_that_has_not_started(transactional_db):
    # No runner serves the queue "nobody".
    with pytest.raises(RelayTimeout) as kept:
        await EchoWorker.relay({"value": 1}, queue="nobody", timeout=0.3)
    with pytest.raises(RelayTimeout) as given_up:
        await EchoWorker.relay({"value": 2}, queue="nobody", timeout=0.3, cancel_on_timeout=True)
    assert await settled(given_up.value.job_id) == "cancelled"
    job = await get_job(given_up.value.job_id)
    assert job.finished_at is not None
    assert "nobody waited for it" in job.errors[-1]["error"]
    assert await settled(kept.value.job_id) == "available"


async def test_cancel_on_timeout_also_covers_a_cancelled_relay(transactional_db):
    task = asyncio.ensure_future(
        EchoWorker.relay({"value": 1}, queue="nobody", timeout=30, cancel_on_timeout=True)
    )

    @sync_to_async
    def enqueued() -> Job | None:
        return Job.objects.filter(queue="nobody").first()

    job = await await_for(enqueued, message="the relay to enqueue its job")
    await await_for(lambda: job.id in _registry().waiters, message="the relay to wait")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await settled(job.id) == "cancelled"


async def test_cancel_on_timeout_leaves_a_started_job_alone(start_runner, gate, tmp_path):
    start_runner()
    started = tmp_path / "started"
    task = asyncio.ensure_future(
        GateWorker.relay(
            {"gate": str(gate), "started": str(started), "value": "finished"},
            timeout=30,
            cancel_on_timeout=True,
        )
    )
    await await_for(started.exists, message="the job to start")
    [job] = await sync_to_async(list)(Job.objects.all())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await settled(job.id) == "executing"
    gate.touch()
    assert await await_result(job.id, timeout=10) == "finished"


async def test_cancel_on_timeout_leaves_a_job_that_already_ran_alone(start_runner, gate):
    # It timed out once and waits an hour to retry: it has started, so it is kept.
    start_runner()
    with pytest.raises(RelayTimeout) as info:
        await TimeoutWorker.relay(
            {"gate": str(gate)}, timeout=3, with_retries=True, cancel_on_timeout=True
        )
    assert await settled(info.value.job_id) == "retryable"


# -- delivery under stress ------------------------------------------------------------


async def test_relay_survives_the_listener_being_killed(start_runner, gate):
    start_runner()
    assert await EchoWorker.relay({"value": 0}, timeout=10) == 0  # the listener is up
    notifier = get_notifier()
    # A long poll_interval: only notifications and the re-read on reconnect deliver.
    task = asyncio.ensure_future(
        GateWorker.relay({"gate": str(gate), "value": "after"}, timeout=20, poll_interval=60)
    )
    await await_for(lambda: _registry().waiters, message="the relay to wait")
    epoch, pid = notifier.epoch, notifier._conn.info.backend_pid
    assert await sql("SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
    await await_for(
        lambda: notifier.epoch > epoch and notifier.connected.is_set(),
        message="the listener to reconnect",
    )
    assert notifier._conn.info.backend_pid != pid
    gate.touch()
    assert await asyncio.wait_for(task, 15) == "after"


async def test_the_first_relay_after_its_insert_connection_died_returns_its_result(start_runner):
    start_runner()
    assert await EchoWorker.relay({"value": 0}, timeout=10) == 0  # opens the insert link
    pid = _registry().inserter.link._conn.info.backend_pid
    assert await sql("SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
    # The connection died while idle: the insert is sent again, on a new one, once.
    results = await asyncio.gather(*(EchoWorker.relay({"value": i}, timeout=10) for i in range(5)))
    assert results == list(range(5))
    assert _registry().inserter.link._conn.info.backend_pid != pid
    assert await sql("SELECT count(*) FROM django_relay_job") == [(6,)]


async def test_a_result_sent_while_the_listener_is_down_arrives_after_reconnecting(
    start_runner, gate
):
    start_runner()
    assert await EchoWorker.relay({"value": 0}, timeout=10) == 0
    notifier = get_notifier()
    task = asyncio.ensure_future(
        GateWorker.relay({"gate": str(gate), "value": "missed"}, timeout=20, poll_interval=60)
    )
    await await_for(lambda: _registry().waiters, message="the relay to wait")
    [job_id] = _registry().waiters
    epoch, pid = notifier.epoch, notifier._conn.info.backend_pid
    # This test's own connection must be open before new ones are refused: it
    # terminates the listener and reads the job meanwhile. (Opened by an earlier
    # test of the same process or not, depending on the order: alone, it failed.)
    await sql("SELECT 1")
    # Keep the listener from reconnecting while the job finishes: its NOTIFY is lost.
    await allow_connections(False)
    try:
        await sql("SELECT pg_terminate_backend(%s)", [pid])
        await await_for(lambda: not notifier.connected.is_set(), message="the listener to drop")
        gate.touch()
        await wait_for_state(job_id, "completed")
        assert not task.done()
    finally:
        await allow_connections(True)
    assert await asyncio.wait_for(task, 15) == "missed"
    assert notifier.epoch > epoch


@sync_to_async
def allow_connections(allow: bool) -> None:
    """Let new connections to the test database in, or not (existing ones stay open)."""
    params = {**pg.connect_kwargs(), "dbname": "postgres"}
    name = connection.settings_dict["NAME"]
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')


@pytest.fixture
def finished_trigger_disabled(transactional_db):
    [(name,)] = run_sql(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'django_relay_job'::regclass "
        "AND tgname LIKE %s",
        ["%relay_finished%"],
    )
    run_sql(f'ALTER TABLE django_relay_job DISABLE TRIGGER "{name}"')
    try:
        yield name
    finally:
        run_sql(f'ALTER TABLE django_relay_job ENABLE TRIGGER "{name}"')


async def test_relays_complete_by_polling_when_notifications_are_lost(
    finished_trigger_disabled, start_runner
):
    [(enabled,)] = await sql(
        "SELECT tgenabled FROM pg_trigger WHERE tgname = %s", [finished_trigger_disabled]
    )
    assert enabled == "D"
    start_runner()
    poll = 0.3

    # No relay_finished NOTIFY can arrive (the trigger is disabled): each result is
    # delivered by the backup poll, sequentially and concurrently. (How soon is the
    # benchmark's business.)
    for i in range(5):
        assert await EchoWorker.relay({"value": i}, timeout=10, poll_interval=poll) == i
    results = await asyncio.gather(
        *(EchoWorker.relay({"value": i}, timeout=10, poll_interval=poll) for i in range(20))
    )
    assert results == list(range(20))


async def own_backends() -> set[int]:
    """This process's connections: tests.settings names them after the process."""
    rows = await sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        [connection.settings_dict["OPTIONS"]["application_name"]],
    )
    return {pid for (pid,) in rows}


async def test_a_thousand_concurrent_relays_share_one_listener(start_runner):
    start_runner("default=50")
    assert await EchoWorker.relay({"value": -1}, timeout=10) == -1
    notifier = get_notifier()
    epoch = notifier.epoch
    sampled: list[set[int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            sampled.append(await own_backends())
            await asyncio.sleep(0.05)  # sampling rate only

    sampler = asyncio.ensure_future(sample())
    try:
        results = await asyncio.gather(
            *(CalculatorWorker.relay({"a": i, "b": 1}, timeout=60) for i in range(1000))
        )
    finally:
        done.set()
        await sampler
    sampled.append(await own_backends())
    assert results == [{"result": i + 1} for i in range(1000)]
    assert get_notifier() is notifier
    assert notifier.epoch == epoch  # the one LISTEN connection never had to be replaced
    listener = notifier._conn.info.backend_pid
    for backends in sampled:
        assert listener in backends
        # Django's connections (this thread's and asgiref's), the listener and the relay
        # links (reading, inserting), with one to spare: not one per relay.
        assert len(backends) <= 6, backends
    await no_waiters_left()


RELAY_SCRIPT = """
import asyncio, json, sys
import django
django.setup()
from tests.workers import RecordWorker

async def main():
    return await asyncio.gather(*(
        RecordWorker.relay({"log": sys.argv[1], "value": i, "pause": 0.05}, timeout=60)
        for i in range(50)
    ))

print(json.dumps(asyncio.run(main())))
"""


def test_a_third_process_relays_through_two_runners(start_runner, tmp_path):
    runners = [start_runner("default=2"), start_runner("default=2")]
    log = str(tmp_path / "runs")
    done = subprocess.run(
        [sys.executable, "-c", RELAY_SCRIPT, log],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["value"] for r in results] == list(range(50))
    pids = {r.proc.pid for r in runners}
    assert {r["pid"] for r in results} == pids
    runs = read_records(log)
    assert len(runs) == 50
    assert len({r["job"] for r in runs}) == 50


AWAIT_SCRIPT = """
import asyncio, json, sys
import django
django.setup()
from django_relay import await_result
from django_relay.listener.notifier import get_notifier

print(get_notifier().finished_channel, flush=True)
print(json.dumps(asyncio.run(await_result(int(sys.argv[1]), timeout=60))), flush=True)
"""


async def test_two_processes_awaiting_one_job_both_hear_of_it(start_runner, gate):
    start_runner()
    job = await GateWorker.aenqueue({"gate": str(gate), "value": "both"})
    other = subprocess.Popen(
        [sys.executable, "-c", AWAIT_SCRIPT, str(job.pk)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        theirs = await asyncio.to_thread(other.stdout.readline)
        ours = asyncio.create_task(await_result(job, timeout=60))
        # Each waiting process recorded its own channel on the job (subscribe, then check).
        mine = get_notifier().finished_channel
        await await_for(
            partial(_waiters_are, job.pk, {mine, theirs.strip()}), 30, message="both waiters"
        )
        gate.touch()
        assert await ours == "both"
        out, _ = await asyncio.to_thread(other.communicate, timeout=60)
        assert json.loads(out.strip().splitlines()[-1]) == "both"
    finally:
        if other.poll() is None:
            other.kill()


async def _waiters_are(job_id: int, channels: set[str]) -> bool:
    [(waiters,)] = await sql("SELECT waiters FROM django_relay_job WHERE id = %s", [job_id])
    return set(waiters or ()) == channels


async def test_a_relayed_job_notifies_only_its_relaying_process(start_runner):
    start_runner()
    mine = get_notifier().finished_channel
    assert await EchoWorker.relay({"value": 1}, timeout=10) == 1
    [(waiters,)] = await sql(
        "SELECT waiters FROM django_relay_job WHERE args->>'value' = '1' ORDER BY id DESC LIMIT 1"
    )
    assert waiters == [mine]

"""Django's Tasks framework on django_relay: ``RelayBackend`` with real runners.

Django's own tests for its built-in backends (``tests/tasks/`` in Django's source)
describe the contract; the behaviours that apply to a durable backend are checked
here against real ``relayworker`` processes and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import math
import signal as os_signal
from typing import Any

import django
import pytest

if django.VERSION < (6, 0):
    pytest.skip(
        "django_relay.tasks needs Django 6's django.tasks (this is Django "
        f"{django.get_version()}; see test_tasks_compat.py)",
        allow_module_level=True,
    )

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.tasks import TaskResultStatus, default_task_backend, task, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued
from django.utils import timezone

import django_relay
from django_relay import (
    EncodeError,
    RelayDiscard,
    RelayTimeout,
    await_many,
    await_result,
    signal_sync,
)
from django_relay.models import Job
from django_relay.tasks import RelayBackend, RunnerLost, relay_priority
from tests import django_tasks as tasks
from tests.admin_client import AdminClient, staff_user
from tests.conftest import await_for, wait_for
from tests.workers import EchoWorker, read_records

e2e = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def finished(result: Any, timeout: float = 20.0) -> Any:
    """Refresh ``result`` until it is finished (SUCCESSFUL or FAILED)."""

    def done() -> bool:
        result.refresh()
        return result.is_finished

    wait_for(done, timeout, message=f"task result {result.id} to finish")
    return result


def node_of(runner: Any) -> str:
    """The runner's node id, from its ready line (``relayworker <node> ready: ...``)."""
    return runner.wait_for_line("ready").split("relayworker ", 1)[1].split(" ready")[0]


# -- the backend, without a runner ------------------------------------------------


def test_the_backend_declares_every_capability_of_the_framework():
    backend = task_backends["default"]
    assert isinstance(backend, RelayBackend) and default_task_backend.alias == "default"
    capabilities = [name for name in dir(backend) if name.startswith("supports_")]
    assert capabilities and all(getattr(backend, name) is True for name in capabilities)
    assert {"supports_defer", "supports_async_task", "supports_get_result"} <= set(capabilities)


@pytest.mark.django_db
def test_enqueue_stores_a_ready_result_that_get_result_reads_back_equal():
    result = tasks.add.enqueue(2, b=(3, 4))

    assert result.status == TaskResultStatus.READY
    assert result.id.isdigit() and Job.objects.filter(pk=int(result.id)).exists()
    assert (result.args, result.kwargs) == ([2], {"b": [3, 4]})  # Django's normalization
    assert result.enqueued_at is not None
    assert (result.started_at, result.finished_at, result.last_attempted_at) == (None,) * 3
    assert (result.errors, result.worker_ids, result.attempts) == ([], [], 0)
    assert result.task == tasks.add and result.backend == "default"
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018

    assert tasks.add.get_result(result.id) == result
    assert default_task_backend.get_result(result.id) == result
    before = {name: getattr(result, name) for name in ("status", "enqueued_at", "errors")}
    result.refresh()
    assert {name: getattr(result, name) for name in before} == before


@pytest.mark.django_db
def test_a_result_remembers_the_task_as_enqueued():
    run_after = timezone.now() + dt.timedelta(hours=1)
    variant = tasks.add.using(priority=42, queue_name="mail", run_after=run_after)
    variant = variant.using(max_attempts=7, backoff=2.5)
    result = variant.enqueue(1, 2)

    assert tasks.add.get_result(result.id).task == variant
    job = Job.objects.get(pk=int(result.id))
    assert (job.queue, job.priority, job.max_attempts) == ("mail", relay_priority(42), 7)
    assert job.scheduled_at == run_after and job.state == "scheduled"


@pytest.mark.django_db(transaction=True)
async def test_aenqueue_and_aget_result():
    result = await tasks.async_echo.aenqueue("hi")
    assert result.status == TaskResultStatus.READY
    assert await tasks.async_echo.aget_result(result.id) == result
    await result.arefresh()
    assert result.status == TaskResultStatus.READY


@pytest.mark.django_db
@pytest.mark.parametrize(
    "result_id", ["999999999", "abc", "", "-1", "1.0", "1" * 30, "١٢", " 1", "9" * 19]
)
def test_get_result_of_an_unknown_or_malformed_id_does_not_exist(result_id):
    tasks.add.enqueue(1, 2)  # there is a task; just not this one
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result_id)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result_id)


@pytest.mark.django_db
def test_get_result_of_a_job_that_is_no_task_or_of_another_alias_does_not_exist():
    job = EchoWorker.enqueue({"value": 1})
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(job.pk))
    other = tasks.add.using(backend="fast_retries").enqueue(1, 2)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(other.id)
    assert task_backends["fast_retries"].get_result(other.id) == other


@pytest.mark.django_db
def test_get_result_of_another_task_raises_what_django_raises():
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        tasks.echo.get_result(result.id)


def _nested() -> Any:
    def inner() -> None:
        return None

    return task()(inner)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("enqueue", "error", "message"),
    [
        (
            lambda: tasks.add.using(run_after=dt.datetime.now()).enqueue(1, 2),
            InvalidTask,
            "run_after must be an aware datetime.",
        ),
        (
            lambda: tasks.add.using(backend="two_queues", queue_name="nope").enqueue(1, 2),
            InvalidTask,
            "Queue 'nope' is not valid for backend.",
        ),
        (
            lambda: tasks.add.using(queue_name="no spaces").enqueue(1, 2),
            InvalidTask,
            "Queue 'no spaces' is not valid for backend: invalid queue name",
        ),
        (
            lambda: tasks.add.using(priority=101).enqueue(1, 2),
            InvalidTask,
            "priority must be a whole number between -100 and 100.",
        ),
        (lambda: _nested(), InvalidTask, "Task function must be defined at a module level."),
        (lambda: tasks.misnamed.enqueue(), InvalidTask, "does not name this Task"),
        (lambda: tasks.add.using(max_attempts=0).enqueue(1, 2), InvalidTask, "max_attempts"),
        (lambda: tasks.add.using(backoff=-1).enqueue(1, 2), InvalidTask, "backoff"),
        (lambda: tasks.echo.enqueue(dt.datetime.now()), TypeError, "Unsupported type"),
        (lambda: tasks.echo.enqueue(object()), TypeError, "Unsupported type"),
        (lambda: tasks.echo.enqueue(math.nan), EncodeError, "nan is not valid JSON"),
        (lambda: tasks.echo.enqueue({1: "a"}), EncodeError, "dict keys must be str"),
        (lambda: tasks.echo.enqueue("x" * 300_000), EncodeError, "the limit is"),
    ],
    ids=[
        "naive-run_after",
        "unknown-queue",
        "bad-queue-name",
        "priority",
        "nested-function",
        "misnamed",
        "max_attempts",
        "backoff",
        "datetime-arg",
        "object-arg",
        "nan-arg",
        "int-key",
        "too-large",
    ],
)
def test_bad_input_raises_djangos_or_the_codecs_error_and_stores_nothing(enqueue, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        enqueue()
    assert not Job.objects.exists()


def test_relay_refuses_a_task_of_another_backend():
    with pytest.raises(InvalidTask, match="runs tasks of a RelayBackend"):
        _run(django_relay.relay(tasks.immediate_add, 1, 2))


def _run(coro: Any) -> Any:
    from asgiref.sync import async_to_sync

    async def go() -> Any:
        return await coro

    return async_to_sync(go)()


def test_priorities_map_onto_ten_bands_keeping_their_order():
    mapped = [relay_priority(p) for p in range(100, -101, -1)]  # highest Django priority first
    assert mapped == sorted(mapped) and (mapped[0], mapped[-1]) == (0, 9)
    # The bands README.rst documents: 80..100, then 20 each (60..79, ..., -100..-81).
    tops = [100, 79, 59, 39, 19, -1, -21, -41, -61, -81]
    bottoms = [80, 60, 40, 20, 0, -20, -40, -60, -80, -100]
    for band, (top, bottom) in enumerate(zip(tops, bottoms, strict=True)):
        assert {relay_priority(p) for p in range(bottom, top + 1)} == {band}


@pytest.mark.django_db
def test_a_whole_float_priority_is_accepted_as_django_accepts_it():
    result = tasks.add.using(priority=60.0).enqueue(1, 2)
    assert Job.objects.get(pk=int(result.id)).priority == 1
    assert tasks.add.get_result(result.id).task.priority == 60.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "3"}, "MAX_ATTEMPTS"),
        ({"BACKOFF": -1}, "BACKOFF"),
        ({"RETRIES": 3}, "unknown keys"),
    ],
)
def test_bad_options_are_refused_when_the_backend_is_built(options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        RelayBackend("x", {"OPTIONS": options})


def test_backoff_option_as_seconds_function_or_dotted_path():
    assert RelayBackend("x", {"OPTIONS": {"BACKOFF": 3}}).backoff_after(1) == 3.0
    backend = RelayBackend("x", {"OPTIONS": {"BACKOFF": "math.sqrt"}})
    assert backend.backoff_after(16) == 4.0
    assert 15 < RelayBackend("x", {}).backoff_after(1) < 20  # django_relay's default


def test_a_task_with_retry_options_pickles_as_djangos_tasks_do():
    import pickle

    variant = tasks.add.using(max_attempts=5, backoff=1.5, priority=3)
    assert pickle.loads(pickle.dumps(variant)) == variant
    assert variant.using(priority=4).max_attempts == 5  # kept across using()
    assert tasks.add.max_attempts is None  # using() made a copy


@pytest.mark.django_db
def test_retry_options_per_backend_and_per_task_set_the_jobs_max_attempts():
    default = Job.objects.get(pk=int(tasks.add.enqueue(1, 2).id))
    by_options = Job.objects.get(pk=int(tasks.add.using(backend="fast_retries").enqueue(1, 2).id))
    by_task = Job.objects.get(pk=int(tasks.fail.enqueue("x").id))
    assert (default.max_attempts, by_options.max_attempts, by_task.max_attempts) == (3, 4, 1)


@pytest.mark.django_db
def test_task_enqueued_is_sent_in_the_enqueuing_process(caplog):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result))

    task_enqueued.connect(receiver)
    try:
        with caplog.at_level("DEBUG", logger="django.tasks"):
            result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    [(sender, sent)] = seen
    assert sender is RelayBackend and sent == result
    assert f"Task id={result.id} path=tests.django_tasks.add enqueued" in caplog.text


@pytest.mark.django_db
def test_a_task_job_inserted_by_hand_naming_no_task_has_no_result():
    from django_relay.tasks import TaskWorker

    job = TaskWorker.enqueue({"task": "os.system", "backend": "default"})
    with pytest.raises(TaskResultDoesNotExist, match="refusing to run it"):
        default_task_backend.get_result(str(job.pk))


@pytest.mark.django_db
def test_enqueue_joins_the_callers_transaction():
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 2)
        raise RuntimeError("rolled back")
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_drain_runs_tasks_in_process_for_a_projects_own_tests():
    from django_relay.testing import drain

    results = [tasks.add.enqueue(1, 2), tasks.async_echo.enqueue("a"), tasks.fail.enqueue("x")]
    assert drain() == {"completed": 2, "discarded": 1}
    for result in results:
        result.refresh()
    assert [r.status for r in results] == ["SUCCESSFUL", "SUCCESSFUL", "FAILED"]
    assert results[1].return_value == {"async": "a"}


# -- with real runners -------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_enqueue_then_refresh_until_successful(start_runner):
    runner = start_runner()
    result = finished(tasks.add.enqueue(2, 3))

    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert (result.attempts, result.worker_ids, result.errors) == (1, [node_of(runner)], [])
    assert tasks.add.get_result(result.id) == result


JSON_VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**53 + 1,
    1.5,
    -0.25,
    "",
    "héllo ✓",
    [],
    [1, "a", None, [True]],
    {},
    {"a": {"b": [1, 2.5, None, False]}, "__relay__": "not a tag"},
]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_return_values_of_every_json_type_come_back_intact(start_runner):
    start_runner()
    results = [tasks.echo.enqueue(value) for value in JSON_VALUES]
    returned = [finished(result).return_value for result in results]
    assert returned == JSON_VALUES
    assert [type(v) for v in returned] == [type(v) for v in JSON_VALUES]
    # Django normalizes return values to JSON: a tuple comes back as a list.
    assert finished(tasks.returns_tuple.enqueue()).return_value == ["a", 1]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_exceptions_are_recorded_with_their_class_and_traceback(start_runner):
    runner = start_runner()
    failed = finished(tasks.fail.enqueue("This task failed due to ValueError"))
    exited = finished(tasks.exit_task.enqueue())
    unsupported = finished(tasks.returns_datetime.enqueue())

    for result, exception, last_line in [
        (failed, ValueError, "ValueError: This task failed due to ValueError\n"),
        (exited, SystemExit, "SystemExit: This task failed due to SystemExit\n"),
        (unsupported, TypeError, "TypeError: Unsupported type: <class 'datetime.datetime'>\n"),
    ]:
        assert result.status == TaskResultStatus.FAILED
        with pytest.raises(ValueError, match="Task failed"):
            result.return_value  # noqa: B018
        [error] = result.errors
        assert error.exception_class is exception
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert error.traceback.endswith(last_line), error.traceback
        assert result.started_at <= result.finished_at and result.attempts == 1
    # sys.exit() in a task failed the task, not the runner.
    assert runner.proc.poll() is None
    assert finished(tasks.add.enqueue(1, 1)).return_value == 2
    # Django's own log line for a failed task, with its traceback, from the runner.
    runner.wait_for_line(f"Task id={failed.id} path=tests.django_tasks.fail state=FAILED")
    runner.wait_for_line("ValueError: This task failed due to ValueError")
    runner.wait_for_line(f"Task id={failed.id} path=tests.django_tasks.fail state=RUNNING")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_failed_attempts_are_retried_and_each_is_recorded(start_runner):
    runner = start_runner()
    result = finished(tasks.flaky.enqueue(succeed_on=3))
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert result.attempts == 3 and result.worker_ids == [node_of(runner)] * 3
    assert [e.exception_class for e in result.errors] == [RuntimeError, RuntimeError]
    assert "attempt 1 fails" in result.errors[0].traceback
    assert "attempt 2 fails" in result.errors[1].traceback
    assert result.started_at < result.last_attempted_at
    # A retried attempt is logged by Django with the READY state it goes back to.
    runner.wait_for_line(f"Task id={result.id} path=tests.django_tasks.flaky state=READY")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_priority_order_is_observed(start_runner, tmp_path):
    log = str(tmp_path / "ledger")
    priorities = [-100, 0, 100, 50, -50, 0, 79, 80]
    results = [
        tasks.record_start.using(priority=p).enqueue(log, f"{p}#{i}")
        for i, p in enumerate(priorities)
    ]
    start_runner("default=1")  # one at a time: the ledger is the start order
    for result in results:
        finished(result)
    ledger = [entry["label"] for entry in read_records(log)]
    # 80 (band 0) runs before 79 (band 1) enqueued earlier; equal bands keep their order.
    assert ledger == ["100#2", "80#7", "79#6", "50#3", "0#1", "0#5", "-50#4", "-100#0"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_run_after_is_observed(start_runner, tmp_path):
    log = str(tmp_path / "ledger")
    start_runner()
    run_after = timezone.now() + dt.timedelta(seconds=2)
    later = tasks.record_start.using(run_after=run_after).enqueue(log, "later")
    finished(tasks.record_start.enqueue(log, "now"))
    if timezone.now() < run_after:  # checked while it is still deferred
        assert tasks.record_start.get_result(later.id).status == TaskResultStatus.READY
        assert [entry["label"] for entry in read_records(log)] == ["now"]
    finished(later)
    assert later.started_at >= run_after
    assert Job.objects.get(pk=int(later.id)).scheduled_at == run_after


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_async_task_functions_run(start_runner):
    start_runner()
    result = finished(tasks.async_echo.enqueue([1, 2]))
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"async": [1, 2]}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_takes_context_receives_djangos_task_context(start_runner):
    runner = start_runner()
    result = finished(tasks.context_info.enqueue())
    assert result.return_value == {
        "id": result.id,
        "attempt": 1,
        "status": "RUNNING",
        "worker_ids": [node_of(runner)],
    }


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_relay_awaits_a_tasks_return_value(start_runner):
    start_runner()
    enqueued = []

    def receiver(sender, task_result, **kwargs):
        enqueued.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        assert await django_relay.relay(tasks.add, 2, b=40) == 42
    finally:
        task_enqueued.disconnect(receiver)
    assert len(enqueued) == 1  # Django's signal, for the relayed task too

    with pytest.raises(RelayDiscard, match="ValueError: no"):
        await django_relay.relay(tasks.fail, "no")
    # The wait's options never collide with the task's keyword arguments.
    assert await django_relay.relay.using(timeout=20)(tasks.echo, value={"timeout": 1}) == {
        "timeout": 1
    }
    assert await django_relay.relay.using(with_retries=True)(tasks.flaky, succeed_on=2) == 2
    nobody = tasks.add.using(queue_name="nobody_serves_this")
    with pytest.raises(RelayTimeout) as timed_out:
        await django_relay.relay.using(timeout=0.3)(nobody, 1, 2)
    assert (await tasks.add.aget_result(str(timed_out.value.job_id))).status == "READY"
    with pytest.raises(RelayTimeout) as given_up:
        await django_relay.relay.using(timeout=0.3, cancel_on_timeout=True)(nobody, 1, 2)

    async def cancelled() -> bool:
        result = await tasks.add.aget_result(str(given_up.value.job_id))
        return result.status == "FAILED" and result.errors[0].exception_class_path.endswith(
            "RelayCancelled"
        )

    await await_for(cancelled, message="the abandoned task to be cancelled")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_await_result_and_await_many_take_task_results(start_runner):
    start_runner()
    one = await tasks.add.aenqueue(1, 2)
    assert await await_result(one, timeout=20) == 3
    failing = await tasks.fail.aenqueue("boom")
    values = await await_many([one, failing, await tasks.echo.aenqueue("x")], timeout=20)
    assert values[0] == 3 and values[2] == "x"
    assert isinstance(values[1], RelayDiscard)
    immediate = await sync_to_async(tasks.immediate_add.enqueue)(1, 2)
    with pytest.raises(TypeError, match="not from a RelayBackend"):
        await await_result(immediate)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_task_waits_for_a_signal(start_runner):
    start_runner()
    result = await tasks.async_approval.aenqueue(7)

    async def running() -> bool:
        await result.arefresh()
        return result.status == TaskResultStatus.RUNNING

    await await_for(running, message="the task to be in its live wait")
    assert await django_relay.signal(int(result.id), {"decision": "approved"}) == 1
    assert await await_result(result, timeout=20) == {"order": 7, "decision": "approved"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_snoozed_task_is_approved_from_the_admin(start_runner):
    start_runner()
    result = tasks.approval.enqueue(8)
    job_id = int(result.id)
    wait_for(
        lambda: Job.objects.waiting_for_signal().filter(pk=job_id).exists(),
        message="the task to snooze for its signal",
    )
    result.refresh()
    assert result.status == TaskResultStatus.READY  # snoozed: not running, not finished

    client = AdminClient(staff_user("view_job", "signal_job"), "/admin/django_relay/job/")
    client.post({"action": "approve", "_selected_action": [job_id], "apply": "1"})
    assert finished(result).return_value == {"order": 8, "decision": "approved"}
    assert result.attempts == 1  # waiting gave its attempt back


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_signal_sync_reaches_a_task_too(start_runner):
    start_runner()
    result = tasks.approval.enqueue(9)
    wait_for(
        lambda: Job.objects.waiting_for_signal().filter(pk=int(result.id)).exists(),
        message="the task to snooze for its signal",
    )
    assert signal_sync(int(result.id), {"decision": "declined"}) == 1
    assert finished(result).return_value == {"order": 9, "decision": "declined"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_task_survives_its_runner_being_killed(start_runner, tmp_path):
    started = tmp_path / "started"
    first = start_runner()
    first_node = node_of(first)
    result = tasks.crash_once.enqueue(str(started))
    wait_for(started.exists, message="the first attempt to start")
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING and result.worker_ids == [first_node]
    first.kill()
    assert first.proc.returncode == -os_signal.SIGKILL

    second = start_runner()
    finished(result, timeout=30)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 2
    assert result.worker_ids == [first_node, node_of(second)]
    [lost] = result.errors
    assert lost.exception_class is RunnerLost and first_node in lost.traceback
    assert result.started_at < result.last_attempted_at


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_return_value_over_the_cap_fails_the_result_and_says_why(start_runner):
    start_runner()
    result = finished(tasks.big.enqueue(20_000))
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "django_relay.exceptions.ResultTooLarge"
    assert "MAX_RESULT_BYTES" in error.traceback
    assert Job.objects.get(pk=int(result.id)).state == "completed"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_runner_refuses_a_job_naming_something_that_is_no_relay_task(start_runner):
    plain = tasks.add.enqueue(1, 2)
    # Rows as a tampered database or an old deploy could hold them.
    Job.objects.filter(pk=int(plain.id)).update(
        args={**Job.objects.get(pk=int(plain.id)).args, "task": "os.system", "args": ["true"]}
    )
    other = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=int(other.id)).update(
        args={
            **Job.objects.get(pk=int(other.id)).args,
            "task": "tests.django_tasks.immediate_add",
            "backend": "immediate",
        }
    )
    start_runner()
    for job_id in (int(plain.id), int(other.id)):
        row = wait_for(
            lambda job_id=job_id: (j := Job.objects.get(pk=job_id)).state == "retryable" and j,
            message="the refused job to fail its attempt",
        )
        assert "refusing to run it" in row.errors[0]["error"]
        assert row.result is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_example_projects_task_runs_on_its_backend(start_runner):
    from example_app.tasks import shipping_quote

    from example_project import settings as example

    assert example.TASKS["default"]["BACKEND"] == "django_relay.tasks.RelayBackend"
    start_runner()
    quote = await django_relay.relay(shipping_quote, order_id=7, weight_kg=2.5)
    assert quote == {"order_id": 7, "price": 7.5, "attempt": 1}

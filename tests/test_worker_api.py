"""``@worker`` and the job-building API: new, enqueue, enqueue_many and their async twins."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.expressions import DatabaseDefault
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from django_relay import aenqueue_many, enqueue_many, signals, worker
from django_relay.exceptions import EncodeError, WorkerError
from django_relay.models import Job, JobState
from django_relay.registry import WorkerOptions, options_of, resolve
from tests.conftest import param_id
from tests.workers import EchoWorker


@worker
class BareWorker:
    def process(self, job: Any) -> Any:
        return None


@worker(queue="mail.outbound-1", max_attempts=3, priority=7, timeout=2.5)
class MailWorker:
    async def process(self, job: Any) -> Any:
        return None

    def backoff(self, job: Any) -> float:
        return 1.0


class NotAWorker:
    def process(self, job: Any) -> Any:
        return None


def db_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


# -- @worker ----------------------------------------------------------------------------------


def test_bare_worker_registers_with_defaults():
    assert BareWorker.__relay_worker__ == "tests.test_worker_api.BareWorker"
    assert options_of(BareWorker) == WorkerOptions(
        queue="default", max_attempts=20, priority=0, timeout=None
    )
    assert resolve("tests.test_worker_api.BareWorker") is BareWorker
    for name in ("new", "enqueue", "aenqueue", "relay", "relay_sync"):
        assert callable(getattr(BareWorker, name)), name
    # The default backoff is given; it is exponential in the attempt.
    job = BareWorker.new()
    job.attempt = 1
    assert 15 <= BareWorker().backoff(job) <= 20


def test_worker_with_options_keeps_them_and_its_own_backoff():
    assert options_of(MailWorker) == WorkerOptions(
        queue="mail.outbound-1", max_attempts=3, priority=7, timeout=2.5
    )
    assert MailWorker().backoff(MailWorker.new()) == 1.0
    assert resolve(MailWorker.__relay_worker__) is MailWorker


def test_a_nested_class_is_registered_under_its_qualified_name():
    class Outer:
        @worker
        class Inner:
            def process(self, job: Any) -> None:
                return None

    path = Outer.Inner.__relay_worker__
    assert path.startswith("tests.test_worker_api.")
    assert path.endswith("Outer.Inner")
    assert resolve(path) is Outer.Inner


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": -1}, "priority must be an int from 0"),
        ({"priority": 10}, "priority must be an int from 0"),
        ({"priority": 1.0}, "priority must be an int from 0"),
        ({"priority": True}, "priority must be an int from 0"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1"),
        ({"max_attempts": -3}, "max_attempts must be an int >= 1"),
        ({"max_attempts": "5"}, "max_attempts must be an int >= 1"),
        ({"queue": ""}, "invalid queue name"),
        ({"queue": "bad name"}, "invalid queue name"),
        ({"queue": "-leading-dash"}, "invalid queue name"),
        ({"queue": "x" * 65}, "invalid queue name"),
        ({"queue": "default\n"}, "invalid queue name"),
        ({"queue": "qu'ote"}, "invalid queue name"),
        ({"queue": 5}, "invalid queue name"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1.5}, "timeout must be a positive number"),
        ({"timeout": "10"}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
    ],
    ids=repr,
)
def test_worker_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):

        @worker(**options)
        class Refused:
            def process(self, job: Any) -> None:
                return None


def test_the_longest_queue_name_is_accepted():
    @worker(queue="q" * 64)
    class LongQueue:
        def process(self, job: Any) -> None:
            return None

    assert options_of(LongQueue).queue == "q" * 64


@pytest.mark.parametrize("body", [{}, {"process": 5}], ids=["missing", "not callable"])
def test_a_class_without_process_is_refused(body):
    klass = type("NoProcess", (), body)
    with pytest.raises(TypeError, match=r"NoProcess needs a process\(self, job\) method"):
        worker(klass)
    with pytest.raises(TypeError, match="needs a process"):
        worker(queue="default")(klass)


# -- resolve ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "os.system",
        "builtins.eval",
        "subprocess.Popen",
        "tests.test_worker_api.NotAWorker",
        "tests.workers.record",
        "no_such_module_for_relay.Worker",
        "tests.workers.NoSuchWorker",
        "nodots",
        "",
    ],
)
def test_resolve_refuses_anything_but_a_registered_worker(path):
    with pytest.raises(WorkerError):
        resolve(path)


def test_resolve_imports_a_worker_module_lazily(tmp_path, monkeypatch):
    (tmp_path / "relay_lazy_workers.py").write_text(
        textwrap.dedent(
            """
            from django_relay import worker

            @worker
            class LazyWorker:
                def process(self, job):
                    return 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "relay_lazy_workers", raising=False)
    klass = resolve("relay_lazy_workers.LazyWorker")
    assert klass.__name__ == "LazyWorker"
    assert klass.__relay_worker__ == "relay_lazy_workers.LazyWorker"
    sys.modules.pop("relay_lazy_workers", None)


def test_resolve_turns_a_module_failing_at_import_into_worker_error(tmp_path, monkeypatch):
    (tmp_path / "relay_broken_workers.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkerError, match="broken at import"):
        resolve("relay_broken_workers.AnyWorker")


# -- new() ------------------------------------------------------------------------------------


def test_new_builds_an_unsaved_job_with_the_worker_defaults():
    job = MailWorker.new({"to": "a@example.com"})
    assert isinstance(job, Job)
    assert job.pk is None
    assert job._state.adding
    assert job.worker == "tests.test_worker_api.MailWorker"
    assert job.queue == "mail.outbound-1"
    assert job.priority == 7
    assert job.max_attempts == 3
    assert job.args == {"to": "a@example.com"}
    assert job.meta == {}
    assert job.state == JobState.AVAILABLE
    assert job.attempt == 0
    assert job.scheduled_at is None  # the database's now() at insert


def _fields(job: Job) -> dict[str, Any]:
    # A DatabaseDefault (the database's now()) stands for itself by its expression.
    return {
        name: repr(value.expression) if isinstance(value, DatabaseDefault) else value
        for name, value in vars(job).items()
        if name != "_state"
    }


def test_new_sets_what_the_model_constructor_sets_and_shares_no_mutable_default():
    job = MailWorker.new({"to": "a@example.com"}, meta={"m": 1})
    built = Job(
        worker=job.worker,
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        args={"to": "a@example.com"},
        meta={"m": 1},
    )
    built.scheduled_at = None
    assert _fields(job) == _fields(built)
    assert (job._state.adding, job._state.db) == (True, None)
    other = MailWorker.new()
    job.errors.append("x")
    job.deps.append(1)
    assert (other.errors, other.deps, other.args, other.meta) == ([], [], {}, {})
    assert other.args is not other.meta


def test_new_sends_the_model_init_signals_to_their_receivers():
    seen = []

    def receiver(sender: type, instance: Job, **kwargs: Any) -> None:
        seen.append(instance.worker)

    post_init.connect(receiver, sender=Job)
    try:
        job = MailWorker.new({"to": "a@example.com"})
    finally:
        post_init.disconnect(receiver, sender=Job)
    assert seen == ["tests.test_worker_api.MailWorker"]
    assert job.args == {"to": "a@example.com"} and job.queue == "mail.outbound-1"


def test_new_without_args_has_empty_args():
    assert BareWorker.new().args == {}
    assert BareWorker.new(None).args == {}


def test_new_overrides_the_worker_defaults():
    job = MailWorker.new({"x": 1}, queue="other", priority=0, max_attempts=1, meta={"trace": "abc"})
    assert (job.queue, job.priority, job.max_attempts, job.meta) == (
        "other",
        0,
        1,
        {"trace": "abc"},
    )


def test_new_copies_args_so_later_changes_do_not_leak_in():
    args = {"a": 1}
    job = BareWorker.new(args)
    args["a"] = 2
    assert job.args == {"a": 1}


@pytest.mark.parametrize(
    ("opts", "error", "message"),
    [
        ({"priority": 10}, ValueError, "priority"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"queue": "no spaces"}, ValueError, "invalid queue name"),
        ({"schedule_in": "soon"}, ValueError, "schedule_in must be seconds"),
        ({"schedule_in": float("nan")}, ValueError, "schedule_in must be seconds"),
        ({"scheduled_at": dt.datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
        ({"scheduled_at": "2030-01-01T00:00:00Z"}, ValueError, "scheduled_at must be a datetime"),
        (
            {"scheduled_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "schedule_in": 5},
            ValueError,
            "not both",
        ),
        ({"meta": ["not", "a", "dict"]}, EncodeError, "meta must be a dict"),
    ],
    ids=repr,
)
def test_new_refuses_bad_options(opts, error, message):
    with pytest.raises(error, match=message):
        BareWorker.new({}, **opts)


@pytest.mark.parametrize("args", [[1, 2], "a=1", 5, (("a", 1),)], ids=repr)
def test_new_refuses_args_that_are_not_a_dict(args):
    with pytest.raises(EncodeError, match="args must be a dict"):
        BareWorker.new(args)


@pytest.mark.parametrize("delay", [90, 90.0, dt.timedelta(seconds=90)], ids=repr)
def test_new_schedule_in_sets_scheduled_at(delay):
    before = timezone.now()
    job = BareWorker.new(schedule_in=delay)
    after = timezone.now()
    assert before + dt.timedelta(seconds=90) <= job.scheduled_at <= after + dt.timedelta(seconds=90)


# -- enqueue ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_inserts_an_available_job_stamped_by_the_database():
    job = EchoWorker.enqueue({"value": [1, "two"], "when": dt.date(2024, 1, 1)})
    now = db_now()  # the test's transaction: the same now() the INSERT saw
    assert job.pk is not None
    assert not job._state.adding
    assert job.state == JobState.AVAILABLE
    assert job.inserted_at == now
    assert job.scheduled_at == now

    row = Job.objects.get(pk=job.pk)
    assert row.worker == "tests.workers.EchoWorker"
    assert row.queue == "default"
    assert row.state == JobState.AVAILABLE
    assert row.attempt == 0
    assert row.max_attempts == 20
    assert row.priority == 0
    assert row.errors == []
    assert row.result is None
    assert row.attempted_at is None
    assert row.attempted_by is None
    assert row.finished_at is None
    assert row.inserted_at == now
    assert row.args == {"value": [1, "two"], "when": dt.date(2024, 1, 1)}


@pytest.mark.django_db
def test_enqueue_with_options_stores_them():
    job = MailWorker.enqueue({"n": Decimal("1.5")}, priority=2, meta={"k": "v"})
    row = Job.objects.get(pk=job.pk)
    assert (row.queue, row.priority, row.max_attempts) == ("mail.outbound-1", 2, 3)
    assert row.meta == {"k": "v"}
    assert row.args == {"n": Decimal("1.5")}


@pytest.mark.django_db
@pytest.mark.parametrize("delay", [60, dt.timedelta(minutes=1)], ids=repr)
def test_enqueue_schedule_in_makes_a_scheduled_job(delay):
    job = EchoWorker.enqueue({}, schedule_in=delay)
    row = Job.objects.get(pk=job.pk)
    assert job.state == row.state == JobState.SCHEDULED
    assert dt.timedelta(seconds=55) < row.scheduled_at - db_now() <= dt.timedelta(seconds=65)


@pytest.mark.django_db
def test_enqueue_scheduled_at_in_the_future_or_the_past():
    future = EchoWorker.enqueue({}, scheduled_at=timezone.now() + dt.timedelta(days=1))
    past = EchoWorker.enqueue({}, scheduled_at=timezone.now() - dt.timedelta(days=1))
    assert Job.objects.get(pk=future.pk).state == JobState.SCHEDULED
    assert Job.objects.get(pk=past.pk).state == JobState.AVAILABLE


@pytest.mark.django_db
def test_enqueue_schedule_in_zero_is_available_now():
    job = EchoWorker.enqueue({}, schedule_in=0)
    assert Job.objects.get(pk=job.pk).state == JobState.AVAILABLE


@pytest.mark.django_db
def test_enqueue_joins_the_callers_transaction_and_a_rollback_unenqueues():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        job = EchoWorker.enqueue({"value": 1})
        assert Job.objects.filter(pk=job.pk).exists()  # visible inside the transaction
        raise Boom
    assert not Job.objects.filter(pk=job.pk).exists()
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"s": {1, 2}}, r"args\.s: set is not serializable"),
        ({"o": object()}, r"args\.o: object is not serializable"),
        ({"n": [float("nan")]}, r"args\.n\[0\]: nan is not valid JSON"),
        ({1: "x"}, "args: dict keys must be str"),
    ],
    ids=param_id,
)
def test_enqueue_refuses_unserializable_args_and_inserts_nothing(args, message):
    with pytest.raises(EncodeError, match=message):
        EchoWorker.enqueue(args)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_refuses_unserializable_meta():
    with pytest.raises(EncodeError, match=r"meta\.m: set"):
        EchoWorker.enqueue({}, meta={"m": set()})
    assert Job.objects.count() == 0


@pytest.mark.django_db
@override_settings(RELAY={"MAX_ARGS_BYTES": 100})
def test_enqueue_refuses_oversized_args_per_the_setting():
    EchoWorker.enqueue({"s": "x" * 50})  # under the cap
    with pytest.raises(EncodeError, match=r"args is 1[0-9]{2} bytes encoded; the limit is 100"):
        EchoWorker.enqueue({"s": "x" * 100})
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_the_args_cap_defaults_to_256_kib():
    EchoWorker.enqueue({"s": "x" * (256 * 1024 - 100)})
    with pytest.raises(EncodeError, match="the limit is 262144"):
        EchoWorker.enqueue({"s": "x" * (256 * 1024)})
    assert Job.objects.count() == 1


# -- enqueue_many -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_many_saves_the_very_instances_in_order_with_one_insert():
    jobs = [
        EchoWorker.new({"value": 1}),
        MailWorker.new({"to": "x"}, priority=3),
        EchoWorker.new({"value": 3}, schedule_in=3600),
        BareWorker.new(queue="other"),
    ]
    with CaptureQueriesContext(connection) as queries:
        saved = enqueue_many(jobs)
    assert len(queries) == 1
    assert "INSERT INTO django_relay_job" in queries[0]["sql"]  # one statement, inserting
    assert saved == jobs
    assert all(a is b for a, b in zip(saved, jobs, strict=True))
    ids = [job.pk for job in jobs]
    assert None not in ids
    assert ids == sorted(ids)  # inserted in the order given
    assert [job.state for job in jobs] == ["available", "available", "scheduled", "available"]
    rows = {row.pk: row for row in Job.objects.all()}
    assert set(rows) == set(ids)
    assert rows[jobs[0].pk].args == {"value": 1}
    assert (rows[jobs[1].pk].worker, rows[jobs[1].pk].priority) == (MailWorker.__relay_worker__, 3)
    assert rows[jobs[2].pk].state == JobState.SCHEDULED
    assert rows[jobs[3].pk].queue == "other"
    assert all(not job._state.adding for job in jobs)


@pytest.mark.django_db
def test_enqueue_many_accepts_any_iterable():
    saved = enqueue_many(EchoWorker.new({"value": n}) for n in range(3))
    assert [job.args["value"] for job in saved] == [0, 1, 2]
    assert Job.objects.count() == 3


@pytest.mark.django_db
def test_enqueue_many_of_nothing_sends_nothing():
    with CaptureQueriesContext(connection) as queries:
        assert enqueue_many([]) == []
    assert len(queries) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad_args",
    [{"s": {1}}, {"o": object()}, {"f": float("inf")}, {"big": "x" * 200}],
    ids=["set", "object", "inf", "oversize"],
)
@override_settings(RELAY={"MAX_ARGS_BYTES": 100})
def test_enqueue_many_with_one_bad_job_inserts_nothing(bad_args):
    jobs = [EchoWorker.new({"value": 1}), EchoWorker.new(bad_args), EchoWorker.new({"value": 3})]
    with CaptureQueriesContext(connection) as queries, pytest.raises(EncodeError):
        enqueue_many(jobs)
    assert len(queries) == 0
    assert Job.objects.count() == 0
    assert all(job.pk is None and job._state.adding for job in jobs)


@pytest.mark.django_db
def test_enqueue_many_refuses_saved_jobs_and_non_jobs():
    job = EchoWorker.enqueue({"value": 1})
    with pytest.raises(ValueError, match="already saved"):
        enqueue_many([EchoWorker.new(), job])
    with pytest.raises(TypeError, match="takes Job instances"):
        enqueue_many([{"value": 1}])
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_enqueue_many_refuses_the_same_instance_twice():
    job = EchoWorker.new({"value": 1})
    with pytest.raises(ValueError, match="same Job instance twice"):
        enqueue_many([job, EchoWorker.new(), job])
    assert Job.objects.count() == 0
    assert job.pk is None


# -- the job_enqueued dispatch signal ---------------------------------------------------------


@pytest.mark.django_db
def test_job_enqueued_is_sent_once_per_job_after_insert():
    received: list[tuple[Any, Job, int | None]] = []

    def receiver(sender: Any, job: Job, **kwargs: Any) -> None:
        received.append((sender, job, job.pk))

    signals.job_enqueued.connect(receiver)
    try:
        single = EchoWorker.enqueue({"value": 1})
        many = enqueue_many([MailWorker.new(), EchoWorker.new({"value": 2})])
    finally:
        signals.job_enqueued.disconnect(receiver)
    assert [(s, j) for s, j, _ in received] == [
        (EchoWorker, single),
        (MailWorker, many[0]),
        (EchoWorker, many[1]),
    ]
    assert all(pk is not None for _, _, pk in received)  # sent with the job saved


@pytest.mark.django_db
def test_job_enqueued_is_not_sent_for_a_refused_job():
    received: list[Job] = []

    def receiver(sender: Any, job: Job, **kwargs: Any) -> None:
        received.append(job)

    signals.job_enqueued.connect(receiver)
    try:
        with pytest.raises(EncodeError):
            enqueue_many([EchoWorker.new(), EchoWorker.new({"s": set()})])
    finally:
        signals.job_enqueued.disconnect(receiver)
    assert received == []


# -- async twins ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_aenqueue_inserts_a_job():
    job = await EchoWorker.aenqueue({"value": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}, priority=4)
    assert job.pk is not None
    row = await Job.objects.aget(pk=job.pk)
    assert row.state == JobState.AVAILABLE
    assert row.priority == 4
    assert row.args == {"value": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}


@pytest.mark.django_db(transaction=True)
async def test_aenqueue_refuses_bad_args_and_inserts_nothing():
    with pytest.raises(EncodeError):
        await EchoWorker.aenqueue({"s": {1}})
    assert await Job.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_aenqueue_many_saves_the_very_instances():
    jobs = [EchoWorker.new({"value": n}) for n in range(4)]
    saved = await aenqueue_many(jobs)
    assert all(a is b for a, b in zip(saved, jobs, strict=True))
    ids = [job.pk for job in jobs]
    assert None not in ids and ids == sorted(ids)
    stored = [row async for row in Job.objects.order_by("pk")]
    assert [(row.pk, row.args["value"]) for row in stored] == list(zip(ids, range(4), strict=True))


@pytest.mark.django_db(transaction=True)
async def test_aenqueue_many_with_one_bad_job_inserts_nothing():
    with pytest.raises(EncodeError):
        await aenqueue_many([EchoWorker.new(), EchoWorker.new({"x": object()})])
    assert await Job.objects.acount() == 0

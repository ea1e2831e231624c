"""Unique jobs: a duplicate returns the existing job, race-free, and bad options refuse."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.db import connections

from django_relay import enqueue_many
from django_relay.listener.waiters import get_registry as _registry
from django_relay.models import Job, JobState
from tests.conftest import await_for
from tests.flow_workers import AccountWorker, UniqueWorker
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db(transaction=True)


def test_duplicate_returns_the_existing_job_marked_as_conflict() -> None:
    first = UniqueWorker.enqueue({"value": 1})
    second = UniqueWorker.enqueue({"value": 1})
    other = UniqueWorker.enqueue({"value": 2})
    assert first.conflict is False and other.conflict is False
    assert second.conflict is True
    assert second.pk == first.pk
    assert Job.objects.count() == 2


def test_a_job_leaving_its_unique_states_frees_the_key() -> None:
    first = UniqueWorker.enqueue({"value": 1})
    Job.objects.filter(pk=first.pk).update(state=JobState.COMPLETED)
    assert Job.objects.get(pk=first.pk).unique_key is None  # cleared by the trigger
    again = UniqueWorker.enqueue({"value": 1})
    assert again.conflict is False and again.pk != first.pk


def test_only_the_chosen_args_keys_count() -> None:
    first = AccountWorker.enqueue({"account": 7, "note": "a"})
    second = AccountWorker.enqueue({"account": 7, "note": "b"})
    third = AccountWorker.enqueue({"account": 8, "note": "a"})
    assert second.conflict and second.pk == first.pk
    assert not third.conflict


def test_unique_per_call_and_a_queue_makes_a_difference() -> None:
    first = EchoWorker.enqueue({"value": 1}, unique=True)
    assert EchoWorker.enqueue({"value": 1}, unique=True).pk == first.pk
    elsewhere = EchoWorker.enqueue({"value": 1}, unique=True, queue="other")
    assert not elsewhere.conflict
    # Not unique: a plain enqueue never conflicts.
    assert not EchoWorker.enqueue({"value": 1}).conflict
    assert Job.objects.count() == 3


def test_duplicates_inside_one_batch_return_the_first() -> None:
    jobs = [
        UniqueWorker.new({"value": 1}),
        EchoWorker.new({"value": 1}),
        UniqueWorker.new({"value": 1}),
        UniqueWorker.new({"value": 2}),
    ]
    enqueue_many(jobs)
    assert [job.conflict for job in jobs] == [False, False, True, False]
    assert jobs[2].pk == jobs[0].pk
    assert Job.objects.count() == 3


@pytest.mark.parametrize(
    ("unique", "message"),
    [
        ({"keys": ["nope"]}, "unique keys: args has no key 'nope'"),
        ({"meta_keys": ["nope"]}, "unique meta_keys: meta has no key 'nope'"),
        ({"period": 0}, "unique period"),
        ({"period": -5}, "unique period"),
        ({"states": ["done"]}, "unique states: unknown name 'done'"),
        ({"fields": ["colour"]}, "unique fields: unknown name 'colour'"),
        ({"keys": "account"}, "unique keys must be a list"),
        ({"bogus": 1}, "unique: "),
        ("yes", "unique must be True"),
    ],
)
def test_bad_unique_options_raise_value_error_and_store_nothing(
    unique: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        EchoWorker.enqueue({"value": 1}, unique=unique)
    assert not Job.objects.exists()


def test_bad_unique_option_on_the_decorator_is_refused() -> None:
    from django_relay import worker

    with pytest.raises(ValueError, match="unique period"):

        @worker(unique={"period": 0})
        class Bad:
            def process(self, job: object) -> None: ...


def test_fifty_concurrent_unique_inserts_make_one_job() -> None:
    barrier = threading.Barrier(50)
    ids: list[int] = []
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            barrier.wait(30)
            ids.append(UniqueWorker.enqueue({"value": "race"}).pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=insert) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(ids) == 50
    assert len(set(ids)) == 1
    assert Job.objects.filter(worker=UniqueWorker.__relay_worker__).count() == 1


@pytest.mark.e2e
async def test_relay_of_a_duplicate_awaits_the_existing_jobs_result(
    start_runner, tmp_path: Path
) -> None:
    import asyncio

    from asgiref.sync import sync_to_async

    gate = tmp_path / "gate"
    first = await UniqueWorker.aenqueue({"value": 5, "gate": str(gate)})
    start_runner()
    relayed = asyncio.ensure_future(UniqueWorker.relay({"value": 5, "gate": str(gate)}, timeout=30))
    await await_for(
        lambda: sync_to_async(lambda: Job.objects.get(pk=first.pk).state == JobState.EXECUTING)(),
        timeout=20,
    )
    # The relay must be waiting on the first job before that one may finish: otherwise,
    # on a loaded machine, its insert can come after the first job ended, and no longer
    # be a duplicate.
    await await_for(lambda: first.pk in _registry().waiters, message="the relay to wait")
    gate.touch()
    assert await relayed == 5
    count = await sync_to_async(Job.objects.count)()
    assert count == 1  # the relay inserted nothing: it waited for the first job


def test_a_workflow_step_is_never_unique() -> None:
    from django_relay import Workflow

    UniqueWorker.enqueue({"value": 1})
    jobs = Workflow("w").add("a", UniqueWorker.new({"value": 1})).enqueue()
    assert not jobs[0].conflict
    assert Job.objects.count() == 2


async def test_relays_reserved_insert_of_a_unique_job_is_safe_to_repeat(transactional_db) -> None:
    import dataclasses

    import psycopg
    from asgiref.sync import sync_to_async

    from django_relay import pg, queries
    from django_relay.enqueue import encode

    def row(job_id: int) -> queries.NewJob:
        return dataclasses.replace(encode(UniqueWorker.new({"value": "r"})), id=job_id)

    async with await psycopg.AsyncConnection.connect(
        **pg.connect_kwargs(), autocommit=True
    ) as conn:
        first_id, other_id = await queries.reserve_job_ids(conn, 2)
        [first] = await queries.ainsert_reserved_jobs(conn, [row(first_id)], "relay_finished_test")
        # The same try sent again (its reply was lost): the row that landed, no conflict.
        [again] = await queries.ainsert_reserved_jobs(conn, [row(first_id)], "relay_finished_test")
        # Another relay of a duplicate: the existing job, marked.
        [duplicate] = await queries.ainsert_reserved_jobs(
            conn, [row(other_id)], "relay_finished_test"
        )
    assert (first[0], first[-1]) == (first_id, False)
    assert (again[0], again[-1]) == (first_id, False)
    assert (duplicate[0], duplicate[-1]) == (first_id, True)
    assert await sync_to_async(Job.objects.count)() == 1

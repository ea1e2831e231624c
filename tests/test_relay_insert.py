"""relay()'s insert: ids reserved first, so a try sent again never inserts twice."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from django_relay import RelayTimeout, pg, queries
from django_relay.listener.waiters import get_registry
from django_relay.models import Job
from tests.conftest import await_for
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db(transaction=True)


def row(value: int, job_id: int) -> queries.NewJob:
    return queries.NewJob(
        worker="tests.workers.EchoWorker",
        queue="nobody",
        args=f'{{"value": {value}}}',
        meta="{}",
        max_attempts=1,
        priority=0,
        scheduled_at=None,
        id=job_id,
    )


async def test_an_insert_sent_again_returns_the_rows_that_landed(transactional_db):
    async with await psycopg.AsyncConnection.connect(
        **pg.connect_kwargs(), autocommit=True
    ) as conn:
        ids = await queries.reserve_job_ids(conn, 3)
        first = await queries.ainsert_reserved_jobs(conn, [row(1, ids[1])], "relay_finished_test")
        # The same id again (a try whose reply was lost), between two new ones.
        rows = await queries.ainsert_reserved_jobs(
            conn, [row(i, ids[i]) for i in range(3)], "relay_finished_test"
        )
    assert rows[1] == first[0]
    assert [r[0] for r in rows] == ids
    stored = await sync_to_async(list)(Job.objects.order_by("id").values_list("id", "args"))
    assert stored == [(ids[i], {"value": i}) for i in range(3)]


def run_sql(statement: str, params: Any = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


sql = sync_to_async(run_sql)


async def test_a_relay_whose_insert_was_in_flight_when_its_connection_died_is_enqueued_once():
    registry = get_registry()
    with pytest.raises(RelayTimeout):  # opens the insert link (nobody serves this queue)
        await EchoWorker.relay({"value": 0}, queue="nobody", timeout=0.5)
    pid = registry.inserter.link._conn.info.backend_pid
    # Hold the table so the next insert is sent and then waits, in flight.
    async with await psycopg.AsyncConnection.connect(**pg.connect_kwargs()) as blocker:
        await blocker.execute("LOCK TABLE django_relay_job IN SHARE MODE")
        relay = asyncio.ensure_future(
            EchoWorker.relay({"value": 1}, queue="nobody", timeout=30, cancel_on_timeout=True)
        )

        async def insert_waits() -> bool:
            rows = await sql("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            return rows == [("Lock",)]

        await await_for(insert_waits, message="the relay's insert to wait for the lock")
        assert await sql("SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
        await blocker.rollback()
    await await_for(lambda: registry.waiters, message="the relay to wait for its job")
    [job_id] = registry.waiters
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    values = await sync_to_async(list)(Job.objects.order_by("id").values_list("args", flat=True))
    assert values == [{"value": 0}, {"value": 1}]
    assert job_id == (await sync_to_async(Job.objects.get)(args__value=1)).id

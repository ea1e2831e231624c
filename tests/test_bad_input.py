"""Bad input at enqueue, relay and signal: refused with EncodeError naming the path, or
refused by the database for one job alone, and nothing is inserted for it."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from django_relay import EncodeError, enqueue_many, signal, signal_sync
from django_relay.models import Job, JobSignal
from tests.conftest import await_for
from tests.workers import EchoWorker


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


# Each is accepted by json.dumps or Python, and refused by PostgreSQL (DataError,
# UnicodeEncodeError) or by json itself (ValueError, RecursionError).
BAD = [
    pytest.param({"items": [0, 1, 2, {"name": "a\x00b"}]}, ".items[3].name", id="nul"),
    pytest.param({"n": 10**5000}, ".n", id="huge-int"),
    pytest.param({"s": "\udc80"}, ".s", id="lone-surrogate"),
    pytest.param({"deep": _nested(1000)}, ".deep" + "[0]" * 99, id="deep"),
    pytest.param({"d": {"key\x00": 1}}, ".d", id="nul-in-key"),
]


def _counts() -> tuple[int, int, int]:
    signalled = Job.objects.values_list("signal_count", flat=True)
    return Job.objects.count(), JobSignal.objects.count(), sum(signalled)


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "path"), BAD)
def test_enqueue_refuses_what_postgresql_cannot_hold_and_inserts_nothing(value, path):
    with pytest.raises(EncodeError, match=rf"^args{_re(path)}: "):
        EchoWorker.enqueue(value)
    with pytest.raises(EncodeError, match=rf"^meta{_re(path)}: "):
        EchoWorker.enqueue({}, meta=value)
    with pytest.raises(EncodeError, match=rf"^args{_re(path)}: "):
        enqueue_many([EchoWorker.new({"ok": 1}), EchoWorker.new(value)])
    assert _counts() == (0, 0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "path"), BAD)
def test_signal_refuses_what_postgresql_cannot_hold_and_stores_nothing(value, path):
    job = EchoWorker.enqueue({}, schedule_in=3600)
    with pytest.raises(EncodeError, match=rf"^signal payload{_re(path)}: "):
        signal_sync(job.pk, value)
    assert _counts() == (1, 0, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("value", "path"), BAD)
async def test_async_signal_and_relay_refuse_it_too(value, path):
    job = await EchoWorker.aenqueue({}, schedule_in=3600)
    with pytest.raises(EncodeError, match=rf"^signal payload{_re(path)}: "):
        await signal(job.pk, value)
    with pytest.raises(EncodeError, match=rf"^args{_re(path)}: "):
        await EchoWorker.relay(value, timeout=5)
    assert await sync_to_async(_counts)() == (1, 0, 0)


def _re(path: str) -> str:
    import re

    return re.escape(path)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_one_bad_relay_among_twenty_gathered_fails_alone(start_runner):
    start_runner()
    args = [{"value": i} for i in range(20)]
    args[7] = {"value": "bad\x00"}
    results = await asyncio.gather(
        *(EchoWorker.relay(a, timeout=30) for a in args), return_exceptions=True
    )
    assert isinstance(results[7], EncodeError)
    assert [r for i, r in enumerate(results) if i != 7] == [i for i in range(20) if i != 7]
    assert await sync_to_async(Job.objects.count)() == 19


REFUSE = "ALTER TABLE django_relay_job ADD CONSTRAINT relay_test_refuse CHECK (NOT args ? 'refuse')"


@pytest.fixture
def refusing_table(transactional_db):
    """The job table refuses rows whose args hold the key ``refuse`` (a database-side
    refusal that the codec cannot foresee, like a constraint of the user's own)."""
    with connection.cursor() as cursor:
        cursor.execute(REFUSE)
    yield
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_relay_job DROP CONSTRAINT relay_test_refuse")


@pytest.mark.e2e
async def test_a_relay_the_database_refuses_fails_alone_in_its_batch(refusing_table, start_runner):
    start_runner()
    bad = {3, 9, 10, 17}
    args = [{"refuse": i} if i in bad else {"value": i} for i in range(20)]
    # Hold the table so the relays queue up behind the first insert and go as one batch.
    blocker, probe = await _connect(), await _connect()
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE django_relay_job IN SHARE MODE")
        relays = [asyncio.create_task(EchoWorker.relay(a, timeout=30)) for a in args]
        await await_for(
            lambda: _insert_waiting_on_a_lock(probe), message="an insert waiting on the lock"
        )
        await blocker.execute("COMMIT")
        results = await asyncio.gather(*relays, return_exceptions=True)
    finally:
        await blocker.close()
        await probe.close()
    for i, result in enumerate(results):
        if i in bad:
            assert isinstance(result, psycopg.errors.CheckViolation), (i, result)
        else:
            assert result == i, (i, result)
    assert await sync_to_async(Job.objects.count)() == 20 - len(bad)


async def _connect() -> psycopg.AsyncConnection:
    db = connection.settings_dict
    return await psycopg.AsyncConnection.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"],
        dbname=db["NAME"],
        autocommit=True,
    )


async def _insert_waiting_on_a_lock(conn: psycopg.AsyncConnection) -> bool:
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
            " AND query LIKE '%%INSERT INTO django_relay_job%%'"
        )
        row = await cur.fetchone()
    return bool(row and row[0])

"""``pg.Link``: a lost connection is replaced; an error the server answered with is raised as is.

OperationalError's classes hold both: a socket that closed, and answers such as a
cancelled query, a lock not available, or ``08P01`` (a pooler that bound one client's
prepared statement to another's parameters). Only the first is a connection failure.
"""

from __future__ import annotations

import asyncio

import psycopg
import psycopg.errors
import pytest

from django_relay import pg

pytestmark = pytest.mark.django_db(transaction=True)


async def cancelled_by_the_server(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SET statement_timeout = '1ms'")
    try:
        await conn.execute("SELECT pg_sleep(5)")
    finally:
        await conn.execute("RESET statement_timeout")


@pytest.mark.parametrize("retry", [True, False])
async def test_an_answer_in_operational_errors_classes_is_raised_and_the_connection_kept(retry):
    link = pg.Link("test")
    try:
        # Before: taken for a lost connection, retried for ever (or raised as one).
        async with asyncio.timeout(20):
            with pytest.raises(psycopg.errors.QueryCanceled):
                await link.run(cancelled_by_the_server, retry=retry)
        kept = link._conn
        assert kept is not None and not kept.closed
        assert await link.run(lambda conn: conn.execute("SELECT 1")) is not None
        assert link._conn is kept
    finally:
        await link.close()


async def test_a_lost_connection_raises_connection_lost_without_retry():
    link = pg.Link("test")
    try:
        pid = await link.run(lambda conn: _backend_pid(conn))
        killer = await pg.connect()
        try:
            await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            await killer.close()
        # The server ended the session: an error with a SQLSTATE (57P01), and a
        # closed connection, which is what makes it a lost one.
        with pytest.raises(pg.ConnectionLost) as caught:
            await link.run(lambda conn: conn.execute("SELECT 1"), retry=False)
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)
        assert link._conn is None
        # With retry (the default) the next call reconnects.
        assert await link.run(_backend_pid) != pid
    finally:
        await link.close()


async def _backend_pid(conn: psycopg.AsyncConnection) -> int:
    cursor = await conn.execute("SELECT pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_lost_tells_a_deadline_and_a_client_side_error_from_an_answer():
    assert pg.lost(TimeoutError(), None)
    assert pg.lost(psycopg.OperationalError("consuming input failed"), None)
    assert not pg.lost(psycopg.errors.UniqueViolation("duplicate"), None)
    assert not pg.lost(ValueError("not ours"), None)

"""Faults around the process listener: a relay that ends early, a handler that raises."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from django_relay import queries, signals
from django_relay.listener.notifier import Notifier
from django_relay.listener.waiters import get_registry
from django_relay.models import Job
from tests.conftest import await_for, wait_for
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db(transaction=True)


async def no_waiters_left() -> None:
    await await_for(lambda: get_registry().waiters == {}, message="the registry to have no waiters")


@pytest.fixture
def enqueued_receiver() -> Iterator[list[Any]]:
    """Connect ``receivers[0]`` (set by the test) to ``job_enqueued`` for the test."""
    receivers: list[Any] = []

    async def receiver(sender: Any, job: Job, **kwargs: Any) -> None:
        await receivers[0](job)

    signals.job_enqueued.connect(receiver)
    try:
        yield receivers
    finally:
        signals.job_enqueued.disconnect(receiver)


async def test_a_relay_whose_enqueued_receiver_raises_leaves_no_waiter(enqueued_receiver):
    async def fails(job: Job) -> None:
        raise ValueError("receiver bug")

    enqueued_receiver.append(fails)
    with pytest.raises(ValueError, match="receiver bug"):
        await EchoWorker.relay({"value": 1}, queue="nobody", timeout=30)
    await no_waiters_left()


async def test_a_relay_cancelled_in_its_enqueued_receiver_leaves_no_waiter(enqueued_receiver):
    entered = asyncio.Event()

    async def hangs(job: Job) -> None:
        entered.set()
        await asyncio.Event().wait()

    enqueued_receiver.append(hangs)
    task = asyncio.ensure_future(EchoWorker.relay({"value": 1}, queue="nobody", timeout=30))
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await no_waiters_left()


def notify(channel: str, payload: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def test_the_listener_survives_a_reconnect_handler_that_raises(caplog):
    notifier = Notifier()
    received: list[str] = []

    def broken() -> None:
        raise RuntimeError("handler bug")

    notifier.on_reconnect(broken)
    with caplog.at_level(logging.ERROR, logger="django_relay"):
        notifier.listen(queries.SIGNAL_CHANNEL, received.append)
        try:
            wait_for(notifier.live(queries.SIGNAL_CHANNEL).is_set, message="LISTEN to be live")
            notify(queries.SIGNAL_CHANNEL, "after")
            wait_for(lambda: "after" in received, message="the NOTIFY to be delivered")
            assert notifier._thread is not None and notifier._thread.is_alive()
        finally:
            notifier.stop()
    assert any("handler bug" in r.getMessage() or r.exc_info for r in caplog.records)

"""The live job-event feed: NOTIFY -> listener -> Channels layer -> websocket consumer."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from django.urls import path

from django_relay.consumers import JobEventsConsumer
from tests.conftest import WAIT_TIMEOUT
from tests.workers import EchoWorker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"]),
]

application = URLRouter(
    [
        path("ws/jobs/", JobEventsConsumer.as_asgi()),
        path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
    ]
)


def postgres_layer() -> dict:
    db = connection.settings_dict
    return {
        "BACKEND": "channels_postgres.core.PostgresChannelLayer",
        "CONFIG": {
            "NAME": db["NAME"],
            "USER": db["USER"],
            "PASSWORD": db["PASSWORD"],
            "HOST": db["HOST"],
            "PORT": db["PORT"],
            # channels-postgres yields no layer under USE_TZ=True without this.
            "TIME_ZONE": None,
        },
    }


async def connect(url: str, *, staff: bool = True) -> WebsocketCommunicator:
    user = await sync_to_async(User.objects.create)(username=f"u{staff}", is_staff=staff)
    communicator = WebsocketCommunicator(application, url)
    communicator.scope["user"] = user
    return communicator


@pytest.fixture(params=["memory", "postgres"])
def layer(request):
    if request.param == "memory":
        yield "default"
        return
    layers = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "postgres": postgres_layer(),
    }
    with override_settings(CHANNEL_LAYERS=layers, RELAY={"CHANNEL_LAYER": "postgres"}):
        yield "postgres"


@pytest.fixture(autouse=True)
async def _close_channels_postgres_pool():
    # channels-postgres keeps one module-global pool bound to the first event loop
    # that used it; each test has its own loop, and the test database must be
    # droppable at the end.
    yield
    from channels_postgres import db

    if db.connection_pool is not None:
        await db.connection_pool.close()
        db.connection_pool = None
    db.is_creating_connection_pool = asyncio.Lock()  # also bound to its first loop


async def test_all_jobs_feed_streams_each_finished_attempt(start_runner, layer):
    start_runner()
    communicator = await connect("/ws/jobs/")
    connected, _ = await communicator.connect(timeout=WAIT_TIMEOUT)
    assert connected
    job = await EchoWorker.aenqueue({"value": 1})
    assert await communicator.receive_json_from(timeout=WAIT_TIMEOUT) == {
        "id": job.id,
        "state": "completed",
        "attempt": 1,
    }
    await communicator.disconnect()


async def test_an_open_feed_already_listens_for_events(layer):
    # A fresh listener, so this socket is the first to ask it for the events channel.
    from django_relay.listener.notifier import get_notifier, stop_notifier
    from django_relay.queries import EVENTS_CHANNEL

    await asyncio.to_thread(stop_notifier)
    communicator = await connect("/ws/jobs/")
    connected, _ = await communicator.connect(timeout=WAIT_TIMEOUT)
    assert connected
    # Open means LISTENing: a job that finishes right after the socket opened is reported.
    assert get_notifier().live(EVENTS_CHANNEL).is_set()
    await communicator.disconnect()


async def test_one_job_feed_only_sees_that_job(start_runner, layer):
    start_runner()
    other = await EchoWorker.aenqueue({"value": "other"}, schedule_in=3600)
    job = await EchoWorker.aenqueue({"value": "mine"}, schedule_in=3600)
    communicator = await connect(f"/ws/jobs/{job.id}/")
    connected, _ = await communicator.connect(timeout=WAIT_TIMEOUT)
    assert connected
    from django_relay.models import Job

    # Make both due now; only "mine" is reported to this socket.
    await sync_to_async(Job.objects.filter(id__in=[other.id, job.id]).update)(state="available")
    assert await communicator.receive_json_from(timeout=WAIT_TIMEOUT) == {
        "id": job.id,
        "state": "completed",
        "attempt": 1,
    }
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_non_staff_users_are_refused():
    communicator = await connect("/ws/jobs/", staff=False)
    connected, code = await communicator.connect(timeout=WAIT_TIMEOUT)
    assert (connected, code) == (False, 4403)

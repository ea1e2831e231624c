"""The admin dashboard: its numbers (from the database) and who may see it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from tests.admin_client import staff_user
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db

URL = "/admin/django_relay/job/dashboard/"
DATA = "/admin/django_relay/job/dashboard/data/"


def test_counts_runners_waiting_jobs_and_workers(client):
    client.force_login(staff_user("view_job"))
    JobFactory.create_batch(3)
    JobFactory(queue="mail")
    JobFactory(executing=True, attempted_by="node-a")
    JobFactory(scheduled=True)
    JobFactory(retryable=True)
    waiting = JobFactory(
        scheduled=True, meta={"signal_wait": {"n": 1, "since": "2026-01-01T00:00:00+00:00"}}
    )
    JobFactory.create_batch(2, completed=True)
    JobFactory(discarded=True, worker="tests.workers.GateWorker")
    old = JobFactory(completed=True)
    old.finished_at = timezone.now() - dt.timedelta(hours=2)  # outside the window
    old.save()
    NodeFactory(id="node-a", queues={"default": 10, "mail": 2})

    data = client.get(DATA).json()
    default = next(q for q in data["queues"] if q["queue"] == "default")
    assert default == {
        "queue": "default",
        "available": 3,
        "executing": 1,
        "scheduled": 1,  # the signal wait is counted apart
        "retryable": 1,
        "waiting_for_signal": 1,
        "completed": 2,
        "discarded": 1,
        "cancelled": 0,
    }
    assert next(q for q in data["queues"] if q["queue"] == "mail")["available"] == 1
    assert sum(p["completed"] for p in data["series"]) == 2
    assert data["runners_alive"] == 1
    [runner] = data["runners"]
    assert (runner["id"], runner["executing"], runner["slots"], runner["fresh"]) == (
        "node-a",
        1,
        12,
        True,
    )
    assert [(j["id"], j["since"]) for j in data["waiting"]] == [
        (waiting.pk, "2026-01-01T00:00:00+00:00")
    ]
    assert data["waiting_total"] == 1
    assert [(w["worker"], w["discarded"]) for w in data["failing"]] == [
        ("tests.workers.GateWorker", 1),
        ("tests.workers.EchoWorker", 0),  # one retryable now
    ]
    assert {w["worker"] for w in data["slowest"]} == {
        "tests.workers.EchoWorker",
        "tests.workers.GateWorker",
    }


def test_page_shows_approve_forms_only_to_users_who_may_signal(client):
    client.force_login(staff_user("view_job"))
    page = client.get(URL)
    assert page.status_code == 200
    assert b'data-can-signal=""' in page.content
    assert b'id="relay-snapshot"' in page.content
    client.force_login(staff_user("view_job", "signal_job"))
    assert b'data-can-signal="1"' in client.get(URL).content


def test_staff_without_the_view_permission_are_refused(client):
    client.force_login(staff_user())
    assert client.get(URL).status_code == 403
    assert client.get(DATA).status_code == 403
    client.logout()
    assert client.get(DATA).status_code == 302  # to the login page


def test_the_job_list_links_to_the_dashboard(client):
    client.force_login(staff_user("view_job"))
    assert URL.encode() in client.get("/admin/django_relay/job/").content

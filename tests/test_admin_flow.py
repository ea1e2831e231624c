"""The queue admin: counts and state shown; pause/resume/edit need control_queue."""

from __future__ import annotations

import pytest
from django.urls import reverse

from django_relay import queues
from django_relay.models import Queue
from tests.admin_client import AdminClient, staff_user
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_relay_queue_changelist")


def test_the_list_shows_state_limits_and_counts() -> None:
    queues.limit_queue("mail", global_limit=3, rate_limit=10, rate_period=1)
    queues.pause_queue("mail")
    EchoWorker.enqueue({"value": 1}, queue="mail")
    page = AdminClient(staff_user("view_queue"), CHANGELIST).get(CHANGELIST)
    assert page.status_code == 200
    text = page.content.decode()
    assert "paused" in text and "10/1s" in text
    assert 'class="field-available">1<' in text


def test_pause_and_resume_need_their_own_permission() -> None:
    queues.scale_queue("mail", 2)
    viewer = AdminClient(staff_user("view_queue"), CHANGELIST)
    assert "Pause selected queues" not in viewer.get(CHANGELIST).content.decode()
    viewer.post({"action": "pause", "_selected_action": ["mail"]})
    assert not Queue.objects.get(name="mail").paused
    controller = AdminClient(staff_user("view_queue", "control_queue"), CHANGELIST)
    controller.post({"action": "pause", "_selected_action": ["mail"]})
    assert Queue.objects.get(name="mail").paused
    controller.post({"action": "resume", "_selected_action": ["mail"]})
    assert not Queue.objects.get(name="mail").paused


def test_the_form_refuses_bad_limits() -> None:
    queues.scale_queue("mail", 2)
    url = reverse("admin:django_relay_queue_change", args=["mail"])
    client = AdminClient(staff_user("view_queue", "control_queue"), url)
    client.changelist = url
    page = client.post({"local_limit": 2, "rate_limit": 5, "rate_period": 0, "partition": ""})
    assert page.status_code == 200  # the form again, with the error
    assert "rate_period must be a positive number" in page.content.decode()
    assert Queue.objects.get(name="mail").rate_limit is None
    client.post({"local_limit": 4, "global_limit": 2, "partition": "worker"})
    row = Queue.objects.get(name="mail")
    assert (row.local_limit, row.global_limit, row.partition) == (4, 2, "worker")


PERIODIC_LIST = reverse("admin:django_relay_periodicentry_changelist")


@pytest.mark.django_db(transaction=True)
def test_periodic_entries_show_next_and_last_run_and_run_now_needs_permission() -> None:
    import datetime as dt

    from django.conf import settings
    from django.test import override_settings

    from django_relay import periodic
    from django_relay.models import Job

    entry = {"cron": "0 3 * * *", "worker": "tests.flow_workers.TickWorker", "name": "nightly"}
    with override_settings(RELAY={**settings.RELAY, "PERIODIC": [entry]}):
        start = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
        periodic.enqueue_due(start + dt.timedelta(hours=1, seconds=1), start)
        viewer = AdminClient(staff_user("view_periodicentry"), PERIODIC_LIST)
        text = viewer.get(PERIODIC_LIST).content.decode()
        assert "0 3 * * * (UTC)" in text and "nightly" in text
        assert "Run selected periodic jobs now" not in text
        viewer.post({"action": "run_now", "_selected_action": ["nightly"]})
        assert Job.objects.count() == 1
        runner = AdminClient(staff_user("view_periodicentry", "run_periodic"), PERIODIC_LIST)
        runner.post({"action": "run_now", "_selected_action": ["nightly"]})
        assert Job.objects.filter(meta__manual=True).count() == 1

"""The job admin: actions guarded by their own permissions, CSRF enforced, API-backed."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_relay.models import Job, JobSignal
from tests.admin_client import AdminClient, staff_user
from tests.signal_workers import ApprovalWorker

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_relay_job_changelist")


def staff(*codenames: str) -> User:
    return staff_user("view_job", *codenames)


def csrf_client(user: User) -> AdminClient:
    return AdminClient(user, CHANGELIST)


def post(client: AdminClient, data: dict) -> object:
    return client.post(data)


def waiting_job(**args) -> Job:
    job = ApprovalWorker.enqueue(args, schedule_in=3600)
    Job.objects.filter(pk=job.pk).update(
        meta={"signal_wait": {"n": 1, "since": "x", "deadline": None}}
    )
    return job


def test_approve_shows_a_confirmation_then_signals_waiting_jobs_only():
    approver = staff("signal_job")
    client = csrf_client(approver)
    waiting, busy = waiting_job(user_id=1), ApprovalWorker.enqueue({"user_id": 2})
    selection = {"action": "approve", "_selected_action": [waiting.pk, busy.pk]}

    page = post(client, selection)
    assert page.status_code == 200 and b"Note (optional)" in page.content
    assert not JobSignal.objects.exists()  # nothing is sent before confirming

    post(client, {**selection, "apply": "1", "note": "looks fine"})
    [sent] = JobSignal.objects.all()
    assert sent.job_id == waiting.pk and sent.sender == approver.username
    assert sent.payload == {"decision": "approved", "by": approver.username, "note": "looks fine"}
    assert LogEntry.objects.filter(object_id=str(waiting.pk)).exists()
    waiting.refresh_from_db()
    assert waiting.state == "available"  # woken by the signal's trigger

    # A double click sends nothing more.
    post(client, {**selection, "apply": "1"})
    assert JobSignal.objects.count() == 1


def test_decline_sends_declined():
    client = csrf_client(staff("signal_job"))
    job = waiting_job()
    post(client, {"action": "decline", "_selected_action": [job.pk], "apply": "1"})
    assert JobSignal.objects.get().payload["decision"] == "declined"


def test_users_without_the_permission_neither_see_nor_force_the_actions():
    client = csrf_client(staff())
    job = waiting_job()
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    for action in (b'value="approve"', b'value="decline"', b'value="retry"', b'value="cancel"'):
        assert action not in page.content
    for action in ("approve", "decline", "retry", "cancel"):
        post(client, {"action": action, "_selected_action": [job.pk], "apply": "1"})
    assert not JobSignal.objects.exists()
    job.refresh_from_db()
    assert job.state == "scheduled"


def test_actions_require_the_csrf_token():
    user = staff("signal_job")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    job = waiting_job()
    response = client.post(
        CHANGELIST, {"action": "approve", "_selected_action": [job.pk], "apply": "1"}
    )
    assert response.status_code == 403
    assert not JobSignal.objects.exists()


def test_retry_and_cancel_have_their_own_permissions():
    job = ApprovalWorker.enqueue({})
    Job.objects.filter(pk=job.pk).update(state="discarded", attempt=20)

    post(csrf_client(staff("cancel_job")), {"action": "retry", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.state == "discarded"

    post(csrf_client(staff("retry_job")), {"action": "retry", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert (job.state, job.max_attempts) == ("available", 21)

    post(csrf_client(staff("cancel_job")), {"action": "cancel", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.state == "cancelled" and "in the admin" in job.errors[-1]["error"]


def test_detail_page_shows_args_errors_and_signals():
    client = csrf_client(staff())
    job = ApprovalWorker.enqueue({"user_id": 99}, schedule_in=3600)
    JobSignal.objects.create(job=job, seq=1, payload={"decision": "approved"}, sender="ann")
    Job.objects.filter(pk=job.pk).update(
        state="scheduled",
        meta={"signal_wait": {"n": 2, "since": "t", "deadline": None}},
        errors=[
            {
                "attempt": 1,
                "kind": "error",
                "error": "RuntimeError: boom",
                "at": "t",
                "traceback": "Traceback...",
            }
        ],
    )
    page = client.get(reverse("admin:django_relay_job_change", args=[job.pk]))
    assert page.status_code == 200
    for text in (b"user_id", b"RuntimeError: boom", b"approved", b"waiting for a signal"):
        assert text in page.content


def test_search_by_id_and_args():
    client = csrf_client(staff())
    needle = ApprovalWorker.enqueue({"email": "needle@example.com"})
    hay = ApprovalWorker.enqueue({"email": "hay@example.com"})
    page = client.get(CHANGELIST, {"q": "needle@"})
    assert f">{needle.pk}<".encode() in page.content and f">{hay.pk}<".encode() not in page.content
    page = client.get(CHANGELIST, {"q": str(hay.pk)})
    assert f">{hay.pk}<".encode() in page.content


def test_a_row_the_codec_refuses_still_shows_in_the_admin():
    client = csrf_client(staff())
    job = ApprovalWorker.enqueue({})
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE django_relay_job SET args = '{"x": {"__relay__": "pickle", "v": "AA"}}' """
            "WHERE id = %s",
            [job.pk],
        )
    assert client.get(CHANGELIST).status_code == 200
    page = client.get(reverse("admin:django_relay_job_change", args=[job.pk]))
    assert page.status_code == 200 and b"pickle" in page.content


def test_a_row_nested_deeper_than_the_codec_stores_still_shows_in_the_admin():
    client = csrf_client(staff())
    job = ApprovalWorker.enqueue({})
    from django.db import connection

    deep = "[" * 150 + "]" * 150
    with connection.cursor() as cursor:
        cursor.execute("UPDATE django_relay_job SET args = %s::jsonb WHERE id = %s", [deep, job.pk])
    page = client.get(reverse("admin:django_relay_job_change", args=[job.pk]))
    assert page.status_code == 200 and b"[" * 150 in page.content.replace(b" ", b"").replace(
        b"\n", b""
    )

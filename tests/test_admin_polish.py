"""The job admin as an operator reads it: relative times, badges, what a decision is for,
search over errors/results/signals, short worker names, a deadline filter, the replay warning."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import django
import pytest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from django_relay import worker
from django_relay.models import Job, JobSignal
from tests.admin_client import AdminClient, staff_user
from tests.factories import JobFactory
from tests.signal_workers import ApprovalWorker

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_relay_job_changelist")


@worker(queue="default")
class RefundWorker:
    """A worker that tells the approver what it is asking for."""

    def summary(self, job: Any) -> str:
        return f"Refund {job.args['amount']} EUR to customer {job.args['customer']}"

    async def process(self, job: Any) -> Any:
        return None


def client(*codenames: str) -> AdminClient:
    return AdminClient(staff_user("view_job", *codenames), CHANGELIST)


def wait_for_signal(job: Job, *, since: dt.timedelta, deadline: dt.timedelta | None) -> Job:
    now = timezone.now()
    wait = {
        "n": 1,
        "since": (now - since).isoformat(),
        "deadline": None if deadline is None else (now + deadline).isoformat(),
    }
    Job.objects.filter(pk=job.pk).update(
        state="scheduled", scheduled_at=now + dt.timedelta(hours=1), meta={"signal_wait": wait}
    )
    job.refresh_from_db()
    return job


def state_cell(page: Any, job: Job) -> str:
    # The row of one job: its id cell up to the end of the row.
    html = page.content.decode()
    match = re.search(rf'<a href="[^"]*/{job.pk}/change/[^"]*">{job.pk}</a>.*?</tr>', html, re.S)
    assert match, f"job {job.pk} is not listed"
    return match.group(0)


def test_state_column_shows_relative_times_and_a_badge_naming_the_state():
    waiting = wait_for_signal(
        ApprovalWorker.enqueue({}),
        since=dt.timedelta(minutes=3, seconds=10),
        deadline=dt.timedelta(hours=23, minutes=10),
    )
    retrying = JobFactory(retryable=True, scheduled_at=timezone.now() + dt.timedelta(minutes=30))
    finished = timezone.now() - dt.timedelta(minutes=5)
    ran = JobFactory(
        completed=True, attempted_at=finished - dt.timedelta(seconds=1.2), finished_at=finished
    )

    page = client().get(CHANGELIST)

    cell = state_cell(page, waiting)
    assert '<span class="relay-badge relay-waiting">waiting for a signal</span>' in cell
    assert "waiting 3 min, deadline in 23 h" in cell
    assert "retry in 30 min" in state_cell(page, retrying)
    assert 'relay-badge relay-retryable">retryable<' in state_cell(page, retrying)
    assert "completed, ran 1.2 s" in state_cell(page, ran)
    # The exact times are still there, in the title, not in the visible text.
    visible = re.sub(r'title="[^"]*"', "", cell)
    assert waiting.signal_wait["since"] not in visible and waiting.signal_wait["since"] in cell
    assert ".relay-waiting" in page.content.decode()  # the badge CSS ships with the page


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1.2, "1.2 s"), (40, "40 s"), (180, "3 min"), (23 * 3600, "23 h"), (7 * 86400, "7 days")],
)
def test_durations_read_as_an_operator_says_them(seconds, text):
    from django_relay.admin.display import duration

    assert duration(seconds) == text


def test_confirmation_shows_what_is_approved_and_the_wait():
    refund = wait_for_signal(
        RefundWorker.enqueue({"amount": 120, "customer": "C-42"}),
        since=dt.timedelta(hours=2, minutes=5),
        deadline=None,
    )
    plain = wait_for_signal(
        ApprovalWorker.enqueue({"user_id": 7, "plan": "gold"}),
        since=dt.timedelta(minutes=10, seconds=5),
        deadline=dt.timedelta(days=3, hours=1),
    )
    page = client("signal_job").post(
        {"action": "approve", "_selected_action": [refund.pk, plain.pk]}
    )
    html = page.content.decode()
    assert "Refund 120 EUR to customer C-42" in html  # the worker's summary()
    assert "{&quot;plan&quot;: &quot;gold&quot;, &quot;user_id&quot;: 7}" in html  # else args
    assert "waiting 2 h, no deadline" in html
    assert "waiting 10 min, deadline in 3 days" in html
    assert "(scheduled)" not in html


def test_a_failing_summary_falls_back_to_the_args():
    job = wait_for_signal(
        RefundWorker.enqueue({"amount": 5}), since=dt.timedelta(minutes=1), deadline=None
    )
    page = client("signal_job").post({"action": "decline", "_selected_action": [job.pk]})
    assert "{&quot;amount&quot;: 5}" in page.content.decode()


def test_confirmation_breadcrumbs_use_the_installed_djangos_markup():
    job = wait_for_signal(ApprovalWorker.enqueue({}), since=dt.timedelta(0), deadline=None)
    html = (
        client("signal_job")
        .post({"action": "approve", "_selected_action": [job.pk]})
        .content.decode()
    )
    crumbs = re.search(r'<nav aria-label="Breadcrumbs">(.*?)</nav>', html, re.S)
    assert crumbs, "the page fills the admin's breadcrumbs block"
    if django.VERSION >= (6, 0):
        assert '<ol class="breadcrumbs">' in crumbs.group(1)
        assert '<li aria-current="page">Send “approved” to waiting jobs</li>' in crumbs.group(1)
        assert '<div class="breadcrumbs">' not in html
    else:
        assert '<div class="breadcrumbs">' in crumbs.group(1)


def test_breadcrumbs_fall_back_to_the_div_markup_of_django_5():
    # The branch Django 5.2 takes, rendered on whatever Django is installed.
    opts = Job._meta
    html = render_to_string(
        "admin/django_relay/breadcrumbs.html",
        {"ol_breadcrumbs": False, "opts": opts, "changelist_url": CHANGELIST, "title": "T"},
    )
    assert '<div class="breadcrumbs">' in html and "&rsaquo; T" in html and "<ol" not in html


def test_search_covers_errors_results_and_signal_payloads():
    failed = JobFactory(
        retryable=True, errors=[{"attempt": 1, "kind": "error", "error": "KaboomError: disk"}]
    )
    done = JobFactory(completed=True, result={"invoice": "INV-7731"})
    signalled = ApprovalWorker.enqueue({})
    JobSignal.objects.create(job=signalled, seq=1, payload={"note": "ok by Zebedee"})
    JobFactory()  # matches nothing

    admin = client()
    for term, job in (("kaboom", failed), ("inv-7731", done), ("zebedee", signalled)):
        page = admin.get(CHANGELIST, {"q": term})
        assert [row.pk for row in page.context["cl"].result_list] == [job.pk], term


def test_worker_filter_uses_the_short_names_of_the_list():
    approval = ApprovalWorker.enqueue({})
    JobFactory()
    page = client().get(CHANGELIST)
    choices = {
        choice["display"]
        for spec in page.context["cl"].filter_specs
        if getattr(spec, "parameter_name", None) == "worker"
        for choice in spec.choices(page.context["cl"])
    }
    assert {"ApprovalWorker", "EchoWorker"} <= choices
    assert not any("." in str(choice) for choice in choices)

    page = client().get(CHANGELIST, {"worker": approval.worker})
    assert [row.pk for row in page.context["cl"].result_list] == [approval.pk]


@pytest.mark.parametrize(
    ("hours", "expected"),
    [("1", {"soon"}), ("24", {"soon", "today"}), ("168", {"soon", "today", "week"})],
)
def test_deadline_within_filter(hours, expected):
    jobs = {
        name: wait_for_signal(ApprovalWorker.enqueue({}), since=dt.timedelta(0), deadline=delta)
        for name, delta in (
            ("soon", dt.timedelta(minutes=30)),
            ("today", dt.timedelta(hours=10)),
            ("week", dt.timedelta(days=3)),
            ("later", dt.timedelta(days=30)),
            ("never", None),
        )
    }
    JobFactory(scheduled=True)  # not waiting for a signal
    page = client().get(CHANGELIST, {"deadline_within": hours})
    names = {name for name, job in jobs.items() if job in page.context["cl"].result_list}
    assert names == expected


def test_retrying_a_job_that_already_got_a_decision_warns_that_it_replays():
    decided = JobFactory(cancelled=True)
    JobSignal.objects.create(
        job=decided, seq=1, payload={"decision": "declined", "by": "ann"}, sender="ann"
    )
    plain = JobFactory(discarded=True)
    admin = client("retry_job")

    admin.post({"action": "retry", "_selected_action": [decided.pk, plain.pk]})
    html = admin.get(CHANGELIST).content.decode()
    assert "2 jobs will run again." in html
    assert "already received signals" in html
    assert f"job {decided.pk} (1, last: " in html and "declined" in html
    assert f"job {plain.pk} " not in html

    admin.post({"action": "retry", "_selected_action": [plain.pk]})
    assert "already received signals" not in admin.get(CHANGELIST).content.decode()

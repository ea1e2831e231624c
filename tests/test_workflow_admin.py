"""The workflow admin: derived states, the graph on the page, a guarded cancel action."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_relay import Workflow
from django_relay.models import Job, WorkflowRun
from tests.admin_client import AdminClient, staff_user
from tests.signal_workers import ApprovalWorker
from tests.workflow_workers import ChargeWorker, StepWorker

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_relay_workflowrun_changelist")


def staff(*codenames: str, view_jobs: bool = True) -> User:
    return staff_user("view_workflowrun", *(["view_job"] if view_jobs else []), *codenames)


def csrf_client(user: User) -> AdminClient:
    return AdminClient(user, CHANGELIST)


def post(client: AdminClient, data: dict) -> object:
    return client.post(data)


def order(name: str, approval: str = "approval") -> Workflow:
    workflow = (
        Workflow(name=name)
        .add(approval, ApprovalWorker.new({"user_id": 1}))
        .add("charge", ChargeWorker.new({"user_id": 1}), deps=[approval])
    )
    workflow.enqueue()
    return workflow


def set_state(workflow: Workflow, step: str, state: str, **fields: object) -> None:
    Job.objects.filter(pk=workflow.steps[step].job.pk).update(state=state, **fields)


def wait_for_signal(workflow: Workflow, step: str) -> None:
    set_state(
        workflow,
        step,
        "scheduled",
        meta={"signal_wait": {"n": 1, "since": "2025-01-01T00:00:00+00:00", "deadline": None}},
    )


def detail(run: WorkflowRun | None) -> str:
    assert run is not None
    return reverse("admin:django_relay_workflowrun_change", args=[run.pk])


def test_the_list_shows_each_run_with_its_derived_state():
    running = order("order-running")
    completed = order("order-completed")
    Job.objects.filter(workflow=completed.run).update(state="completed")
    failed = order("order-failed")
    set_state(failed, "approval", "discarded")  # the trigger cancels "charge"
    waiting = order("order-waiting")
    wait_for_signal(waiting, "approval")

    client = csrf_client(staff())
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    rows = {run.name: run for run in page.context["cl"].result_list}
    admin_ = page.context["cl"].model_admin
    assert {name: admin_.status(run) for name, run in rows.items()} == {
        "order-running": "running",
        "order-completed": "completed",
        "order-failed": "failed",
        "order-waiting": "running (1 step waiting for a signal)",
    }
    assert admin_.progress(rows["order-completed"]) == "2/2"
    assert admin_.progress(rows["order-running"]) == "0/2"
    for run in (running, completed, failed, waiting):
        assert run.run.name.encode() in page.content
    # The same rule as Workflow.state().
    assert Workflow.load(failed.run.pk).state() == "failed"
    assert Workflow.load(completed.run.pk).state() == "completed"

    for state, names in {
        "running": {"order-running", "order-waiting"},
        "completed": {"order-completed"},
        "failed": {"order-failed"},
    }.items():
        page = client.get(CHANGELIST, {"state": state})
        assert {run.name for run in page.context["cl"].result_list} == names


def test_the_list_takes_the_same_queries_for_one_run_or_many():
    client = csrf_client(staff())
    order("first")
    one = _count_queries(client)
    for i in range(5):
        order(f"more-{i}")
    assert _count_queries(client) == one


def _count_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(CHANGELIST).status_code == 200
    return len(captured)


def test_the_detail_page_draws_the_graph_and_lists_the_steps():
    run = order("order-7").run
    loaded = Workflow.load(run)
    wait_for_signal(loaded, "approval")

    page = csrf_client(staff("signal_job")).get(detail(run))
    assert page.status_code == 200
    html = page.content.decode()
    start = html.index('class="relay-graph"')
    svg = html[start : html.index("</svg>", start)]
    assert 'data-step="approval" data-state="waiting"' in svg
    assert 'data-step="charge" data-state="suspended"' in svg
    assert svg.count('class="relay-edge"') == 1
    assert "<pre" in html and "s0 --&gt; s1" in html  # the Mermaid text, escaped in <pre>
    assert loaded.to_mermaid().splitlines()[1].replace('"', "&quot;") in html
    for job in (loaded.steps["approval"].job, loaded.steps["charge"].job):
        assert reverse("admin:django_relay_job_change", args=[job.pk]) in html
    assert "waiting for a signal" in html
    approval = loaded.steps["approval"].job.pk
    assert f"?waiting=yes&amp;id__exact={approval}" in html  # where Approve/Decline apply


def test_the_approve_link_leads_to_the_waiting_job_only():
    workflow = order("order-8")
    wait_for_signal(workflow, "approval")
    order("order-9")  # another job that must not be listed
    approval = workflow.steps["approval"].job.pk
    client = csrf_client(staff("signal_job"))
    page = client.get(
        reverse("admin:django_relay_job_changelist"), {"waiting": "yes", "id__exact": approval}
    )
    assert [job.pk for job in page.context["cl"].result_list] == [approval]
    assert b'value="approve"' in page.content


def test_without_signal_or_job_permissions_the_page_has_no_links():
    workflow = order("order-10")
    wait_for_signal(workflow, "approval")
    html = csrf_client(staff(view_jobs=False)).get(detail(workflow.run)).content.decode()
    assert 'class="relay-graph"' in html and "waiting for a signal" in html
    assert reverse("admin:django_relay_job_change", args=[workflow.steps["charge"].job.pk]) not in (
        html
    )
    assert "id__exact" not in html


def test_step_names_are_escaped_everywhere():
    evil = '<script>alert("x")</script>'
    workflow = order("<b>bold</b>", approval=evil)
    html = csrf_client(staff()).get(detail(workflow.run)).content.decode()
    assert "<script>alert" not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html
    assert "#lt;script#gt;" in html  # Mermaid's own escape, in the <pre>


def test_the_page_can_be_viewed_but_not_changed_or_added():
    workflow = order("order-11")
    client = csrf_client(staff())
    assert client.get(reverse("admin:django_relay_workflowrun_add")).status_code == 403
    page = client.get(detail(workflow.run))
    assert b'name="_save"' not in page.content


def test_the_cancel_action_needs_the_cancel_permission():
    workflow = order("order-12")
    client = csrf_client(staff("signal_job"))
    assert b'value="cancel"' not in client.get(CHANGELIST).content
    post(client, {"action": "cancel", "_selected_action": [workflow.run.pk]})
    assert Workflow.load(workflow.run.pk).states() == {
        "approval": "available",
        "charge": "suspended",
    }


def test_the_cancel_action_cancels_unfinished_steps_only():
    workflow = (
        Workflow(name="order-13")
        .add("a", StepWorker.new({}))
        .add("b", StepWorker.new({}), deps=["a"])
        .add("c", StepWorker.new({}))
    )
    workflow.enqueue()
    set_state(workflow, "c", "completed")
    other = order("order-14")

    client = csrf_client(staff("cancel_job"))
    assert b'value="cancel"' in client.get(CHANGELIST).content
    response = post(client, {"action": "cancel", "_selected_action": [workflow.run.pk]})
    assert response.status_code == 302

    assert Workflow.load(workflow.run.pk).states() == {
        "a": "cancelled",
        "b": "cancelled",
        "c": "completed",
    }
    a = Job.objects.get(pk=workflow.steps["a"].job.pk)
    assert "in the admin" in a.errors[-1]["error"]
    assert Workflow.load(other.run.pk).state() == "running"  # not selected
    assert LogEntry.objects.filter(object_id=str(workflow.run.pk)).exists()
    page = client.get(CHANGELIST, {"state": "failed"})
    assert [run.pk for run in page.context["cl"].result_list] == [workflow.run.pk]


def test_the_cancel_action_requires_the_csrf_token():
    workflow = order("order-15")
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff("cancel_job"))
    response = client.post(CHANGELIST, {"action": "cancel", "_selected_action": [workflow.run.pk]})
    assert response.status_code == 403
    assert Workflow.load(workflow.run.pk).state() == "running"


def test_a_missing_run_redirects_like_any_admin_object():
    response = csrf_client(staff()).get(
        reverse("admin:django_relay_workflowrun_change", args=[10**9])
    )
    assert response.status_code == 302

"""The example project's approval flow: order form -> workflow -> status page."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from example_app.workers import ChargeWorker, OrderApprovalWorker

from django_relay import Workflow
from django_relay.models import Job, JobSignal, WorkflowRun
from tests.conftest import wait_for
from tests.workflow_workers import StepWorker

NEW = reverse("example_app:new_order")
CREATE = reverse("example_app:create_order")


def csrf_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    page = client.get(NEW)
    assert page.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in page.content
    return client


def place_order(client: Client, item: str = "teapot", amount: str = "12.50") -> Workflow:
    response = client.post(
        CREATE,
        {"item": item, "amount": amount, "csrfmiddlewaretoken": client.cookies["csrftoken"].value},
    )
    assert response.status_code == 302, response.content
    match = re.fullmatch(r"/orders/(\d+)/", response["Location"])
    assert match, response["Location"]
    return Workflow.load(int(match[1]))


def status_page(client: Client, workflow: Workflow) -> str:
    assert workflow.run is not None
    response = client.get(reverse("example_app:order_status", args=[workflow.run.pk]))
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_an_order_enqueues_approval_then_charge():
    workflow = place_order(csrf_client())
    assert workflow.name and re.fullmatch(r"order-[0-9a-f]{12}", workflow.name)
    approval, charge = workflow.steps["approval"].job, workflow.steps["charge"].job
    assert approval.worker == OrderApprovalWorker.__relay_worker__
    assert charge.worker == ChargeWorker.__relay_worker__
    assert (approval.state, charge.state) == ("available", "suspended")
    assert charge.deps == ["approval"]
    order = workflow.name.removeprefix("order-")
    assert approval.args == charge.args == {"order": order, "item": "teapot", "amount": "12.50"}


@pytest.mark.django_db
def test_placing_an_order_needs_the_csrf_token_and_valid_input():
    client = csrf_client()
    assert client.post(CREATE, {"item": "teapot", "amount": "1"}).status_code == 403
    token = client.cookies["csrftoken"].value
    bad = client.post(CREATE, {"item": "", "amount": "-3", "csrfmiddlewaretoken": token})
    assert bad.status_code == 400 and b"errorlist" in bad.content
    assert client.get(CREATE).status_code == 405
    assert not WorkflowRun.objects.exists()


@pytest.mark.django_db
def test_the_status_page_follows_the_steps():
    client = csrf_client()
    workflow = place_order(client)
    approval, charge = workflow.steps["approval"].job, workflow.steps["charge"].job

    html = status_page(client, workflow)
    assert 'id="state">running<' in html and "suspended" in html
    assert 'http-equiv="refresh"' in html  # refreshes itself until decided
    assert reverse("admin:django_relay_workflowrun_change", args=[workflow.run.pk]) in html

    Job.objects.filter(pk=approval.pk).update(
        state="scheduled", meta={"signal_wait": {"n": 1, "since": "t", "deadline": None}}
    )
    html = status_page(client, workflow)
    assert "waiting for a signal" in html
    assert f"/admin/django_relay/job/?waiting=yes&amp;id__exact={approval.pk}" in html

    Job.objects.filter(pk=approval.pk).update(
        state="completed", meta={}, result={"order": "x", "approved_by": "ann"}
    )
    Job.objects.filter(pk=charge.pk).update(
        state="completed", result={"order": "x", "charged": "12.50", "approved_by": "ann"}
    )
    html = status_page(client, workflow)
    assert 'id="state">completed<' in html and 'http-equiv="refresh"' not in html
    assert "Approved by ann; charged 12.50." in html


@pytest.mark.django_db
def test_the_status_page_says_why_an_order_was_not_charged():
    client = csrf_client()
    workflow = place_order(client)
    approval = workflow.steps["approval"].job
    Job.objects.filter(pk=approval.pk).update(
        state="cancelled", errors=[{"attempt": 1, "kind": "cancel", "error": "declined by bob"}]
    )  # the trigger cancels "charge"
    html = status_page(client, workflow)
    assert 'id="state">failed<' in html
    assert "Not charged: declined by bob." in html


@pytest.mark.django_db
def test_the_status_page_shows_orders_only():
    client = Client()
    other = Workflow(name="nightly").add("only", StepWorker.new({}))
    other.enqueue()
    assert other.run is not None
    url = reverse("example_app:order_status", args=[other.run.pk])
    assert client.get(url).status_code == 404
    missing = reverse("example_app:order_status", args=[other.run.pk + 1000])
    assert client.get(missing).status_code == 404


@pytest.mark.e2e
def test_approve_one_order_and_decline_another_with_a_real_runner(start_runner):
    start_runner()
    client = csrf_client()
    approved, declined = place_order(client), place_order(client, "kettle", "30.00")

    def waiting(workflow: Workflow) -> bool:
        # In its live wait (executing) or, after wait_timeout, snoozed (scheduled).
        return workflow.states()["approval"] in ("executing", "scheduled")

    wait_for(lambda: waiting(approved) and waiting(declined), message="approvals waiting")
    assert approved.signal_sync("approval", {"decision": "approved", "by": "ann"}) == 1
    assert declined.signal_sync("approval", {"decision": "declined", "by": "bob"}) == 1

    def page_once(workflow: Workflow, state: str) -> str | None:
        html = status_page(client, workflow)
        return html if f'id="state">{state}<' in html else None

    html = wait_for(lambda: page_once(approved, "completed"), 20, message="approved order done")
    assert "Approved by ann; charged 12.50." in html
    html = wait_for(lambda: page_once(declined, "failed"), 20, message="declined order done")
    assert "Not charged: declined by bob." in html
    assert declined.states() == {"approval": "cancelled", "charge": "cancelled"}


@pytest.mark.django_db
def test_deciding_on_the_demo_page_needs_the_permission_to_signal_jobs():
    from django.contrib.auth.models import Permission, User

    workflow = place_order(csrf_client())
    assert workflow.run is not None
    url = reverse("example_app:demo_decide", args=[workflow.run.pk])
    client = Client()
    assert client.post(url, {"decision": "approved"}).status_code == 403  # anonymous
    clerk = User.objects.create_user("clerk", is_staff=True)
    client.force_login(clerk)
    assert client.post(url, {"decision": "approved"}).status_code == 403  # staff, no permission
    assert not JobSignal.objects.exists()

    clerk.user_permissions.add(Permission.objects.get(codename="signal_job"))
    client.force_login(User.objects.get(pk=clerk.pk))  # a fresh permission cache
    assert client.post(url, {"decision": "maybe"}).status_code == 400
    response = client.post(url, {"decision": "declined"})
    assert response.status_code == 200 and response.json() == {"sent": 1}
    signal = JobSignal.objects.get()
    assert signal.job_id == workflow.steps["approval"].job.pk
    assert signal.sender == "clerk"
    assert signal.payload == {"decision": "declined", "by": "clerk"}

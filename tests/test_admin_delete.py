"""Deleting in the admin: only rows nothing live needs, per object and in bulk."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from django_relay import Workflow
from django_relay.models import Job, Node, WorkflowRun
from tests.admin_client import AdminClient, staff_user
from tests.workers import EchoWorker
from tests.workflow_workers import StepWorker

pytestmark = pytest.mark.django_db


class Admin(AdminClient):
    def __init__(self, model: str, *codenames: str) -> None:
        self.model = model
        user = staff_user(f"view_{model}", f"delete_{model}", *codenames)
        super().__init__(user, reverse(f"admin:django_relay_{model}_changelist"))

    def post_to(self, url: str, data: dict):
        token = self.client.cookies["csrftoken"].value
        return self.client.post(url, {**data, "csrfmiddlewaretoken": token})

    def delete_one(self, pk: object):
        return self.post_to(
            reverse(f"admin:django_relay_{self.model}_delete", args=[pk]), {"post": "yes"}
        )

    def delete_page(self, pk: object):
        return self.client.get(reverse(f"admin:django_relay_{self.model}_delete", args=[pk]))

    def delete_selected(self, *pks: object):
        return self.post(
            {"action": "delete_selected", "_selected_action": [str(p) for p in pks], "post": "yes"}
        )


def job_in(state: str, **fields: object) -> Job:
    job = EchoWorker.enqueue({})
    Job.objects.filter(pk=job.pk).update(state=state, **fields)
    return job


def exists(model: type, pk: object) -> bool:
    return model.objects.filter(pk=pk).exists()


@pytest.mark.parametrize("state", ["executing", "available", "scheduled", "retryable"])
def test_an_unfinished_job_cannot_be_deleted(state):
    admin = Admin("job")
    job = job_in(state)
    assert admin.delete_page(job.pk).status_code == 403
    assert admin.delete_one(job.pk).status_code == 403
    change = admin.client.get(reverse("admin:django_relay_job_change", args=[job.pk]))
    assert b"deletelink" not in change.content
    assert exists(Job, job.pk)


def test_a_finished_job_can_be_deleted_from_its_page():
    admin = Admin("job")
    job = job_in("completed", finished_at=timezone.now())
    assert admin.delete_page(job.pk).status_code == 200
    admin.delete_one(job.pk)
    assert not exists(Job, job.pk)


def test_a_bulk_delete_with_an_unsafe_job_deletes_nothing_and_says_which():
    admin = Admin("job")
    done = job_in("completed", finished_at=timezone.now())
    busy = job_in("executing")
    page = admin.delete_selected(done.pk, busy.pk)
    assert exists(Job, done.pk) and exists(Job, busy.pk)
    assert f"#{busy.pk} (executing)".encode() in page.content
    assert b"not finished" in page.content
    # Only finished ones: deleted.
    other = job_in("discarded", finished_at=timezone.now())
    admin.delete_selected(done.pk, other.pk)
    assert not exists(Job, done.pk) and not exists(Job, other.pk)


def running_workflow() -> Workflow:
    workflow = Workflow().add("a", StepWorker.new({})).add("b", StepWorker.new({}), deps=["a"])
    workflow.enqueue()
    Job.objects.filter(pk=workflow.steps["a"].job.pk).update(
        state="completed", finished_at=timezone.now()
    )
    return workflow


def test_a_finished_step_of_a_running_workflow_cannot_be_deleted():
    admin = Admin("job")
    workflow = running_workflow()
    step = workflow.steps["a"].job
    assert admin.delete_one(step.pk).status_code == 403
    admin.delete_selected(step.pk)
    assert exists(Job, step.pk)
    # Once the workflow finished, its steps may go.
    Job.objects.filter(pk=workflow.steps["b"].job.pk).update(
        state="completed", finished_at=timezone.now()
    )
    admin.delete_one(step.pk)
    assert not exists(Job, step.pk)


def test_a_running_workflow_cannot_be_deleted_and_a_finished_one_can():
    admin = Admin("workflowrun", "delete_job")  # deleting a run deletes its steps
    workflow = running_workflow()
    run = workflow.run
    assert admin.delete_one(run.pk).status_code == 403
    page = admin.delete_selected(run.pk)
    assert b"still running" in page.content
    assert exists(WorkflowRun, run.pk)
    assert Job.objects.filter(workflow=run).count() == 2  # no step stranded
    Job.objects.filter(workflow=run).update(state="cancelled", finished_at=timezone.now())
    admin.delete_selected(run.pk)
    assert not exists(WorkflowRun, run.pk) and not Job.objects.filter(workflow=run).exists()


def node(name: str, heartbeat_ago: float) -> Node:
    return Node.objects.create(
        id=name,
        hostname="h",
        pid=1,
        queues={},
        heartbeat_at=timezone.now() - dt.timedelta(seconds=heartbeat_ago),
    )


def test_a_live_runner_node_cannot_be_deleted_and_a_stale_one_can(settings):
    settings.RELAY = {"RESCUE_AFTER": 60.0}
    admin = Admin("node")
    live, stale = node("live", 5), node("stale", 600)
    busy = job_in("executing", attempted_by="live", attempt=1)
    assert admin.delete_one(live.pk).status_code == 403
    admin.delete_selected(live.pk, stale.pk)
    assert exists(Node, live.pk) and exists(Node, stale.pk)
    admin.delete_one(stale.pk)
    assert not exists(Node, stale.pk)
    busy.refresh_from_db()
    assert busy.state == "executing"


def test_without_the_delete_permission_nothing_is_deleted():
    user_admin = AdminClient(staff_user("view_job"), reverse("admin:django_relay_job_changelist"))
    job = job_in("completed", finished_at=timezone.now())
    user_admin.post({"action": "delete_selected", "_selected_action": [str(job.pk)], "post": "yes"})
    assert exists(Job, job.pk)

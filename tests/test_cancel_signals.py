"""job_cancelled is sent wherever a job is cancelled: the API, the admin, a workflow's cascade."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.urls import reverse

from django_relay import Workflow, acancel_jobs, cancel_jobs, signals
from django_relay.models import Job
from django_relay.testing import drain
from tests.admin_client import AdminClient, staff_user
from tests.workers import EchoWorker
from tests.workflow_workers import BrokenWorker, StepWorker

Seen = list[tuple[str, type | None, int, str]]


@pytest.fixture
def seen() -> Iterator[Seen]:
    """(signal, sender, job id, job state) for each job_cancelled/job_discarded sent."""
    got: Seen = []

    def receiver(name: str):
        def receive(sender, job, **kwargs):
            got.append((name, sender, job.pk, job.state))

        return receive

    receivers = {name: receiver(name) for name in ("job_cancelled", "job_discarded")}
    for name, receive in receivers.items():
        getattr(signals, name).connect(receive)
    yield got
    for name, receive in receivers.items():
        getattr(signals, name).disconnect(receive)


def chain() -> Workflow:
    workflow = (
        Workflow()
        .add("a", BrokenWorker.new({}))
        .add("b", StepWorker.new({}), deps=["a"])
        .add("c", StepWorker.new({}), deps=["b"])
        .add("free", StepWorker.new({"flat": True}))
    )
    workflow.enqueue()
    return workflow


def ids(workflow: Workflow, *steps: str) -> list[int]:
    return [workflow.steps[s].job.pk for s in steps]


@pytest.mark.django_db
def test_cancel_jobs_sends_job_cancelled_with_the_cancelled_job(seen):
    waiting, done = EchoWorker.enqueue({}, schedule_in=3600), EchoWorker.enqueue({})
    Job.objects.filter(pk=done.pk).update(state="completed")
    assert cancel_jobs([waiting, done], "no longer needed") == 1
    assert seen == [("job_cancelled", EchoWorker, waiting.pk, "cancelled")]


@pytest.mark.django_db(transaction=True)
async def test_acancel_jobs_sends_it_too(seen):
    job = await EchoWorker.aenqueue({}, schedule_in=3600)
    assert await acancel_jobs([job.pk]) == 1
    assert seen == [("job_cancelled", EchoWorker, job.pk, "cancelled")]


@pytest.mark.django_db
def test_the_admin_cancel_action_sends_it(seen):
    job = EchoWorker.enqueue({}, schedule_in=3600)
    client = AdminClient(
        staff_user("view_job", "cancel_job"), reverse("admin:django_relay_job_changelist")
    )
    client.post({"action": "cancel", "_selected_action": [job.pk]})
    assert seen == [("job_cancelled", EchoWorker, job.pk, "cancelled")]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("end_a", "first"),
    [
        (lambda workflow: cancel_jobs(ids(workflow, "a")), ("job_cancelled", "cancelled")),
        (lambda workflow: drain(), ("job_discarded", "discarded")),  # its runner discards it
    ],
    ids=["cancelled-by-the-api", "discarded-by-its-runner"],
)
def test_a_step_that_failed_sends_it_for_the_steps_its_cascade_cancelled(seen, end_a, first):
    workflow = chain()
    end_a(workflow)
    a, b, c = ids(workflow, "a", "b", "c")
    assert seen == [
        (first[0], BrokenWorker, a, first[1]),
        ("job_cancelled", StepWorker, b, "cancelled"),
        ("job_cancelled", StepWorker, c, "cancelled"),
    ]


@pytest.mark.django_db
def test_cancelling_a_whole_workflow_sends_it_once_per_step(seen):
    workflow = chain()
    assert workflow.cancel() == 4
    assert sorted(job_id for _, _, job_id, _ in seen) == sorted(
        ids(workflow, "a", "b", "c", "free")
    )

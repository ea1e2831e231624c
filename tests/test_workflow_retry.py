"""Retrying workflow steps: a step runs only after its deps, and retrying a failed dep
brings back the steps its failure cancelled."""

from __future__ import annotations

import pytest
from django.db import connection

from django_relay import Workflow, cancel_jobs, retry_jobs
from django_relay.models import Job
from django_relay.testing import drain
from tests.concurrency import race
from tests.workflow_workers import BrokenWorker, StepWorker

pytestmark = pytest.mark.django_db

FIXED = f"{StepWorker.__module__}.{StepWorker.__qualname__}"


def flat() -> Job:
    return StepWorker.new({"flat": True})


def chain() -> Workflow:
    """a (always fails) -> b -> c, and d beside them."""
    workflow = (
        Workflow(name="chain")
        .add("a", BrokenWorker.new({}))
        .add("b", flat(), deps=["a"])
        .add("c", flat(), deps=["b"])
        .add("d", flat())
    )
    workflow.enqueue()
    drain()
    assert workflow.states() == {
        "a": "discarded",
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
    }
    return workflow


def fix(workflow: Workflow, step: str) -> None:
    """Make the step's worker one that succeeds (as a deploy of a fix would)."""
    Job.objects.filter(pk=workflow.steps[step].job.pk).update(worker=FIXED)


def test_retrying_a_cascade_cancelled_step_holds_it_while_its_dep_has_failed():
    workflow = chain()
    assert retry_jobs([workflow.steps["b"].job]) == 2  # b, and c which b's cancel cancelled
    held = {"a": "discarded", "b": "suspended", "c": "suspended", "d": "completed"}
    assert workflow.states() == held  # b is held: its dep a did not complete
    drain()
    assert workflow.states() == held  # never run without its dep
    fix(workflow, "a")
    retry_jobs([workflow.steps["a"].job])
    drain()
    assert workflow.state() == "completed"


def test_retrying_the_failed_dep_holds_its_cancelled_dependents_and_they_run_after_it():
    workflow = chain()
    fix(workflow, "a")
    assert retry_jobs([workflow.steps["a"].job]) == 3  # a, and b and c brought back
    assert workflow.states() == {
        "a": "available",
        "b": "suspended",
        "c": "suspended",
        "d": "completed",
    }
    drain()
    assert workflow.state() == "completed"
    b = Job.objects.get(pk=workflow.steps["b"].job.pk)
    c = Job.objects.get(pk=workflow.steps["c"].job.pk)
    assert c.attempted_at >= b.finished_at  # in order


def test_retrying_a_step_with_its_failed_dep_runs_them_in_order():
    workflow = chain()
    fix(workflow, "a")
    assert retry_jobs([workflow.steps["c"].job, workflow.steps["a"].job]) == 3
    assert workflow.states()["c"] == "suspended"  # its dep b is going again
    drain()
    assert workflow.state() == "completed"


def test_a_step_cancelled_by_hand_is_not_brought_back_by_retrying_its_dep():
    workflow = (
        Workflow()
        .add("a", BrokenWorker.new({}))
        .add("b", flat(), deps=["a"])
        .add("manual", flat(), deps=["a"])
    )
    workflow.enqueue()
    cancel_jobs([workflow.steps["manual"].job], "not wanted")
    drain()
    fix(workflow, "a")
    assert retry_jobs([workflow.steps["a"].job]) == 2
    drain()
    assert workflow.states() == {"a": "completed", "b": "completed", "manual": "cancelled"}


def test_retrying_a_plain_failed_step_whose_deps_completed_runs_it_now():
    workflow = Workflow().add("a", flat()).add("b", BrokenWorker.new({}), deps=["a"])
    workflow.enqueue()
    drain()
    assert workflow.states() == {"a": "completed", "b": "discarded"}
    assert retry_jobs([workflow.steps["b"].job]) == 1
    assert workflow.states()["b"] == "available"


@pytest.mark.django_db(transaction=True)
def test_a_step_retried_while_its_dep_completes_is_never_left_held():
    stuck = []
    for trial in range(30):
        workflow = Workflow().add("a", flat()).add("b", flat(), deps=["a"])
        workflow.enqueue()
        a, b = workflow.steps["a"].job.pk, workflow.steps["b"].job.pk
        Job.objects.filter(pk=a).update(state="executing", attempt=1)
        cancel_jobs([b], "by hand")

        def complete(pk: int = a) -> None:  # what a runner's ack does
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE django_relay_job SET state = 'completed', finished_at = now()"
                    " WHERE id = %s",
                    [pk],
                )

        race(complete, lambda pk=b: retry_jobs([pk]))
        states = workflow.states()
        if states != {"a": "completed", "b": "available"}:
            stuck.append((trial, states))
    assert stuck == []

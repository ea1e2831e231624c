"""Workflows with a real relayworker: gating, cascades, fan-in, validation, crashes."""

from __future__ import annotations

import signal as os_signal

import pytest
from asgiref.sync import sync_to_async

from django_relay import (
    EncodeError,
    RelayCancelled,
    RelayDiscard,
    Workflow,
    WorkflowError,
    enqueue_many,
)
from django_relay.models import Job, WorkflowRun
from tests.conftest import await_for
from tests.signal_workers import ApprovalWorker
from tests.workflow_workers import BrokenWorker, ChargeWorker, StepWorker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def order_workflow() -> Workflow:
    return (
        Workflow(name="order-123")
        .add("approval", ApprovalWorker.new({"user_id": 123, "wait_timeout": 0}))
        .add("charge", ChargeWorker.new({"user_id": 123}), deps=["approval"])
    )


async def step_state(workflow: Workflow, name: str) -> str:
    return (await sync_to_async(workflow.states)())[name]


async def test_approval_gates_charge_until_signalled_by_step_name(start_runner):
    start_runner()
    workflow = order_workflow()
    approval, charge = await workflow.aenqueue()
    assert approval.id and charge.id and charge.state == "suspended"

    await await_for(lambda: _waiting(approval.id), message="approval waiting for a signal")
    assert await step_state(workflow, "charge") == "suspended"  # never claimed meanwhile

    assert await workflow.signal("approval", {"decision": "approved", "by": "ann"}) == 1
    results = await workflow.relay(timeout=15)
    assert results == {
        "approval": {"charged": 123, "by": "ann"},
        "charge": {"charged": 123, "approval": {"charged": 123, "by": "ann"}},
    }
    approval_row, charge_row = (
        await Job.objects.aget(pk=approval.id),
        await Job.objects.aget(pk=charge.id),
    )
    assert charge_row.attempted_at >= approval_row.finished_at
    assert await sync_to_async(workflow.state)() == "completed"


async def _waiting(job_id: int) -> bool:
    job = await Job.objects.aget(pk=job_id)
    return job.signal_wait is not None


async def test_decline_cancels_every_dependent_transitively(start_runner):
    start_runner()
    workflow = order_workflow().add("ship", StepWorker.new({}), deps=["charge"])
    await workflow.aenqueue()
    await await_for(lambda: _waiting(workflow.steps["approval"].job.id), message="waiting")
    await workflow.signal("approval", {"decision": "declined"})

    with pytest.raises(RelayCancelled, match="declined"):
        await workflow.relay(timeout=15)
    states = await sync_to_async(workflow.states)()
    assert states == {"approval": "cancelled", "charge": "cancelled", "ship": "cancelled"}
    charge = await Job.objects.aget(pk=workflow.steps["charge"].job.id)
    ship = await Job.objects.aget(pk=workflow.steps["ship"].job.id)
    assert charge.errors[-1]["error"] == "dependency approval was cancelled"
    assert ship.errors[-1]["error"] == "dependency charge was cancelled"
    assert charge.attempt == 0  # never ran


async def test_ignore_flags_let_a_dependent_run(start_runner):
    start_runner()
    workflow = (
        Workflow()
        .add("broken", BrokenWorker.new({}))
        .add("cleanup", StepWorker.new({}), deps=["broken"], ignore_discarded=True)
        .add("strict", StepWorker.new({}), deps=["broken"])
    )
    await workflow.aenqueue()
    with pytest.raises(RelayDiscard, match="always broken"):
        await workflow.relay(timeout=15)
    states = await sync_to_async(workflow.states)()
    assert states == {"broken": "discarded", "cleanup": "completed", "strict": "cancelled"}
    cleanup = await Job.objects.aget(pk=workflow.steps["cleanup"].job.id)
    assert cleanup.result == {"step": "cleanup", "deps": {"broken": None}}


async def test_fan_in_and_diamond(start_runner):
    start_runner("default=20")
    fan = Workflow(name="fan-in")
    for i in range(10):
        fan.add(f"part{i}", StepWorker.new({"pause": 0.01 * i}))
    fan.add("merge", StepWorker.new({}), deps=[f"part{i}" for i in range(10)])
    diamond = (
        Workflow(name="diamond")
        .add("a", StepWorker.new({}))
        .add("b", StepWorker.new({}), deps=["a"])
        .add("c", StepWorker.new({}), deps=["a"])
        .add("d", StepWorker.new({}), deps=["b", "c"])
    )
    await fan.aenqueue()
    await sync_to_async(enqueue_many)(diamond)

    merged = (await fan.relay(timeout=20))["merge"]
    assert sorted(merged["deps"]) == [f"part{i}" for i in range(10)]
    d = (await diamond.relay(timeout=20))["d"]
    assert d["deps"]["b"]["step"] == "b" and d["deps"]["c"]["step"] == "c"


async def test_a_runner_killed_mid_workflow_still_completes_every_step_once(start_runner):
    first = start_runner("default=5")
    workflow = Workflow(name="fifty")
    for layer in range(5):
        for i in range(10):
            deps = [f"l{layer - 1}s{j}" for j in range(10)] if layer else []
            workflow.add(f"l{layer}s{i}", StepWorker.new({"pause": 0.05, "flat": True}), deps=deps)
    await workflow.aenqueue()
    ids = [s.job.id for s in workflow.steps.values()]
    await await_for(
        lambda: Job.objects.filter(id__in=ids, state="completed").acount(),
        message="some steps completed",
    )
    await await_for(lambda: _completed_at_least(ids, 15), timeout=20, message="15 steps done")
    first.signal(os_signal.SIGKILL)
    first.proc.wait(10)

    start_runner("default=5")
    results = await workflow.relay(timeout=60)
    assert len(results) == 50
    rows = [row async for row in Job.objects.filter(id__in=ids)]
    assert all(row.state == "completed" for row in rows)
    for row in rows:  # a step runs again only if the crash interrupted it
        rescued = any(e.get("kind") == "rescued" for e in row.errors)
        assert row.attempt == (2 if rescued else 1), (row.step, row.attempt, row.errors)


async def _completed_at_least(ids: list[int], n: int) -> bool:
    return await Job.objects.filter(id__in=ids, state="completed").acount() >= n


# -- building and validation (no runner) ---------------------------------------------


def test_validation_errors_insert_nothing():
    with pytest.raises(WorkflowError, match="duplicate step name 'a'"):
        Workflow().add("a", StepWorker.new({})).add("a", StepWorker.new({}))
    with pytest.raises(WorkflowError, match="unknown step 'nope'"):
        Workflow().add("a", StepWorker.new({}), deps=["nope"]).enqueue()
    with pytest.raises(WorkflowError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        (
            Workflow()
            .add("a", StepWorker.new({}), deps=["b"])
            .add("b", StepWorker.new({}), deps=["a"])
            .enqueue()
        )
    with pytest.raises(WorkflowError, match="cycle: a -> a"):
        Workflow().add("a", StepWorker.new({}), deps=["a"]).enqueue()
    with pytest.raises(EncodeError):
        (
            Workflow()
            .add("ok", StepWorker.new({}))
            .add("bad", StepWorker.new({"x": {1, 2}}), deps=["ok"])
            .enqueue()
        )
    assert not Job.objects.exists() and not WorkflowRun.objects.exists()

    shared = StepWorker.new({})
    Workflow().add("x", shared)
    with pytest.raises(WorkflowError, match="already belongs to another workflow"):
        Workflow().add("y", shared)
    with pytest.raises(WorkflowError, match="already step 'x'"):
        Workflow().add("x", (job := StepWorker.new({}))).add("z", job)

    first = Workflow().add("a", StepWorker.new({}))
    first.enqueue()
    with pytest.raises(WorkflowError, match="already enqueued"):
        Workflow().add("again", first.steps["a"].job)
    with pytest.raises(WorkflowError, match="already enqueued"):
        first.add("more", StepWorker.new({}))


def test_load_states_cancel_and_mermaid():
    workflow = order_workflow().add("ship", StepWorker.new({}), deps=["charge"])
    workflow.enqueue()
    loaded = Workflow.load(workflow.run.pk)
    assert list(loaded.steps) == ["approval", "charge", "ship"]
    assert loaded.states() == {"approval": "available", "charge": "suspended", "ship": "suspended"}
    assert loaded.state() == "running"
    assert loaded.to_mermaid() == (
        'flowchart TD\n    s0["approval"]\n    s1["charge"]\n    s0 --> s1\n'
        '    s2["ship"]\n    s1 --> s2'
    )
    with pytest.raises(WorkflowError, match="no step named 'nope'"):
        loaded.signal_sync("nope", {})

    assert loaded.cancel() == 3
    assert loaded.states() == {"approval": "cancelled", "charge": "cancelled", "ship": "cancelled"}
    assert loaded.state() == "failed"


async def test_ignore_cancelled_lets_a_dependent_run_after_a_decline(start_runner):
    start_runner()
    workflow = order_workflow().add(
        "notify", StepWorker.new({}), deps=["approval"], ignore_cancelled=True
    )
    await workflow.aenqueue()
    await await_for(lambda: _waiting(workflow.steps["approval"].job.id), message="waiting")
    await workflow.signal("approval", {"decision": "declined"})
    with pytest.raises(RelayCancelled):
        await workflow.relay(timeout=15)
    states = await sync_to_async(workflow.states)()
    assert states == {"approval": "cancelled", "charge": "cancelled", "notify": "completed"}


async def test_pruning_keeps_the_steps_of_an_unfinished_workflow():
    from django.db.models import F

    from django_relay import pg, queries

    running = (
        Workflow(name="running")
        .add("done", StepWorker.new({}))
        .add("held", StepWorker.new({}), deps=["done"])
    )
    finished = Workflow(name="finished").add("done", StepWorker.new({}))
    loose = StepWorker.new({})
    await running.aenqueue()
    await finished.aenqueue()
    await sync_to_async(enqueue_many)([loose])
    # "done" steps and the loose job finished a day ago; "held" still waits.
    old = {
        "state": "completed",
        "finished_at": F("inserted_at") - __import__("datetime").timedelta(days=1),
    }
    await Job.objects.filter(step="done").aupdate(**old)
    await Job.objects.filter(pk=loose.pk).aupdate(**old)
    await Job.objects.filter(step="held").aupdate(state="suspended")

    async with await pg.connect() as conn:
        assert await queries.prune(conn, older_than=3600) == 2
    remaining = {(j.workflow_id, j.step) async for j in Job.objects.all()}
    assert remaining == {(running.run.pk, "done"), (running.run.pk, "held")}
    assert [r.pk async for r in WorkflowRun.objects.all()] == [running.run.pk]


def test_add_takes_the_spec_signature_positionally():
    workflow = (
        Workflow().add("a", StepWorker.new({})).add("b", StepWorker.new({}), ["a"], True, True)
    )
    step = workflow.steps["b"]
    assert (step.deps, step.ignore_cancelled, step.ignore_discarded) == (("a",), True, True)

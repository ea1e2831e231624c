"""The workflow trigger counts a held step's deps down: one statement finishing many
deps, deps finishing in concurrent transactions, failures among them, a retried step."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.db.utils import OperationalError
from psycopg.errors import Diagnostic

from django_relay import Workflow, retry_jobs
from django_relay.models import Job
from tests.concurrency import race
from tests.workflow_workers import StepWorker

pytestmark = pytest.mark.django_db


def finish(workflow: Workflow, steps: list[str], state: str = "completed") -> None:
    """End these steps in one statement, as a runner's batched ack does."""
    ids = [workflow.steps[name].job.pk for name in steps]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_relay_job SET state = %s, finished_at = now() WHERE id = ANY(%s)",
            [state, ids],
        )


def row(workflow: Workflow, step: str) -> Job:
    return Job.objects.get(pk=workflow.steps[step].job.pk)


def assert_cancelled(workflow: Workflow, step: str, reason: str, *, cause: str) -> None:
    job = row(workflow, step)
    assert job.state == "cancelled"
    assert (job.errors[-1]["error"], job.errors[-1]["cause"]) == (
        reason,
        workflow.steps[cause].job.pk,
    )


def fan_in(width: int, **options: bool) -> Workflow:
    workflow = Workflow()
    parts = [f"p{i}" for i in range(width)]
    for name in parts:
        workflow.add(name, StepWorker.new({}))
    workflow.add("sink", StepWorker.new({}), deps=parts, **options)
    workflow.enqueue()
    return workflow


def test_each_step_names_its_dependents_and_a_held_step_counts_its_deps():
    workflow = (
        Workflow()
        .add("a", StepWorker.new({}))
        .add("b", StepWorker.new({}), deps=["a"])
        .add("c", StepWorker.new({}), deps=["a", "b", "a"])  # a repeated dep counts once
    )
    workflow.enqueue()
    assert [row(workflow, s).dependents for s in "abc"] == [["b", "c"], ["c"], []]
    assert [row(workflow, s).deps_pending for s in "abc"] == [None, 1, 2]
    finish(workflow, ["a"])
    assert (row(workflow, "b").state, row(workflow, "c").deps_pending) == ("available", 1)
    finish(workflow, ["b"])
    assert row(workflow, "c").state == "available"


def test_one_statement_finishing_many_deps_counts_them_all():
    workflow = fan_in(30)
    finish(workflow, [f"p{i}" for i in range(10)])
    sink = row(workflow, "sink")
    assert (sink.state, sink.deps_pending) == ("suspended", 20)
    finish(workflow, [f"p{i}" for i in range(10, 29)])
    assert row(workflow, "sink").deps_pending == 1
    finish(workflow, ["p29"])
    assert row(workflow, "sink").state == "available"


def test_a_failure_among_deps_finished_together_cancels_naming_it():
    workflow = fan_in(3)
    finish(workflow, ["p0", "p2"])
    finish(workflow, ["p1"], state="discarded")
    assert_cancelled(workflow, "sink", "dependency p1 was discarded", cause="p1")


def test_an_ignored_failure_counts_as_done():
    workflow = fan_in(3, ignore_discarded=True)
    finish(workflow, ["p0"], state="discarded")
    assert row(workflow, "sink").deps_pending == 2
    finish(workflow, ["p1", "p2"])
    assert row(workflow, "sink").state == "available"


def test_a_step_whose_deps_all_finish_in_one_statement_runs_at_once():
    # Decided without reading its deps again: every one finished here, none failing
    # for it (an ignored failure counts). A repeated dep takes the recount, as before.
    ignoring = fan_in(3, ignore_discarded=True)
    ids = [ignoring.steps[f"p{i}"].job.pk for i in range(3)]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_relay_job SET finished_at = now(),"
            " state = CASE WHEN id = %s THEN 'discarded' ELSE 'completed' END"
            " WHERE id = ANY(%s)",
            [ids[0], ids],
        )
    sink = row(ignoring, "sink")
    assert (sink.state, sink.deps_pending) == ("available", 0)

    repeated = (
        Workflow()
        .add("a", StepWorker.new({}))
        .add("b", StepWorker.new({}))
        .add("c", StepWorker.new({}), deps=["a", "b", "a"])
    )
    repeated.enqueue()
    finish(repeated, ["a", "b"])
    assert (row(repeated, "c").state, row(repeated, "c").deps_pending) == ("available", 0)


def test_a_step_retried_while_its_dep_failed_is_cancelled_at_the_next_finish_as_before():
    # Held by a retry while dep p0 has failed: its count is unknown, so the next
    # dep to finish looks at every dep, finds p0's failure and cancels it.
    workflow = fan_in(3)
    finish(workflow, ["p0"], state="discarded")
    assert row(workflow, "sink").state == "cancelled"
    retry_jobs([workflow.steps["sink"].job])
    sink = row(workflow, "sink")
    assert (sink.state, sink.deps_pending) == ("suspended", None)
    finish(workflow, ["p1"])
    assert_cancelled(workflow, "sink", "dependency p0 was discarded", cause="p1")


def test_a_retried_dep_that_was_counted_still_holds_its_dependent():
    workflow = fan_in(2, ignore_discarded=True)
    finish(workflow, ["p0"], state="discarded")  # ignored: counted as done
    retry_jobs([workflow.steps["p0"].job])  # p0 goes again
    finish(workflow, ["p1"])
    assert row(workflow, "sink").state == "suspended"  # waits for p0's new run
    finish(workflow, ["p0"])
    assert row(workflow, "sink").state == "available"


def release_fan_out(width: int, **settings: str) -> list[str]:
    """Finish the root of a fan-out of ``width`` steps; ``auto_explain``'s plans of it.

    The plans of the statements the trigger ran come first, the root's UPDATE last.
    ``settings`` hold for this transaction, as ``auto_explain``'s own do.
    """
    plans: list[str] = []
    with connection.cursor() as cursor:
        try:
            cursor.execute("LOAD 'auto_explain'")
        except OperationalError:
            pytest.skip("this PostgreSQL has no auto_explain")
        settings = {
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_nested_statements": "on",
            "client_min_messages": "log",
            **settings,
        }
        for setting, value in settings.items():
            cursor.execute("SELECT set_config(%s, %s, true)", [setting, value])
    workflow = Workflow().add("root", StepWorker.new({}))
    for i in range(width):
        workflow.add(f"s{i}", StepWorker.new({}), deps=["root"])
    workflow.enqueue()

    def handler(diag: Diagnostic) -> None:
        if (text := diag.message_primary or "").startswith("duration:"):
            plans.append(text.partition("plan:")[2])

    connection.connection.add_notice_handler(handler)
    try:
        finish(workflow, ["root"])
    finally:
        connection.connection.remove_notice_handler(handler)
    assert set(workflow.states().values()) == {"completed", "available"}
    return plans


def test_the_trigger_never_jit_compiles_its_statements():
    """The trigger's statements are index lookups: compiling them never pays.

    Their estimated cost grows with the steps a statement finishes or releases
    (the root of a fan-out of 998 releasing them: over 800,000, eight times
    ``jit_above_cost``), and compiling took 0.7 s of that ack's 0.77 s
    (``auto_explain``). ``jit_above_cost = 0`` would compile every statement that
    JIT is allowed for; the transaction's own setting is back afterwards.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_jit_available()")
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL has no JIT")
    *nested, ours = release_fan_out(20, jit="on", jit_above_cost="0")
    assert "JIT:" in ours
    reading_jobs = [plan for plan in nested if "django_relay_job " in plan]
    assert len(reading_jobs) >= 2  # finding the held steps, updating them
    assert [plan for plan in reading_jobs if "JIT:" in plan] == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit')")
        assert cursor.fetchone()[0] == "on"


def test_releasing_a_fan_out_reads_each_step_a_few_times_whatever_the_statistics_say():
    """Releasing n steps reads O(n) rows, even when the table was analysed while empty.

    The statistics then say no step is held: each lookup of a step by its unique
    key was planned as a scan of the table, and the UPDATE joining the held steps
    to the table put the table outside and recomputed every held step for each of
    its rows: O(n^2) (a fan-out of 998 after a VACUUM: 3.6 s). ``auto_explain``
    gives the rows each plan node of the trigger's statements read, over all its
    loops.
    """
    width = 200
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_relay_job")  # the table holds nothing now
    *nested, _ = release_fan_out(
        width,
        **{
            "auto_explain.log_analyze": "on",
            "auto_explain.log_timing": "off",
            "auto_explain.log_format": "json",
        },
    )

    def rows(node: dict[str, Any]) -> int:
        """The rows a node read or produced, over all its loops (EXPLAIN gives averages)."""
        read = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        own = read * node.get("Actual Loops", 1)
        return own + sum(rows(child) for child in node.get("Plans", []))

    reads = {
        plan["Query Text"][:60]: rows(plan["Plan"])
        for plan in map(json.loads, nested)
        if "django_relay_job " in plan["Query Text"]
    }
    assert len(reads) >= 2  # finding the held steps, updating them
    assert reads == {text: min(n, 20 * width) for text, n in reads.items()}


@pytest.mark.django_db(transaction=True)
def test_deps_finishing_in_concurrent_transactions_release_their_dependents_once():
    # Two dependents share both deps: each transaction locks them in id order, so
    # the two never deadlock, and the second sees the first's count.
    failures = []
    for trial in range(15):
        workflow = (
            Workflow()
            .add("a", StepWorker.new({}))
            .add("b", StepWorker.new({}))
            .add("c", StepWorker.new({}), deps=["a", "b"])
            .add("d", StepWorker.new({}), deps=["b", "a"])
        )
        workflow.enqueue()
        results = race(lambda w=workflow: finish(w, ["a"]), lambda w=workflow: finish(w, ["b"]))
        states = workflow.states()
        if any(results) or (states["c"], states["d"]) != ("available", "available"):
            failures.append((trial, results, states))
    assert failures == []

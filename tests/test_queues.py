"""Queue control at run time (pause, resume, scale) and limits across runners."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_relay import queues
from django_relay.models import Job, JobState, Queue
from tests.conftest import wait_for
from tests.flow_workers import LedgerWorker
from tests.workers import EchoWorker, GateWorker, read_records

pytestmark = pytest.mark.django_db(transaction=True)


def states(queue: str = "limited") -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in Job.objects.filter(queue=queue).values_list("state", flat=True):
        counts[state] = counts.get(state, 0) + 1
    return counts


# -- the calls and the command --------------------------------------------------------


def test_pause_resume_scale_and_limit_persist_a_queue_row() -> None:
    queues.pause_queue("mail")
    assert Queue.objects.get(name="mail").paused
    queues.pause_queue("mail", node="host-a")
    queues.resume_queue("mail")
    row = Queue.objects.get(name="mail")
    assert not row.paused and row.paused_nodes == []  # resuming everywhere lifts node pauses
    queues.pause_queue("mail", node="host-a")
    queues.scale_queue("mail", 4)
    queues.scale_queue("mail", 2, node="host-b")
    queues.limit_queue("mail", global_limit=3, rate_limit=10, rate_period=1, partition="worker")
    row = Queue.objects.get(name="mail")
    assert (row.paused, row.paused_nodes, row.local_limit, row.node_limits) == (
        False,
        ["host-a"],
        4,
        {"host-b": 2},
    )
    assert (row.global_limit, row.rate_limit, row.rate_period, row.partition) == (
        3,
        10,
        1.0,
        "worker",
    )
    queues.limit_queue("mail")  # left out: cleared
    assert Queue.objects.get(name="mail").global_limit is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: queues.scale_queue("mail", 0), "limit must be an int >= 1"),
        (lambda: queues.scale_queue("mail", -3), "limit must be an int >= 1"),
        (lambda: queues.limit_queue("mail", global_limit=-1), "global_limit must be"),
        (lambda: queues.limit_queue("mail", rate_limit=0, rate_period=1), "rate_limit must be"),
        (lambda: queues.limit_queue("mail", rate_limit=5, rate_period=0), "rate_period must be"),
        (lambda: queues.limit_queue("mail", rate_limit=5), "rate_limit and rate_period"),
        (lambda: queues.limit_queue("mail", partition="colour"), "partition must be"),
        (lambda: queues.pause_queue("bad name!"), "invalid queue name"),
        (lambda: queues.pause_queue("mail", node=""), "node must be"),
    ],
)
def test_bad_queue_settings_raise_value_error_and_store_nothing(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
    assert not Queue.objects.exists()


def test_relayqueue_command() -> None:
    out = io.StringIO()
    call_command("relayqueue", "pause", "mail", stdout=out)
    call_command("relayqueue", "scale", "mail", "7", "--node", "host-a", stdout=out)
    call_command(
        "relayqueue", "limit", "mail", "--global", "2", "--rate", "5", "--per", "60", stdout=out
    )
    EchoWorker.enqueue({"value": 1}, queue="mail")
    listing = io.StringIO()
    call_command("relayqueue", "list", stdout=listing)
    assert "mail: paused; local as started, global 2, rate 5/60s; 1 available" in (
        listing.getvalue()
    )
    assert Queue.objects.get(name="mail").node_limits == {"host-a": 7}
    with pytest.raises(CommandError, match="rate_period must be"):
        call_command("relayqueue", "limit", "mail", "--rate", "5", "--per", "0")
    with pytest.raises(CommandError, match="give N"):
        call_command("relayqueue", "scale", "mail")


# -- real runners -------------------------------------------------------------------------


@pytest.mark.e2e
def test_pause_starts_nothing_new_running_jobs_finish_and_resume_drains(
    start_runner, tmp_path: Path
) -> None:
    runner = start_runner("limited=5,default=5")
    gate = tmp_path / "gate"
    running = GateWorker.enqueue({"gate": str(gate), "value": 1}, queue="limited")
    wait_for(lambda: states().get(JobState.EXECUTING) == 1, 20, message="the first job running")
    queues.pause_queue("limited")
    runner.wait_for_line("queue limited: paused")
    waiting = [LedgerWorker.enqueue({"log": str(tmp_path / "log")}) for _ in range(3)]
    # The runner is claiming (a job of another queue runs to the end), yet the paused
    # queue's new jobs stay available.
    probe = EchoWorker.enqueue({"value": 2})
    wait_for(lambda: Job.objects.get(pk=probe.pk).state == JobState.COMPLETED, 20)
    assert all(Job.objects.get(pk=j.pk).state == JobState.AVAILABLE for j in waiting)
    gate.touch()  # the job that was running when the queue was paused finishes
    wait_for(lambda: Job.objects.get(pk=running.pk).state == JobState.COMPLETED, 20)
    assert all(Job.objects.get(pk=j.pk).state == JobState.AVAILABLE for j in waiting)
    queues.resume_queue("limited")
    wait_for(lambda: states() == {JobState.COMPLETED: 4}, 20, message="the queue drained")


@pytest.mark.e2e
def test_pause_on_one_node_only(start_runner, tmp_path: Path) -> None:
    import socket

    queues.pause_queue("limited", node=socket.gethostname())
    start_runner("limited=5,default=5")
    job = LedgerWorker.enqueue({"log": str(tmp_path / "log")})
    probe = EchoWorker.enqueue({"value": 2})
    wait_for(lambda: Job.objects.get(pk=probe.pk).state == JobState.COMPLETED, 20)
    assert Job.objects.get(pk=job.pk).state == JobState.AVAILABLE
    queues.resume_queue("limited", node=socket.gethostname())
    wait_for(lambda: Job.objects.get(pk=job.pk).state == JobState.COMPLETED, 20)


@pytest.mark.e2e
def test_resize_takes_effect_without_a_restart(start_runner, tmp_path: Path) -> None:
    runner = start_runner("limited=1")
    gate = tmp_path / "gate"
    for _ in range(4):
        GateWorker.enqueue({"gate": str(gate)}, queue="limited")
    wait_for(lambda: states().get(JobState.EXECUTING) == 1, 20)
    queues.scale_queue("limited", 3)
    runner.wait_for_line("queue limited: running, 3 at once here")
    wait_for(lambda: states().get(JobState.EXECUTING) == 3, 20, message="3 running after scale")
    queues.scale_queue("limited", 2)
    gate.touch()
    wait_for(lambda: states() == {JobState.COMPLETED: 4}, 20)


def max_overlap(log: Path, key: str | None = None) -> int:
    """Most jobs between their start and finish at once, from the jobs' own ledger."""
    events = sorted(
        (entry["at"], 1 if entry["event"] == "start" else -1)
        for entry in read_records(log)
        if key is None or entry["key"] == key
    )
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # finishes first on ties
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.e2e
def test_a_global_limit_holds_across_two_runners(start_runner, tmp_path: Path) -> None:
    queues.limit_queue("limited", global_limit=3)
    log = tmp_path / "log"
    # 2 slots each: together they could run 4, so 3 at once is the global limit's
    # doing, and reaching it takes both (one runner alone, free to take every job
    # as its slots free up, sometimes did).
    start_runner("limited=2")
    start_runner("limited=2")
    for _ in range(24):
        LedgerWorker.enqueue({"log": str(log), "pause": 0.1})
    wait_for(lambda: states() == {JobState.COMPLETED: 24}, 60, message="all jobs done")
    assert len(read_records(log)) == 48
    assert max_overlap(log) <= 3
    runners = set(Job.objects.values_list("attempted_by", flat=True))
    assert len(runners) == 2  # both runners took part


@pytest.mark.e2e
def test_a_global_limit_partitioned_by_an_args_key(start_runner, tmp_path: Path) -> None:
    queues.limit_queue("limited", global_limit=1, partition="args:key")
    log = tmp_path / "log"
    start_runner("limited=6")
    start_runner("limited=6")
    for index in range(12):
        LedgerWorker.enqueue({"log": str(log), "pause": 0.1, "key": "ab"[index % 2]})
    wait_for(lambda: states() == {JobState.COMPLETED: 12}, 60, message="all jobs done")
    assert max_overlap(log, "a") == 1
    assert max_overlap(log, "b") == 1


@pytest.mark.e2e
def test_a_rate_limit_holds_in_every_window(start_runner, tmp_path: Path) -> None:
    queues.limit_queue("limited", rate_limit=10, rate_period=1.0)
    start_runner("limited=20")
    start_runner("limited=20")
    for _ in range(35):
        LedgerWorker.enqueue({"log": str(tmp_path / "log")})
    wait_for(lambda: states() == {JobState.COMPLETED: 35}, 60, message="all jobs done")
    starts = sorted(Job.objects.values_list("attempted_at", flat=True))
    for index, started in enumerate(starts):
        in_window = [s for s in starts[: index + 1] if (started - s).total_seconds() < 1.0]
        assert len(in_window) <= 10, f"{len(in_window)} starts in the second before {started}"

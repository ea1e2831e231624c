"""Runners take turns on ``relay_available``: only as many claim as there are jobs.

The pure rules (:mod:`django_relay.engine.turns`) without a database, then real
``relayworker`` processes counting their claims (``relay stats`` at shutdown).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from django_relay import enqueue_many
from django_relay.engine import turns
from django_relay.models import Job
from django_relay.queries import Available
from tests.conftest import RunnerProcess, wait_for
from tests.workers import EchoWorker, GateWorker

NODES = ["a:1:x", "b:2:y", "c:3:z"]


# -- the rules ----------------------------------------------------------------------


def test_members_are_the_sorted_live_nodes_of_each_queue():
    nodes = [("c", {"q": 1}), ("a", {"q": 5, "r": 1}), ("b", {"r": 2}), ("d", {})]
    assert turns.members_by_queue(nodes) == {"q": ["a", "c"], "r": ["a", "b"]}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 100])
@pytest.mark.parametrize("seq", [0, 1, 2, 3, 17])
def test_the_shares_of_a_notification_add_up_to_its_count(count, seq):
    note = Available("q", count, seq)
    shares = [turns.share(node, NODES, note) for node in NODES]
    assert sum(shares) == count
    # As many runners claim as there are jobs, at most all of them.
    assert sum(1 for share in shares if share) == min(count, len(NODES))
    assert max(shares) - min(shares) <= 1 or count < len(NODES)


def test_single_jobs_go_round_the_runners_in_turn():
    chosen = [
        next(node for node in NODES if turns.share(node, NODES, Available("q", 1, seq)))
        for seq in range(6)
    ]
    assert Counter(chosen) == {node: 2 for node in NODES}
    assert chosen[:3] == NODES


def test_a_runner_missing_from_the_list_claims_every_notification():
    # It just started (or its heartbeat lags): claiming is safe, missing a wake-up is not.
    assert turns.share("new:9:n", NODES, Available("q", 3, 5)) == 3
    assert turns.pass_on("new:9:n", NODES, "q", 2, 0) is None


def test_the_rest_is_handed_to_the_next_runner_until_each_had_its_turn():
    note = turns.pass_on(NODES[1], NODES, "q", 4, 0)
    assert note == Available("q", 4, 2, 1)
    assert [turns.share(node, NODES, note) for node in NODES] == [0, 0, 4]
    again = turns.pass_on(NODES[2], NODES, "q", 3, note.hops)
    assert again == Available("q", 3, 3, 2)
    assert [turns.share(node, NODES, again) for node in NODES] == [3, 0, 0]
    assert turns.pass_on(NODES[0], NODES, "q", 1, again.hops) is None


def test_an_available_payload_round_trips():
    from django_relay.queries import available_payload

    note = Available("with:colons", 12, 34, 1)
    assert available_payload(note.payload()) == note
    assert available_payload("garbage") is None


# -- real runners ---------------------------------------------------------------------

# No backup poll during a test (every claim answers a NOTIFY), and a membership
# window wide enough that a loaded machine's late heartbeat changes nobody's list.
TURNS = {"FETCH_INTERVAL": 60.0, "HEARTBEAT_INTERVAL": 1.0, "RESCUE_AFTER": 30.0}


def start_runners(start_runner: Any, queues: list[str]) -> list[RunnerProcess]:
    runners = [start_runner(q, **TURNS) for q in queues]
    for runner in runners:
        runner.wait_for_line(f"queue herd: {len(runners)} runners take turns")
    return runners


def stats_of(runner: RunnerProcess) -> dict[str, Any]:
    assert runner.stop() == 0, runner.output
    line = next(ln for ln in runner.lines if "relay stats: " in ln)
    return json.loads(line.split("relay stats: ", 1)[1])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_three_runners_take_turns_so_claims_are_rarely_empty(start_runner):
    runners = start_runners(start_runner, ["herd=10"] * 3)
    for value in range(150):
        assert EchoWorker.relay_sync({"value": value}, queue="herd", timeout=30) == value
    jobs = enqueue_many([EchoWorker.new({"value": i}, queue="herd") for i in range(60)])
    wait_for(
        lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], state="completed").count() == 60,
        30,
        message="the bulk jobs to complete",
    )
    stats = [stats_of(runner) for runner in runners]
    claims = sum(s["claims"] for s in stats)
    empty = sum(s["empty_claims"] for s in stats)
    print(f"claims {claims}, empty {empty} ({empty / claims:.1%}); per runner: {stats}")
    # Every runner claiming on every NOTIFY made two of three claims empty; taking
    # turns leaves the empty ones of each runner's start (it claims once, blind).
    assert claims >= 150
    assert empty <= 0.1 * claims, stats
    # Each runner had its turns.
    assert all(s["claims"] - s["empty_claims"] >= 10 for s in stats), stats


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_runner_without_enough_free_slots_passes_the_rest_on(start_runner, tmp_path: Path):
    gate = tmp_path / "gate"
    start_runners(start_runner, ["herd=1", "herd=5"])
    try:
        # One statement, four jobs: a turn of two each. The one-slot runner takes one
        # and hands the other on, so all four start with no poll (60s away).
        jobs = enqueue_many(
            [GateWorker.new({"gate": str(gate), "value": i}, queue="herd") for i in range(4)]
        )
        wait_for(
            lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], state="executing").count() == 4,
            20,
            message="all four jobs to start",
        )
    finally:
        gate.touch()

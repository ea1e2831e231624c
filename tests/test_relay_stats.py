"""The runner's counters (``django_relay.stats``), logged at shutdown for the scale test."""

from __future__ import annotations

import json
import re

import pytest

from django_relay import stats
from tests.conftest import wait_for
from tests.workers import EchoWorker


def test_count_claim_counts_empty_ones_apart():
    claims, empty = stats.claims, stats.empty_claims
    stats.count_claim(3)
    stats.count_claim(0)
    assert (stats.claims - claims, stats.empty_claims - empty) == (2, 1)
    assert json.loads(stats.line().removeprefix("relay stats: "))["claims"] == stats.claims


def test_the_backup_polls_claims_are_counted_apart_too():
    before = stats.snapshot()
    stats.count_claim(0, poll=True)
    stats.count_claim(2, poll=True)
    stats.count_claim(0)
    after = stats.snapshot()
    changed = {key: after[key] - before[key] for key in after if key != "notifications"}  # type: ignore[operator]
    assert changed == {"claims": 3, "empty_claims": 2, "poll_claims": 2, "empty_poll_claims": 1}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_runner_logs_its_claims_and_notifications_at_shutdown(start_runner):
    runner = start_runner()
    job = EchoWorker.enqueue({"value": 1})
    wait_for(lambda: type(job).objects.get(pk=job.pk).state == "completed", 15)
    assert runner.stop() == 0
    line = next(ln for ln in runner.lines if "relay stats: " in ln)
    counters = json.loads(re.search(r"relay stats: (\{.*\})", line).group(1))
    # The enqueue's NOTIFY woke a claim that took the job.
    assert counters["notifications"]["relay_available"] >= 1
    assert counters["claims"] > counters["empty_claims"]
    # A runner that sat idle longer than FETCH_INTERVAL polled its drained queue.
    assert counters["empty_poll_claims"] <= counters["poll_claims"] <= counters["claims"]

"""``manage.py relaybench``: one small run end to end, on the test database."""

from __future__ import annotations

import json
import math
import pstats
import subprocess
import sys

import pytest

from django_relay.models import Job, WorkflowRun
from tests.conftest import subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

BENCH = (
    *(sys.executable, "-m", "django", "relaybench", "--json", "--pgqueuer", "no"),
    *("--runs", "2", "--relays", "3", "--gap", "1,2", "--concurrent", "20"),
    *("--many-concurrent", "50", "--noop", "40", "--concurrency", "4,8"),
    *("--sync-concurrency", "4", "--enqueue", "30", "--workflow", "6"),
)


def bench(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENCH, *options],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_small_run_reports_every_figure_and_leaves_no_jobs(tmp_path):
    profile = tmp_path / "profile"
    run = bench("--profile", str(profile))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["runs"] == 2
    figures = {key: value for key, value in report.items() if isinstance(value, dict)}
    assert set(figures) >= {
        "floor_idle_p50_ms",
        "relay_idle_p50_ms",
        "relay_idle_vs_floor",
        "relay_idle_p99_vs_floor_p99",
        "relay_b2b_vs_floor",
        "concurrent_relays_per_s",
        "many_relays_per_s",
        "many_relays_connections",
        "rss_per_waiter_kb",
        "concurrent_relays_vs_async",
        "async_c4_per_s",
        "async_c8_per_s",
        "sync_c4_per_s",
        "enqueue_many_per_s",
        "workflow_steps_per_s",
        "workflow_vs_plain",
    }
    # 50 relays gathered share the process's few connections (LISTEN, inserts, reads,
    # Django's; a connection the previous phase just closed may still be counted):
    # nothing opens one per relay.
    assert 3 <= report["many_relays_connections"]["max"] < 10
    assert report["sync_vs_async_c4"]["median"] > 0
    for key, spread in figures.items():
        assert spread["min"] <= spread["median"] <= spread["max"], key
        assert math.isfinite(spread["median"]), key
        if not key.startswith("rss"):
            assert spread["median"] > 0, key
    # Both profiles load: the bench's own and its runner's (written when it stopped).
    assert pstats.Stats(str(profile / "bench.prof")).total_calls > 0
    assert pstats.Stats(str(profile / "runner.prof")).total_calls > 0
    assert not Job.objects.filter(queue__startswith="relaybench").exists()
    assert not WorkflowRun.objects.exists()


def test_only_runs_the_sections_named():
    run = bench("--runs", "1", "--only", "enqueue")
    assert run.returncode == 0, run.stderr
    figures = {key for key, value in json.loads(run.stdout).items() if isinstance(value, dict)}
    assert figures == {"enqueue_many_per_s"}


def test_only_refuses_an_unknown_section():
    run = bench("--only", "enqueue,warp")
    assert run.returncode != 0
    assert "no section warp" in run.stderr

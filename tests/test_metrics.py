"""Prometheus metrics: scraped over HTTP from a real runner and from the Django view."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from django_relay import signals
from django_relay.models import Job
from tests.conftest import wait_for
from tests.signal_workers import ApprovalWorker
from tests.workers import CancelWorker, EchoWorker, GateWorker, SnoozeWorker, TimeoutWorker


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(name, labels): value}`` of every sample in an exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return samples(response.read().decode())


@pytest.fixture
def counting():
    """This (test) process counts, as with RELAY["METRICS"] = True."""
    from django_relay import metrics

    metrics.connect()
    yield
    for signal in (
        signals.job_enqueued,
        signals.job_started,
        signals.job_completed,
        signals.job_failed,
        signals.job_discarded,
        signals.job_cancelled,
        signals.job_snoozed,
        signals.job_relayed,
    ):
        signal.disconnect(dispatch_uid="django_relay.metrics")


@pytest.mark.e2e
def test_runner_serves_counts_histograms_and_database_gauges(start_runner, tmp_path: Path):
    runner = start_runner(extra_args=["--metrics-port", "0"])
    line = runner.wait_for_line("metrics on http://")
    url = f"http://127.0.0.1:{line.rsplit(':', 1)[1]}"

    echo = "tests.workers.EchoWorker"
    for n in range(3):
        EchoWorker.enqueue({"value": n})
    CancelWorker.enqueue({"reason": "no"})
    TimeoutWorker.enqueue({"gate": str(tmp_path / "never")})  # fails: retryable for an hour
    SnoozeWorker.enqueue({"log": str(tmp_path / "snooze.log"), "seconds": 3600})
    ApprovalWorker.enqueue({"wait_timeout": 0})  # snoozes waiting for a signal
    Job.objects.create(worker="tests.workers.NoSuchWorker")  # discarded: unknown worker
    started = tmp_path / "started"
    GateWorker.enqueue({"gate": str(tmp_path / "gate"), "started": str(started)})
    EchoWorker.enqueue({"value": 9}, queue="elsewhere")  # no runner serves it
    EchoWorker.enqueue({"value": 9}, queue="elsewhere")
    wait_for(started.exists, message="the gate job to start")

    def settled() -> dict | None:
        scraped = scrape(url)
        counts = {
            event: value(scraped, f"django_relay_jobs_{event}_total", queue="default", worker=w)
            for event, w in [
                ("completed", echo),
                ("cancelled", "tests.workers.CancelWorker"),
                ("failed", "tests.workers.TimeoutWorker"),
                ("snoozed", "tests.signal_workers.ApprovalWorker"),
                ("snoozed", "tests.workers.SnoozeWorker"),
                ("discarded", "tests.workers.NoSuchWorker"),
            ]
        }
        return scraped if all(counts.values()) else None

    scraped = wait_for(settled, timeout=20, message="every outcome to be counted")
    m = lambda name, **labels: value(scraped, name, **labels)  # noqa: E731
    assert m("django_relay_jobs_started_total", queue="default", worker=echo) == 3
    assert m("django_relay_jobs_completed_total", queue="default", worker=echo) == 3
    assert m("django_relay_job_duration_seconds_count", queue="default", worker=echo) == 3
    assert m("django_relay_job_queue_wait_seconds_count", queue="default", worker=echo) == 3
    assert m("django_relay_job_duration_seconds_sum", queue="default", worker=echo) > 0
    assert (
        m("django_relay_jobs_failed_total", queue="default", worker="tests.workers.TimeoutWorker")
        == 1
    )
    assert (
        m("django_relay_jobs_discarded_total", queue="default", worker="tests.workers.NoSuchWorker")
        == 1
    )
    # The runner enqueued nothing itself: the test process did.
    assert m("django_relay_jobs_enqueued_total", queue="default", worker=echo) is None
    # Gauges, from the database.
    assert m("django_relay_jobs_executing", queue="default") == 1  # the gate job
    assert m("django_relay_jobs_waiting_for_signal", queue="default") == 1
    assert m("django_relay_jobs_available", queue="elsewhere") == 2
    assert m("django_relay_jobs_available", queue="default") == 0
    assert m("django_relay_runners") == 1

    (tmp_path / "gate").touch()
    wait_for(
        lambda: (
            m2
            if (m2 := scrape(url))
            and value(m2, "django_relay_jobs_executing", queue="default") == 0
            else None
        ),
        message="the executing gauge to drop",
    )


@pytest.mark.e2e
async def test_view_serves_this_process_counts_and_relay_round_trips(
    start_runner, async_client, counting
):
    start_runner()
    echo = {"queue": "default", "worker": "tests.workers.EchoWorker"}
    relays = "django_relay_relay_duration_seconds_count"
    enqueued = "django_relay_jobs_enqueued_total"

    async def scrape_view() -> dict:
        response = await async_client.get("/relay/metrics/")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        return samples(response.content.decode())

    before = await scrape_view()  # counters live as long as the process: count the change
    assert await EchoWorker.relay({"value": 1}) == 1
    assert await EchoWorker.relay({"value": 2}) == 2
    after = await scrape_view()
    for name in (relays, enqueued):
        assert (value(after, name, **echo) or 0) - (value(before, name, **echo) or 0) == 2
    assert value(after, "django_relay_runners") == 1

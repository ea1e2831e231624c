"""OpenTelemetry: one trace from enqueue to completion, through the job's meta."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.test.utils import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from django_relay import await_signal, worker
from django_relay.models import Job
from django_relay.testing import drain
from tests.conftest import wait_for

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)  # once per process: only this module sets it


@worker(queue="traced", max_attempts=2)
class TracedWorker:
    async def process(self, job: Any) -> Any:
        # The job's own spans nest under the runner's consumer span.
        with trace.get_tracer("tests").start_as_current_span("inside process"):
            if job.args.get("fail"):
                raise ValueError("boom")
            if job.args.get("await_signal"):
                await await_signal(wait_timeout=0)
            return "ok"

    def backoff(self, job: Any) -> float:
        return 0


@pytest.fixture
def spans():
    EXPORTER.clear()
    with override_settings(RELAY={**settings.RELAY, "TRACING": True}):
        yield lambda: list(EXPORTER.get_finished_spans())
    EXPORTER.clear()


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


@pytest.mark.django_db
def test_one_trace_from_the_enqueueing_request_to_the_jobs_completion(spans):
    with trace.get_tracer("tests").start_as_current_span("POST /orders/") as request:
        job = TracedWorker.enqueue({})
    assert drain("traced") == {"completed": 1}

    named = by_name(spans())
    [send] = named["send traced"]
    [process] = named["process traced"]
    [inside] = named["inside process"]
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (send, process, inside)} == {trace_id}
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert inside.parent.span_id == process.context.span_id
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert dict(send.attributes) == {
        "messaging.system": "django_relay",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "traced",
        "messaging.message.id": str(job.pk),
        "django_relay.job.worker": "tests.test_tracing.TracedWorker",
    }
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.id"] == str(job.pk)
    assert process.attributes["django_relay.job.attempt"] == 1
    assert process.attributes["django_relay.job.state"] == "completed"
    assert process.status.status_code == StatusCode.UNSET
    # The context travelled in the row, as W3C trace context.
    traceparent = Job.objects.get(pk=job.pk).meta["otel"]["traceparent"]
    assert traceparent.split("-")[1] == f"{trace_id:032x}"


@pytest.mark.django_db
def test_failed_attempts_are_errors_and_retries_stay_in_the_trace(spans):
    job = TracedWorker.enqueue({"fail": True})
    drain("traced")
    drain("traced")  # the retry (backoff 0): discarded
    assert Job.objects.get(pk=job.pk).state == "discarded"
    named = by_name(spans())
    [send] = named["send traced"]
    attempts = sorted(
        named["process traced"], key=lambda s: s.attributes["django_relay.job.attempt"]
    )
    assert [s.attributes["django_relay.job.state"] for s in attempts] == ["retryable", "discarded"]
    for span in attempts:
        assert span.parent.span_id == send.context.span_id
        assert (span.status.status_code, span.status.description) == (
            StatusCode.ERROR,
            "ValueError: boom",
        )


@pytest.mark.django_db
def test_a_signal_wait_is_a_span_inside_the_attempt(spans):
    TracedWorker.enqueue({"await_signal": True})
    assert drain("traced") == {"scheduled": 1}
    named = by_name(spans())
    [process] = named["process traced"]
    [waited] = named["await_signal"]
    assert waited.parent.span_id == named["inside process"][0].context.span_id
    assert waited.context.trace_id == process.context.trace_id
    assert process.attributes["django_relay.job.state"] == "scheduled"


@pytest.mark.django_db
def test_nothing_is_traced_or_stored_when_tracing_is_off():
    EXPORTER.clear()
    job = TracedWorker.enqueue({})
    drain("traced")
    ours = [s for s in EXPORTER.get_finished_spans() if s.instrumentation_scope.name != "tests"]
    assert ours == []
    assert "otel" not in Job.objects.get(pk=job.pk).meta


@pytest.mark.e2e
async def test_a_relay_has_a_producer_span_and_a_span_for_its_wait(start_runner, spans):
    from tests.workers import EchoWorker

    start_runner()
    assert await EchoWorker.relay({"value": 3}) == 3
    named = by_name(spans())
    [send] = named["send default"]
    [waited] = named["relay default"]
    # The round trip is one span, the job's send span its child: one trace.
    assert send.parent.span_id == waited.context.span_id
    assert send.context.trace_id == waited.context.trace_id
    assert waited.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert waited.end_time > send.end_time  # inserted, then waited for


@pytest.mark.e2e
def test_a_real_runner_continues_the_trace_in_its_thread_pool(
    start_runner, spans, tmp_path, monkeypatch
):
    from tests.workers import TracedSyncWorker

    exported = tmp_path / "runner-spans.jsonl"
    monkeypatch.setenv("RELAY_TEST_SPANS", str(exported))  # tests.settings exports there
    start_runner(TRACING=True)
    with trace.get_tracer("tests").start_as_current_span("POST /orders/"):
        job = TracedSyncWorker.enqueue({"value": 5})

    def runner_spans() -> dict[str, dict] | None:
        lines = exported.read_text().splitlines() if exported.exists() else []
        found = {span["name"]: span for span in map(json.loads, lines)}
        return found if {"process default", "sync work"} <= set(found) else None

    found = wait_for(runner_spans, timeout=20, message="the runner's spans")
    [send] = by_name(spans())["send default"]
    process, work = found["process default"], found["sync work"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{send.context.trace_id:032x}"
    assert process["parent_id"] == f"0x{send.context.span_id:016x}"
    assert work["parent_id"] == process["context"]["span_id"]  # the thread saw the span
    assert process["attributes"]["messaging.message.id"] == str(job.pk)
    assert process["attributes"]["django_relay.job.state"] == "completed"

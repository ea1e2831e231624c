"""OpenTelemetry tracing (the ``otel`` extra), when ``RELAY["TRACING"]`` is on.

A PRODUCER span ``send <queue>`` covers each job's insert, and its W3C trace
context travels in the job's ``meta["otel"]``; the runner continues that trace
with a CONSUMER span ``process <queue>`` around each attempt, current while
``process`` runs (so spans the job makes nest under it). Relay's wait for a
result and ``await_signal``'s live wait get INTERNAL spans. Attributes follow
the OpenTelemetry messaging semantic conventions (``messaging.system``,
``messaging.operation.type``, ``messaging.destination.name``,
``messaging.message.id``) plus ``django_relay.*`` ones.

Without the SDK configured by the project, the API's spans cost next to nothing
and export nowhere; with the setting off, nothing here runs at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from django_relay import codec
from django_relay.conf import settings

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed
    INSTALLED = False
else:
    INSTALLED = True

#: The key of ``job.meta`` that carries the producer's trace context.
META_KEY = "otel"
_FAILED = ("retryable", "discarded")


def enabled() -> bool:
    """Whether to trace: the setting is on and OpenTelemetry is installed."""
    return INSTALLED and bool(settings.TRACING)


def _attributes(job: Any, operation: str) -> dict[str, Any]:
    attributes = {
        "messaging.system": "django_relay",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": job.queue,
        "django_relay.job.worker": job.worker,
    }
    if job.pk is not None:
        attributes["messaging.message.id"] = str(job.pk)
    return attributes


#: What producing() and waiting() give when tracing is off: no generator is made,
#: nor kept suspended across a relay's wait (memory per waiter).
_OFF = contextlib.nullcontext()


def producing(jobs: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
    """A PRODUCER span per job while they are encoded and inserted.

    Each span's context is written into its job's ``meta`` first, so it must
    wrap the encoding. A no-op when tracing is off.
    """
    return _producing(jobs) if enabled() else _OFF


@contextlib.contextmanager
def _producing(jobs: Sequence[Any]) -> Iterator[None]:
    tracer = trace.get_tracer("django_relay")
    spans: list[Span] = []
    for job in jobs:
        span = tracer.start_span(
            f"send {job.queue}", kind=SpanKind.PRODUCER, attributes=_attributes(job, "send")
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        job.meta[META_KEY] = carrier
        spans.append(span)
    try:
        yield
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        raise
    finally:
        for job, span in zip(jobs, spans, strict=True):
            if job.pk is not None:
                span.set_attribute("messaging.message.id", str(job.pk))
            span.end()


@contextlib.contextmanager
def processing(job: Any) -> Iterator[Span]:
    """The CONSUMER span of one attempt, current while it runs, in the producer's trace."""
    carrier = job.meta.get(META_KEY) if isinstance(job.meta, dict) else None
    parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
    attributes = {**_attributes(job, "process"), "django_relay.job.attempt": job.attempt}
    with trace.get_tracer("django_relay").start_as_current_span(
        f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def finish(span: Span, state: str, error: str | None) -> None:
    """Record an attempt's outcome on its span: the state, and an error status on failure."""
    span.set_attribute("django_relay.job.state", state)
    if state in _FAILED:
        message = codec.loads(error).get("error") if error else None
        span.set_status(Status(StatusCode.ERROR, message))


def waiting(name: str, job: Any) -> contextlib.AbstractContextManager[None]:
    """An INTERNAL span around a wait (a relay, a signal), current; no-op when off."""
    return _waiting(name, job) if enabled() else _OFF


@contextlib.contextmanager
def _waiting(name: str, job: Any) -> Iterator[None]:
    with trace.get_tracer("django_relay").start_as_current_span(
        name, attributes=_attributes(job, "receive")
    ) as span:
        try:
            yield
        finally:
            if job.pk is not None:  # a relay's job is inserted inside its span
                span.set_attribute("messaging.message.id", str(job.pk))

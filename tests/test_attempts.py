"""Issue 8, part A, without a runner: what an attempt records when user code or
stored data misbehaves (decide, the codec's reading side, the ORM's decoder)."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.urls import reverse

from django_relay import Cancel, codec, queries, signal_sync
from django_relay.exceptions import DecodeError
from django_relay.models import Job, JobSignal, JobState
from tests.admin_client import AdminClient, staff_user
from tests.poison_workers import Unprintable, bad_value
from tests.test_outcomes import LIMIT, make_job
from tests.workers import EchoWorker


def decide(outcome: object, **job: int):
    from django_relay.engine.executor import decide

    return decide(make_job(**job), outcome, backoff=5.0, max_result_bytes=LIMIT)


@pytest.mark.parametrize("kind", ["surrogate", "bigint", "deep"])
def test_a_result_json_cannot_write_fails_the_attempt_instead_of_raising(kind):
    ack = decide(bad_value(kind))
    assert (ack.state, ack.token, ack.result, ack.delay) == (JobState.RETRYABLE, 7, None, 5.0)
    # The codec names what it refused, starting from the result.
    assert json.loads(ack.error)["error"].startswith("EncodeError: result")
    last = decide(bad_value(kind), attempt=3)
    assert last.state == JobState.DISCARDED


def test_an_exception_whose_str_raises_is_described_by_its_type():
    ack = decide(Unprintable())
    error = json.loads(ack.error)
    assert error["error"] == "Unprintable: <str() raised RuntimeError>"
    assert ack.state == JobState.RETRYABLE


@pytest.mark.parametrize(
    ("text", "stored"),
    [("a\x00b", "a\\x00b"), ("a\ud800b", "a\\ud800b"), ("plain é", "plain é")],
)
def test_error_and_cancel_texts_are_escaped_so_postgresql_can_store_them(text, stored):
    assert json.loads(decide(RuntimeError(text)).error)["error"] == f"RuntimeError: {stored}"
    assert json.loads(decide(Cancel(text)).error)["error"] == stored
    assert stored in json.loads(decide(RuntimeError(text)).error)["traceback"]


@pytest.mark.parametrize(
    "text", ['{"n": ' + "7" * 5000 + "}", '{"n": ' + "[" * 3000 + "]" * 3000 + "}"]
)
def test_the_codec_refuses_json_python_will_not_build_with_a_decode_error(text):
    with pytest.raises(DecodeError, match="cannot be decoded"):
        codec.loads(text)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args", ['{"n": ' + "7" * 5000 + "}", '{"n": ' + "[" * 3000 + "]" * 3000 + "}"]
)
def test_the_orm_loads_such_a_row_showing_the_stored_text(args):
    job = EchoWorker.enqueue({})
    with connection.cursor() as cursor:
        cursor.execute("UPDATE django_relay_job SET args = %s::jsonb WHERE id = %s", [args, job.pk])
    loaded = Job.objects.get(pk=job.pk)
    assert isinstance(loaded.args, str)
    assert loaded.args.replace(" ", "") == args.replace(" ", "")
    # The admin's list and change pages too.
    client = AdminClient(staff_user("view_job"), reverse("admin:django_relay_job_changelist"))
    assert client.get(reverse("admin:django_relay_job_changelist")).status_code == 200
    page = client.get(reverse("admin:django_relay_job_change", args=[job.pk]))
    assert page.status_code == 200
    assert b"7777777777" in page.content or b"[[[[[[[[" in page.content


@pytest.mark.django_db
def test_only_the_current_claim_consumes_a_signal():
    wait = {"n": 1, "since": "2026-01-01T00:00:00+00:00", "deadline": None}
    job = EchoWorker.enqueue({}, queue="consume", meta={"signal_wait": wait})
    with connection.cursor() as cursor:
        cursor.execute(queries.CLAIM, ("consume", 1, "me"))
        stale = cursor.fetchone()[-1]
        cursor.execute(queries.RELEASE, ([stale], "me"))  # attempt 1 given back...
        cursor.execute(queries.CLAIM, ("consume", 1, "me"))  # ...and claimed again
        current = cursor.fetchone()[-1]
    assert signal_sync(job.pk, {"ok": 1}) == 1
    with connection.cursor() as cursor:
        _, _, signal_id, payload = queries.nth_signal(cursor, job.pk, 1, 1, stale)
    assert (signal_id, json.loads(payload)) != (None, None)  # a stale attempt still reads it
    assert JobSignal.objects.get(pk=signal_id).consumed_at is None
    assert Job.objects.get(pk=job.pk).meta["signal_wait"] == wait
    with connection.cursor() as cursor:
        queries.nth_signal(cursor, job.pk, 1, 1, current)
    assert JobSignal.objects.get(pk=signal_id).consumed_at is not None
    assert "signal_wait" not in Job.objects.get(pk=job.pk).meta

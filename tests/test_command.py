"""``manage.py relayworker``: its options, refused with clear errors before anything starts."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test.utils import override_settings

from django_relay.management.commands import relayworker
from django_relay.management.commands.relayworker import parse_queues


@pytest.mark.parametrize(
    ("text", "queues"),
    [
        ("default=10", {"default": 10}),
        ("default=10,priority=5", {"default": 10, "priority": 5}),
        (" default = 10 , mail=1 ", {"default": 10, "mail": 1}),
        ("default=3,", {"default": 3}),
        (",,a=1,,b=2", {"a": 1, "b": 2}),
        ("mail.out-1=007", {"mail.out-1": 7}),
        ("_x=1000", {"_x": 1000}),
    ],
)
def test_parse_queues_reads_name_concurrency_pairs(text, queues):
    parsed = parse_queues(text)
    assert parsed == queues
    assert list(parsed) == list(queues)  # in the order given
    assert all(type(limit) is int for limit in parsed.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no queues given"),
        (" , ,", "no queues given"),
        ("default", "'default': write queue=concurrency"),
        ("default=", "'default=': write queue=concurrency"),
        ("default=0", "with a concurrency >= 1"),
        ("default=-1", "'default=-1': write queue=concurrency"),
        ("default=ten", "'default=ten': write queue=concurrency"),
        ("default=1.5", "'default=1.5': write queue=concurrency"),
        ("default=²", "write queue=concurrency"),
        ("default=1=2", "write queue=concurrency"),
        ("bad name=1", "invalid queue name 'bad name'"),
        ("=5", "invalid queue name ''"),
        ("-x=5", "invalid queue name '-x'"),
        ("a=1,b=2,a=3", "queue 'a' is given twice"),
        (" a=1, a =2", "queue 'a' is given twice"),
    ],
)
def test_parse_queues_refuses_bad_input_with_a_clear_error(text, message):
    with pytest.raises(ValueError) as excinfo:
        parse_queues(text)
    assert message in str(excinfo.value)


@pytest.fixture
def runner_started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, int], Any]]:
    """Replace the runner with one that records how it was started and returns at once."""
    started: list[tuple[dict[str, int], Any]] = []

    class RecordingRunner:
        def __init__(self, queues: dict[str, int]) -> None:
            self.queues = queues
            self.failed = False

        async def run(self, stopping: Any, grace: Any = None, on_ready: Any = None) -> None:
            started.append((self.queues, grace))

    monkeypatch.setattr(relayworker, "Runner", RecordingRunner)
    return started


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("bad name=1", "--queues: invalid queue name 'bad name'"),
        ("default=0", "--queues: 'default=0'"),
        ("default", "--queues: 'default'"),
        ("a=1,a=1", "given twice"),
    ],
)
def test_relayworker_refuses_bad_queues(runner_started, option, message):
    with pytest.raises(CommandError) as excinfo:
        call_command("relayworker", "--queues", option)
    assert message in str(excinfo.value)
    assert runner_started == []


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ({"default": 0}, "queue 'default': concurrency must be an int >= 1, not 0"),
        ({"default": "10"}, "concurrency must be an int >= 1, not '10'"),
        ({"bad name": 1}, "invalid queue name 'bad name'"),
        ({}, "must be a non-empty dict"),
    ],
    ids=repr,
)
def test_relayworker_refuses_bad_queues_from_settings(runner_started, queues, message):
    # call_command skips the system checks, so the command validates RELAY['QUEUES'] itself.
    with override_settings(RELAY={"QUEUES": queues}), pytest.raises(CommandError) as excinfo:
        call_command("relayworker")
    assert str(excinfo.value).startswith("RELAY['QUEUES']: ")
    assert message in str(excinfo.value)
    assert runner_started == []


def test_relayworker_starts_a_runner_on_the_given_queues(runner_started):
    call_command("relayworker", "--queues", "default=3,mail=1", "--grace-period", "2.5")
    assert runner_started == [({"default": 3, "mail": 1}, 2.5)]


def test_relayworker_defaults_to_the_queues_setting(runner_started):
    with override_settings(RELAY={"QUEUES": {"default": 4, "reports": 2}}):
        call_command("relayworker")
    assert runner_started == [({"default": 4, "reports": 2}, None)]


def test_relayworker_refuses_a_bad_grace_period(runner_started):
    with pytest.raises(CommandError, match=r"grace.period"):
        call_command("relayworker", "--grace-period", "soon")
    assert runner_started == []

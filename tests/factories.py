"""factory-boy factories: job rows in any state, written straight through the ORM.

Enqueueing goes through ``Worker.enqueue``; these build rows the runner would have
produced (executing, retryable, finished ...) without running one.
"""

from __future__ import annotations

import datetime as dt

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from django_relay.models import Job, JobState, Node
from tests.workers import EchoWorker


class JobFactory(DjangoModelFactory):
    """An ``available`` job of :class:`tests.workers.EchoWorker` on the default queue.

    Traits set the columns that go with a state, e.g. ``JobFactory(executing=True,
    attempted_by="node-a")`` or ``JobFactory(completed=True, result=3)``.
    """

    class Meta:
        model = Job

    worker = EchoWorker.__relay_worker__
    queue = "default"
    state = JobState.AVAILABLE
    args = factory.Sequence(lambda n: {"value": n})
    meta = factory.LazyFunction(dict)
    errors = factory.LazyFunction(list)
    attempt = 0
    max_attempts = 20
    priority = 0

    class Params:
        scheduled = factory.Trait(
            state=JobState.SCHEDULED,
            scheduled_at=factory.LazyFunction(lambda: timezone.now() + dt.timedelta(hours=1)),
        )
        executing = factory.Trait(
            state=JobState.EXECUTING,
            attempt=1,
            attempted_by="node-test",
            attempted_at=factory.LazyFunction(timezone.now),
        )
        retryable = factory.Trait(
            state=JobState.RETRYABLE,
            attempt=1,
            attempted_by="node-test",
            attempted_at=factory.LazyFunction(timezone.now),
            errors=factory.LazyFunction(
                lambda: [{"attempt": 1, "kind": "error", "error": "ValueError: boom"}]
            ),
        )
        completed = factory.Trait(
            state=JobState.COMPLETED,
            attempt=1,
            attempted_by="node-test",
            attempted_at=factory.LazyFunction(timezone.now),
            finished_at=factory.LazyFunction(timezone.now),
        )
        discarded = factory.Trait(
            state=JobState.DISCARDED,
            attempt=1,
            max_attempts=1,
            attempted_by="node-test",
            attempted_at=factory.LazyFunction(timezone.now),
            finished_at=factory.LazyFunction(timezone.now),
        )
        cancelled = factory.Trait(
            state=JobState.CANCELLED,
            finished_at=factory.LazyFunction(timezone.now),
        )


class NodeFactory(DjangoModelFactory):
    """A runner node row; its heartbeat is the database's now() unless given."""

    class Meta:
        model = Node

    id = factory.Sequence(lambda n: f"node-{n}")
    hostname = "test-host"
    pid = factory.Sequence(lambda n: 10_000 + n)
    queues = factory.LazyFunction(lambda: {"default": 10})

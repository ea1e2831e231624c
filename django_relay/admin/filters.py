"""The job list's filters and searches beyond Django's field filters, and the retry replay check."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import DateTimeField, Q, QuerySet, TextField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.db.models.lookups import IContains
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_relay.models import TERMINAL_STATES, Job, JobSignal, JobState


def short_name(worker: str) -> str:
    """A worker's class name, as the job list's worker column shows it."""
    return worker.rpartition(".")[2]


class WorkerFilter(admin.SimpleListFilter):
    """Filter by worker, listed by the short names of the worker column.

    Two workers sharing a class name in different modules keep their full paths,
    so every choice still names one worker.
    """

    title = _("worker")
    parameter_name = "worker"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        # The same DISTINCT that Django's field filter on "worker" runs.
        workers = sorted(Job.objects.order_by().values_list("worker", flat=True).distinct())
        shorts = [short_name(w) for w in workers]
        return [
            (w, short if shorts.count(short) == 1 else w)
            for w, short in zip(workers, shorts, strict=True)
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        value = self.value()
        return queryset.filter(worker=value) if value else queryset


#: The "deadline within" choices, in hours.
DEADLINE_CHOICES = {1: _("1 hour"), 24: _("24 hours"), 168: _("7 days")}


def signal_deadline() -> Cast:
    """A waiting job's ``signal_wait`` deadline as a timestamp (NULL without one)."""
    return Cast(KT("meta__signal_wait__deadline"), DateTimeField())


class DeadlineWithinFilter(admin.SimpleListFilter):
    """Jobs waiting for a signal whose deadline falls within N hours (or has passed).

    A passed deadline is included: such a job is about to time out at its next run.
    """

    title = _("signal deadline within")
    parameter_name = "deadline_within"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(str(hours), label) for hours, label in DEADLINE_CHOICES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        value = self.value() or ""
        if not value.isdigit() or int(value) not in DEADLINE_CHOICES:
            return queryset
        until = timezone.now() + dt.timedelta(hours=int(value))
        return (
            queryset.filter(state=JobState.SCHEDULED, meta__has_key="signal_wait")
            .annotate(relay_deadline=signal_deadline())
            .filter(relay_deadline__lte=until)
        )


def text_search(term: str) -> Q:
    """A condition: the job's args, result, errors or any signal payload contain ``term``.

    Each JSON column is cast to text and matched with ``icontains`` (``ILIKE``):
    no index serves it, so it reads the whole table; see README's "Admin" section
    for its cost on a large table. It is a condition on the job row itself, not an
    ``id IN (subquery)`` over the table, which PostgreSQL cannot hash at that size
    and re-reads for every row.
    """

    def contains(field: str) -> Q:
        return Q(IContains(Cast(field, TextField()), term))

    # Few signals match, so their job ids are hashed once.
    signalled = (
        JobSignal.objects.annotate(payload_text=Cast("payload", TextField()))
        .filter(payload_text__icontains=term)
        .values("job_id")
    )
    return contains("args") | contains("result") | contains("errors") | Q(pk__in=signalled)


def replaying_signals(jobs: list[Job]) -> dict[int, list[JobSignal]]:
    """The recorded signals of finished or failed jobs, which a retry would replay at once.

    The n-th ``await_signal`` of any run returns the n-th signal ever delivered, so a
    retried job that already received a decision reads it again without waiting.
    A job waiting for a signal is left out: resuming it replays them by design.
    """
    ids = [job.pk for job in jobs if job.state in (*TERMINAL_STATES, JobState.RETRYABLE)]
    found: dict[int, list[JobSignal]] = {}
    for signal in JobSignal.objects.filter(job_id__in=ids).order_by("job_id", "seq"):
        found.setdefault(signal.job_id, []).append(signal)
    return found

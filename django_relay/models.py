"""Jobs and runner nodes, with the triggers that make PostgreSQL announce changes."""

from __future__ import annotations

from typing import Any

import pgtrigger
from django.db import models
from django.db.models import Value
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from django_relay import codec
from django_relay.queries import QUEUE_CHANNEL, SIGNAL_CHANNEL
from django_relay.queries.triggers import (
    AVAILABLE_INSERTED,
    AVAILABLE_UPDATED,
    FINISHED,
    SIGNAL_WAKE,
    WORKFLOW_ADVANCE,
    WORKFLOW_ADVANCE_DECLARE,
)


class JobState(models.TextChoices):
    AVAILABLE = "available", _("available")
    """Ready to run now: runners claim it."""
    SCHEDULED = "scheduled", _("scheduled")
    """Waiting for ``scheduled_at`` (scheduled, snoozed, or waiting for a signal)."""
    EXECUTING = "executing", _("executing")
    """Claimed by a runner, which holds it under its heartbeat."""
    RETRYABLE = "retryable", _("retryable")
    """Failed with attempts left; runs again at ``scheduled_at``."""
    COMPLETED = "completed", _("completed")
    """``process`` returned a value: terminal."""
    DISCARDED = "discarded", _("discarded")
    """Failed on its last attempt, or its worker is unknown: terminal."""
    CANCELLED = "cancelled", _("cancelled")
    """``process`` returned ``Cancel``, or the job was cancelled: terminal."""
    SUSPENDED = "suspended", _("suspended")
    """A workflow step held until its dependencies finish; never claimed."""


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})


class JobQuerySet(models.QuerySet["Job"]):
    def finished(self) -> JobQuerySet:
        """Jobs in a terminal state."""
        return self.filter(state__in=TERMINAL_STATES)

    def unfinished(self) -> JobQuerySet:
        """Jobs that may still run."""
        return self.exclude(state__in=TERMINAL_STATES)

    def waiting_for_signal(self) -> JobQuerySet:
        """Jobs snoozed inside ``await_signal``."""
        return self.filter(state=JobState.SCHEDULED, meta__has_key="signal_wait")


def _json_field(**kwargs: Any) -> models.JSONField:
    return models.JSONField(encoder=codec.JSONEncoder, decoder=codec.JSONDecoder, **kwargs)


def _notify(channel: str, payload_sql: str) -> str:
    return f"PERFORM pg_notify('{channel}', {payload_sql}); RETURN NULL;"


class ChannelListField(models.Field):
    """A ``varchar(63)[]`` of NOTIFY channel names (written by SQL only).

    Not ``django.contrib.postgres``' ``ArrayField``: that would require the
    ``postgres`` app in every project's ``INSTALLED_APPS``.
    """

    def db_type(self, connection: Any) -> str:
        return "varchar(63)[]"


class Job(models.Model):
    """One unit of work: which worker runs it, with what, and how it went."""

    id = models.BigAutoField(primary_key=True)
    worker = models.CharField(_("worker"), max_length=255)
    queue = models.CharField(_("queue"), max_length=64, default="default")
    state = models.CharField(
        _("state"), max_length=16, choices=JobState.choices, default=JobState.AVAILABLE
    )
    args = _json_field(verbose_name=_("args"), default=dict)
    meta = _json_field(verbose_name=_("meta"), default=dict)
    result = _json_field(verbose_name=_("result"), null=True, blank=True)
    errors = _json_field(verbose_name=_("errors"), default=list)
    attempt = models.PositiveIntegerField(_("attempt"), default=0)
    max_attempts = models.PositiveIntegerField(_("max attempts"), default=20)
    priority = models.PositiveSmallIntegerField(_("priority"), default=0)
    scheduled_at = models.DateTimeField(_("scheduled at"), db_default=Now())
    inserted_at = models.DateTimeField(_("inserted at"), db_default=Now())
    attempted_at = models.DateTimeField(_("attempted at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    # Signals sent to this job so far. Senders increment it under the row lock, so
    # each signal's ``seq`` is its place in commit order (replays stay deterministic).
    signal_count = models.PositiveIntegerField(_("signals received"), default=0, db_default=0)
    # The runner node that owns the current (or last) attempt. With ``claim_token``
    # it fences acks: a write from an attempt that was rescued matches no row.
    attempted_by = models.CharField(  # noqa: DJ001  (NULL: never attempted)
        _("attempted by"), max_length=128, null=True, blank=True
    )
    # Workflow steps: the run, the step's name in it, the steps it waits for, and
    # whether it still runs when one of those is cancelled or discarded.
    workflow = models.ForeignKey(
        "WorkflowRun",
        models.CASCADE,
        null=True,
        blank=True,
        related_name="jobs",
        db_index=False,  # relay_job_workflow_step leads with it, for workflow rows only
    )
    step = models.CharField(_("step"), max_length=64, null=True, blank=True)  # noqa: DJ001
    deps = _json_field(
        verbose_name=_("depends on"), default=list, db_default=Value([], models.JSONField())
    )
    ignore_cancelled = models.BooleanField(default=False, db_default=False)
    ignore_discarded = models.BooleanField(default=False, db_default=False)
    # Unique jobs: a hash of what makes two jobs duplicates (and of the period's
    # window), under a unique index; the trigger relay_unique_release clears it
    # once the job leaves ``unique_states``, so a new duplicate may then be inserted.
    unique_key = models.CharField(  # noqa: DJ001  (NULL: not a unique job)
        _("unique key"), max_length=64, null=True, blank=True, editable=False
    )
    unique_states = _json_field(verbose_name=_("unique in states"), null=True, blank=True)
    # The listeners waiting for this job's outcome: each process that relays or
    # awaits it adds its own channel, and the relay_finished trigger notifies those
    # channels only (NULL: nobody waits, and no NOTIFY is sent).
    waiters = ChannelListField(_("waiting listeners"), null=True, blank=True, editable=False)
    # What makes a step's finish cost the same for any fan-in: a held step counts
    # its deps not done yet (NULL: count them again at the next dep's finish), and
    # each step names the steps that wait for it (the reverse of ``deps``).
    deps_pending = models.PositiveIntegerField(
        _("deps pending"), null=True, blank=True, editable=False
    )
    dependents = _json_field(verbose_name=_("dependents"), null=True, blank=True, editable=False)
    # Drawn from a sequence at each claim and never repeated: it fences every write
    # of the attempt (ack, release, reconcile, consuming a signal), so a stale
    # attempt's write matches nothing even after the job is claimed again with the
    # same attempt number (a snooze or a give-back hands the number back).
    claim_token = models.BigIntegerField(_("claim token"), null=True, blank=True, editable=False)

    objects = JobQuerySet.as_manager()

    #: Set on the instance ``enqueue`` returned: True when a unique job's duplicate
    #: existed, and the instance now stands for that existing job.
    conflict = False

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        permissions = [
            ("signal_job", _("Can send signals (approve/decline) to jobs")),
            ("retry_job", _("Can retry jobs")),
            ("cancel_job", _("Can cancel jobs")),
        ]
        # Claims and acks rewrite every index of the row (the state column is in
        # the partial indexes' predicates, so updates are never HOT): keep the
        # indexes few and partial.
        indexes = [
            # The claim path: next available jobs of a queue in priority order.
            models.Index(
                fields=["queue", "priority", "scheduled_at", "id"],
                condition=models.Q(state="available"),
                name="relay_job_fetch",
            ),
            models.Index(
                fields=["scheduled_at"],
                condition=models.Q(state__in=["scheduled", "retryable"]),
                name="relay_job_stage",
            ),
            models.Index(
                fields=["attempted_by"],
                condition=models.Q(state="executing"),
                name="relay_job_executing",
            ),
            models.Index(
                fields=["finished_at"],
                condition=models.Q(state__in=["completed", "discarded", "cancelled"]),
                name="relay_job_prune",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(priority__gte=0, priority__lte=9), name="relay_job_priority"
            ),
            models.CheckConstraint(
                condition=models.Q(max_attempts__gte=1), name="relay_job_max_attempts"
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=JobState.values), name="relay_job_state"
            ),
            models.UniqueConstraint(
                fields=["workflow", "step"],
                condition=models.Q(workflow__isnull=False),
                name="relay_job_workflow_step",
            ),
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=models.Q(unique_key__isnull=False),
                name="relay_job_unique",
            ),
        ]
        # Payloads carry names and ids only: NOTIFY refuses payloads over 8000
        # bytes, and a refused NOTIFY would abort the UPDATE that raised it.
        triggers = [
            # The WHEN clause keeps the cost off jobs that are not unique (the hot path).
            pgtrigger.Trigger(
                name="relay_unique_release",
                when=pgtrigger.Before,
                operation=pgtrigger.Insert | pgtrigger.Update,
                condition=pgtrigger.Condition(
                    "NEW.unique_key IS NOT NULL AND NOT (NEW.unique_states ? NEW.state)"
                ),
                func="NEW.unique_key := NULL; RETURN NEW;",
            ),
            # One NOTIFY per statement (per queue, or per 100 finished jobs), not per
            # row: transition tables give the statement's rows (see queries.triggers).
            pgtrigger.Trigger(
                name="relay_available_insert",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                referencing=pgtrigger.Referencing(new="new_rows"),  # type: ignore[no-untyped-call]
                func=AVAILABLE_INSERTED,
            ),
            pgtrigger.Trigger(
                name="relay_available_update",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                referencing=pgtrigger.Referencing(old="old_rows", new="new_rows"),  # type: ignore[no-untyped-call]
                func=AVAILABLE_UPDATED,
            ),
            pgtrigger.Trigger(
                name="relay_finished",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                referencing=pgtrigger.Referencing(old="old_rows", new="new_rows"),  # type: ignore[no-untyped-call]
                func=FINISHED,
            ),
            # Per statement: the transition tables give the steps it finished.
            pgtrigger.Trigger(
                name="relay_workflow_advance",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                referencing=pgtrigger.Referencing(old="old_rows", new="new_rows"),  # type: ignore[no-untyped-call]
                declare=WORKFLOW_ADVANCE_DECLARE,
                func=WORKFLOW_ADVANCE,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.worker}#{self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def signal_wait(self) -> dict[str, Any] | None:
        """``{"n", "since", "deadline"}`` while snoozed in ``await_signal``, else None."""
        if self.state == JobState.SCHEDULED:
            return self.meta.get("signal_wait")
        return None


class Node(models.Model):
    """A running ``relayworker`` process; its heartbeat keeps its jobs its own."""

    id = models.CharField(primary_key=True, max_length=128)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=dict)
    started_at = models.DateTimeField(db_default=Now())
    heartbeat_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = _("runner node")
        verbose_name_plural = _("runner nodes")

    def __str__(self) -> str:
        return self.id


class JobSignal(models.Model):
    """A message delivered to a job with ``signal()``: persisted, replayed in order."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="signals")
    # 1-based place among the signals of its job, in commit order.
    seq = models.PositiveIntegerField(_("sequence"))
    payload = _json_field(verbose_name=_("payload"), null=True, blank=True)
    sender = models.CharField(_("sender"), max_length=255, blank=True, default="")
    key = models.CharField(  # noqa: DJ001  (NULL: no idempotency key)
        _("idempotency key"), max_length=255, null=True, blank=True
    )
    inserted_at = models.DateTimeField(_("sent at"), db_default=Now())
    consumed_at = models.DateTimeField(_("consumed at"), null=True, blank=True)
    consumed_attempt = models.PositiveIntegerField(_("consumed by attempt"), null=True, blank=True)

    class Meta:
        verbose_name = _("job signal")
        verbose_name_plural = _("job signals")
        ordering = ["job_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["job", "seq"], name="relay_signal_seq"),
            models.UniqueConstraint(
                fields=["job", "key"],
                condition=models.Q(key__isnull=False),
                name="relay_signal_key",
            ),
        ]
        triggers = [
            # Wake the job whichever way the signal was inserted: a job snoozed in
            # await_signal becomes available (its queue's runners are woken by the
            # job trigger), and a job in its live wait hears the NOTIFY.
            pgtrigger.Trigger(
                name="relay_signal_wake",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                func=(SIGNAL_WAKE + _notify(SIGNAL_CHANNEL, "NEW.job_id::text")),
            ),
        ]

    def __str__(self) -> str:
        return f"signal {self.seq} to job {self.job_id}"


class WorkflowRun(models.Model):
    """One enqueued workflow; its state is derived from its steps (its jobs)."""

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(_("name"), max_length=255, blank=True, default="")
    inserted_at = models.DateTimeField(_("inserted at"), db_default=Now())

    class Meta:
        verbose_name = _("workflow run")
        verbose_name_plural = _("workflow runs")

    def __str__(self) -> str:
        return f"{self.name or 'workflow'} #{self.pk}"


class Queue(models.Model):
    """A queue's run-time settings, shared by every runner: paused, sizes and limits.

    Runners read the row when they start and whenever it changes (a trigger sends
    a NOTIFY); changes go through :mod:`django_relay.queues`, ``manage.py
    relayqueue`` or the admin. A queue without a row runs as ``RELAY["QUEUES"]``
    (or ``--queues``) says, with no limits.
    """

    name = models.CharField(_("name"), primary_key=True, max_length=64)
    paused = models.BooleanField(_("paused"), default=False, db_default=False)
    # Node ids or host names where the queue is paused although ``paused`` is false.
    paused_nodes = models.JSONField(_("paused on"), default=list, blank=True)
    # Jobs at once per runner; None: as the runner was started. ``node_limits`` maps
    # a node id or a host name to its own value.
    local_limit = models.PositiveIntegerField(_("local limit"), null=True, blank=True)
    node_limits = models.JSONField(_("per-node limits"), default=dict, blank=True)
    global_limit = models.PositiveIntegerField(_("global limit"), null=True, blank=True)
    rate_limit = models.PositiveIntegerField(_("rate limit"), null=True, blank=True)
    rate_period = models.FloatField(_("rate period (seconds)"), null=True, blank=True)
    # What the limits count separately: "" (the whole queue), "worker", or "args:KEY".
    partition = models.CharField(_("partitioned by"), max_length=128, blank=True, default="")
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("queue")
        verbose_name_plural = _("queues")
        permissions = [("control_queue", _("Can pause, resume, scale and limit queues"))]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(local_limit__gte=1) | models.Q(local_limit__isnull=True),
                name="relay_queue_local_limit",
            ),
            models.CheckConstraint(
                condition=models.Q(global_limit__gte=1) | models.Q(global_limit__isnull=True),
                name="relay_queue_global_limit",
            ),
            models.CheckConstraint(
                condition=models.Q(rate_limit__isnull=True, rate_period__isnull=True)
                | models.Q(rate_limit__gte=1, rate_period__gt=0),
                name="relay_queue_rate",
            ),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="relay_queue_changed",
                when=pgtrigger.After,
                operation=pgtrigger.Insert | pgtrigger.Update,
                func=_notify(QUEUE_CHANNEL, "NEW.name"),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class QueueStart(models.Model):
    """When a job of a rate-limited queue started: the rate limit's sliding window.

    Written by the limited claim only (queues without a rate limit write nothing)
    and pruned by it past the window.
    """

    id = models.BigAutoField(primary_key=True)
    queue = models.CharField(max_length=64)
    part = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()

    class Meta:
        verbose_name = _("queue start")
        indexes = [models.Index(fields=["queue", "started_at"], name="relay_queue_start")]

    def __str__(self) -> str:
        return f"{self.queue} started a job at {self.started_at}"


class PeriodicEntry(models.Model):
    """The last tick of one ``RELAY["PERIODIC"]`` entry: the key that makes ticks unique."""

    name = models.CharField(_("name"), primary_key=True, max_length=255)
    last_tick = models.DateTimeField(_("last tick"), null=True, blank=True)
    last_job_id = models.BigIntegerField(_("last job"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())

    class Meta:
        verbose_name = _("periodic job")
        verbose_name_plural = _("periodic jobs")
        permissions = [("run_periodic", _("Can run periodic jobs now"))]

    def __str__(self) -> str:
        return self.name

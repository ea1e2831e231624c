"""Building and inserting jobs: ``Worker.new``/``enqueue``, ``enqueue_many``.

Every job is validated and encoded before anything is sent, so bad input raises
here and inserts nothing. Inserts run on Django's connection: they join the
caller's transaction, and a rollback un-enqueues them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone

from django_relay import codec, queries, signals, tracing
from django_relay.conf import settings
from django_relay.exceptions import EncodeError
from django_relay.models import Job
from django_relay.registry import (
    Unique,
    is_seconds,
    lookup,
    make_unique,
    options_of,
    validate_max_attempts,
    validate_priority,
    validate_queue,
)


def new(
    klass: type,
    args: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    scheduled_at: dt.datetime | None = None,
    schedule_in: float | dt.timedelta | None = None,
    meta: Mapping[str, Any] | None = None,
    unique: Any = None,
) -> Job:
    """Build an unsaved :class:`Job` for this worker (see ``@worker`` for defaults).

    Raises:
        ValueError: an option is invalid (``unique`` naming a key that ``args`` or
            ``meta`` does not have, among others).
    """
    options = options_of(klass)
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise EncodeError(f"args must be a dict, not {type(args).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise EncodeError(f"meta must be a dict, not {type(meta).__name__}")
    if scheduled_at is not None and schedule_in is not None:
        raise ValueError("give scheduled_at or schedule_in, not both")
    if schedule_in is not None:
        if isinstance(schedule_in, dt.timedelta):
            schedule_in = schedule_in.total_seconds()
        if not is_seconds(schedule_in):
            raise ValueError(f"schedule_in must be seconds or a timedelta, not {schedule_in!r}")
        scheduled_at = timezone.now() + dt.timedelta(seconds=schedule_in)
    if scheduled_at is not None and not isinstance(scheduled_at, dt.datetime):
        raise ValueError(f"scheduled_at must be a datetime, not {scheduled_at!r}")
    if scheduled_at is not None and timezone.is_naive(scheduled_at):
        raise ValueError("scheduled_at must be timezone-aware")
    job = _unsaved_job(
        worker=klass.__relay_worker__,  # type: ignore[attr-defined]
        queue=validate_queue(options.queue if queue is None else queue),
        priority=validate_priority(options.priority if priority is None else priority),
        max_attempts=validate_max_attempts(
            options.max_attempts if max_attempts is None else max_attempts
        ),
        args=dict(args),
        meta=dict(meta or {}),
    )
    job.scheduled_at = scheduled_at  # type: ignore[assignment]  # None: the database's now()
    spec = options.unique if unique is None else make_unique(unique)
    if spec is not None:
        job.unique_key = unique_key(job, spec)
        job.unique_states = list(spec.states)
    return job


#: What ``Job()`` sets on an instance (the fields' defaults), read once; and the
#: names among them whose default is a new ``{}`` or ``[]`` each time.
_blank: tuple[dict[str, Any], tuple[str, ...]] | None = None


def _unsaved_job(**values: Any) -> Job:
    """``Job(**values)``, for plain concrete fields, in a fraction of its time.

    ``Model.__init__`` asks each of the model's fields for its default and sends
    ``pre_init``/``post_init``: a relay pays that on its path to the insert. The
    defaults are copied from one ``Job()`` instead (its empty dicts and lists anew
    for each job). Should anyone listen to those signals for ``Job``, ``Job()``
    builds it, so they are sent as ever.
    """
    if pre_init.has_listeners(Job) or post_init.has_listeners(Job):
        return Job(**values)
    global _blank
    if _blank is None:
        defaults = {name: value for name, value in vars(Job()).items() if name != "_state"}
        fresh = tuple(name for name, value in defaults.items() if type(value) in (dict, list))
        _blank = defaults, fresh
    defaults, fresh = _blank
    job = Job.__new__(Job)
    fields = job.__dict__
    fields.update(defaults)
    for name in fresh:
        fields[name] = type(defaults[name])()
    fields.update(values)
    job._state = ModelState()
    return job


def unique_key(job: Job, spec: Unique) -> str:
    """The hash two duplicate jobs share: their chosen fields and the period's window.

    Raises:
        ValueError: ``spec`` names an args or meta key that the job does not have.
    """
    chosen: dict[str, Any] = {}
    for name in spec.fields:
        value = getattr(job, name)
        subset = {"args": spec.keys, "meta": spec.meta_keys}.get(name)
        if subset is not None:
            missing = [key for key in subset if key not in value]
            if missing:
                raise ValueError(
                    f"unique {'keys' if name == 'args' else 'meta_keys'}: "
                    f"{name} has no key {missing[0]!r}"
                )
            value = {key: value[key] for key in subset}
        chosen[name] = value
    if spec.period is not None:
        # Fixed windows aligned on the epoch: one per ``period`` seconds.
        chosen["window"] = int(timezone.now().timestamp() // spec.period)
    text = json.dumps(codec.to_json(chosen), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def enqueue(klass: type, args: Mapping[str, Any] | None = None, **opts: Any) -> Job:
    """Insert a job for this worker, inside the caller's transaction if one is open."""
    return enqueue_many([new(klass, args, **opts)])[0]


async def aenqueue(klass: type, args: Mapping[str, Any] | None = None, **opts: Any) -> Job:
    """See enqueue()."""
    return await sync_to_async(enqueue)(klass, args, **opts)


def _row(job: Job, limit: int) -> tuple[Any, ...]:
    """An unsaved job's row, in :func:`queries.job_row`'s order, args and meta encoded."""
    if not isinstance(job, Job):
        raise TypeError(f"enqueue_many takes Job instances (from Worker.new()), not {job!r}")
    if not job._state.adding:
        raise ValueError(f"job {job.pk} is already saved")
    return (
        codec.dumps(job.args, limit=limit, what="args"),
        codec.dumps(job.meta, limit=limit, what="meta"),
        job.worker,
        job.queue,
        job.max_attempts,
        job.priority,
        job.scheduled_at,
        job.state if job.state == "suspended" else None,
        job.workflow_id,
        job.step,
        list(job.deps) if job.deps else None,
        job.ignore_cancelled,
        job.ignore_discarded,
        job.unique_key,
        list(job.unique_states) if job.unique_key else None,
        job.deps_pending,
        job.dependents,
    )


def encode(job: Job) -> queries.NewJob:
    """The row to insert for an unsaved job, its JSON encoded and size-checked.

    Raises:
        EncodeError: args or meta cannot be stored.
    """
    return queries.NewJob(*_row(job, settings.MAX_ARGS_BYTES))


def enqueue_many(jobs: Iterable[Job] | Any) -> list[Job]:
    """Insert many jobs (or a workflow's) in one statement; return them saved.

    Every job is encoded before anything is sent, so one bad job inserts nothing.
    The very instances given are saved: each has its ``id`` afterwards. A unique
    job whose duplicate exists (or comes earlier in ``jobs``) is not inserted: its
    instance takes the existing job's id and state, with ``conflict`` set.

    Raises:
        EncodeError: a job's args or meta cannot be stored (nothing is inserted).
    """
    if hasattr(jobs, "enqueue") and not isinstance(jobs, Iterable):
        return jobs.enqueue()  # a Workflow
    jobs = list(jobs)
    if not jobs:
        return []
    if len({id(job) for job in jobs}) != len(jobs):
        # It would be inserted twice, and keep only the last row's id.
        raise ValueError("enqueue_many was given the same Job instance twice")
    alias = settings.DATABASE_ALIAS
    limit = settings.MAX_ARGS_BYTES
    job_row = queries.job_row
    with tracing.producing(jobs):  # writes each job's trace context into its meta
        rows = [job_row(*_row(job, limit)) for job in jobs]
        # Several statements (unique jobs, or a batch past one statement's size)
        # are one transaction, so a failure inserts none of them.
        several = queries.statements(rows) > 1
        with (
            transaction.atomic(using=alias) if several else nullcontext(),
            connections[alias].cursor() as cursor,
        ):
            returned = queries.insert_rows(cursor, rows)
        mark_saved(jobs, returned)
    if signals.job_enqueued.receivers:
        for job in jobs:
            if not job.conflict:  # a duplicate: nothing was enqueued
                signals.job_enqueued.send(sender=lookup(job.worker), job=job)
    return jobs


def mark_saved(jobs: Iterable[Job], returned: Iterable[tuple[Any, ...]]) -> None:
    """Give inserted jobs what the INSERT returned.

    That is ``(id, state, scheduled_at, inserted_at, conflict)``: with ``conflict``
    the job was a duplicate and now stands for the existing job.
    """
    alias = settings.DATABASE_ALIAS
    for job, (job_id, state, scheduled_at, inserted_at, conflict) in zip(
        jobs, returned, strict=True
    ):
        job.id, job.state, job.scheduled_at, job.inserted_at = (
            job_id,
            state,
            scheduled_at,
            inserted_at,
        )
        job.conflict = conflict
        job._state.adding = False
        job._state.db = alias


async def aenqueue_many(jobs: Iterable[Job] | Any) -> list[Job]:
    """See enqueue_many()."""
    return await sync_to_async(enqueue_many)(jobs)

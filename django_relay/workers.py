"""``@worker``: registering worker classes, building and enqueueing their jobs."""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.utils import timezone
from django.utils.module_loading import import_string

from django_relay import codec, queries, signals
from django_relay.conf import settings
from django_relay.exceptions import EncodeError, RelayError, WorkerError
from django_relay.models import Job

T = TypeVar("T", bound=type)

QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

_registry: dict[str, type] = {}


def _is_seconds(value: object) -> bool:
    """A finite int or float, and not a bool."""
    return type(value) is not bool and isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Return from ``process`` to stop the job for good: it becomes ``cancelled``."""

    reason: str | None = None

    def __post_init__(self) -> None:
        # The reason is recorded as the error text; one the codec cannot store (an
        # object) would fail the ack and leave the job to be re-run forever.
        if self.reason is not None and not isinstance(self.reason, str):
            object.__setattr__(self, "reason", str(self.reason))


@dataclass(frozen=True, slots=True)
class Snooze:
    """Return from ``process`` to run the job again in ``seconds``, keeping its attempt."""

    seconds: float

    def __post_init__(self) -> None:
        if isinstance(self.seconds, dt.timedelta):
            object.__setattr__(self, "seconds", self.seconds.total_seconds())
        if not _is_seconds(self.seconds) or self.seconds < 0:
            # NaN or infinity would make the ack's interval arithmetic fail in SQL.
            raise ValueError(f"Snooze needs a number of seconds >= 0, not {self.seconds!r}")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker's jobs are run, as given to ``@worker``."""

    queue: str = "default"
    max_attempts: int = 20
    priority: int = 0
    timeout: float | None = None


def validate_queue(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name.

    Raises:
        ValueError: a clear message when it is not.
    """
    # fullmatch: with match() and "$", "default\n" passed as a valid name.
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise ValueError(f"invalid queue name {queue!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return queue


def _validate_priority(priority: object) -> int:
    if type(priority) is not int or not 0 <= priority <= 9:
        raise ValueError(f"priority must be an int from 0 (first) to 9, not {priority!r}")
    return priority


def _validate_max_attempts(max_attempts: object) -> int:
    if type(max_attempts) is not int or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
    return max_attempts


def default_backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: exponential, capped at a day, with jitter."""
    base = min(15 + 2 ** min(attempt, 20), 86_400)
    return base * random.uniform(0.9, 1.1)


def worker[T: type](
    cls: T | None = None,
    *,
    queue: str = "default",
    max_attempts: int = 20,
    priority: int = 0,
    timeout: float | None = None,
) -> Any:
    """Register a class with a ``process(self, job)`` method as a worker.

    Usable bare (``@worker``) or with options (``@worker(queue="mail")``). The class
    gains ``new``, ``enqueue``, ``aenqueue``, ``relay`` and ``relay_sync``.

    Args:
        queue: Queue its jobs go to unless ``new(queue=...)`` says otherwise.
        max_attempts: Attempts before a failing job is discarded.
        priority: 0 (runs first) to 9.
        timeout: Seconds an attempt may run before it fails; None for no limit.

    Raises:
        ValueError: an option is out of range.
        TypeError: the class has no ``process`` method.
    """
    options = WorkerOptions(
        queue=validate_queue(queue),
        max_attempts=_validate_max_attempts(max_attempts),
        priority=_validate_priority(priority),
        timeout=_validate_timeout(timeout),
    )

    def register(klass: T) -> T:
        if not callable(getattr(klass, "process", None)):
            raise TypeError(f"{klass.__qualname__} needs a process(self, job) method")
        path = f"{klass.__module__}.{klass.__qualname__}"
        klass.__relay_worker__ = path  # type: ignore[attr-defined]
        klass.__relay_options__ = options  # type: ignore[attr-defined]
        for name, method in _CLASS_METHODS.items():
            setattr(klass, name, classmethod(method))  # type: ignore[arg-type]
        if not hasattr(klass, "backoff"):
            klass.backoff = lambda self, job: default_backoff(job.attempt)  # type: ignore[attr-defined]
        _registry[path] = klass
        return klass

    return register if cls is None else register(cls)


def _validate_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not _is_seconds(timeout) or float(timeout) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)  # type: ignore[arg-type]


def resolve(path: str) -> type:
    """Return the registered worker class stored as ``path`` in a job row.

    Only a class registered with ``@worker`` is returned, never an arbitrary callable.

    Raises:
        WorkerError: the path does not name a registered worker.
    """
    klass = _registry.get(path)
    if klass is None:
        try:
            import_string(path)  # importing its module registers it
        except Exception as exc:
            # Not only ImportError: a module that fails at import time must not
            # escape the executor, which only turns WorkerError into a discard.
            raise WorkerError(f"cannot import worker {path!r}: {exc!r}") from exc
        klass = _registry.get(path)
    if klass is None:
        raise WorkerError(f"{path!r} is not a registered @worker class; refusing to run it")
    return klass


def options_of(klass: type) -> WorkerOptions:
    """The ``@worker`` options of a registered class."""
    try:
        return klass.__relay_options__  # type: ignore[attr-defined]
    except AttributeError:
        raise WorkerError(f"{klass.__qualname__} is not a @worker class") from None


# -- class methods given to every worker ---------------------------------------


def _new(
    klass: type,
    args: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    scheduled_at: dt.datetime | None = None,
    schedule_in: float | dt.timedelta | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Job:
    """Build an unsaved :class:`Job` for this worker (see ``@worker`` for defaults)."""
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
        if not _is_seconds(schedule_in):
            raise ValueError(f"schedule_in must be seconds or a timedelta, not {schedule_in!r}")
        scheduled_at = timezone.now() + dt.timedelta(seconds=schedule_in)
    if scheduled_at is not None and not isinstance(scheduled_at, dt.datetime):
        raise ValueError(f"scheduled_at must be a datetime, not {scheduled_at!r}")
    if scheduled_at is not None and timezone.is_naive(scheduled_at):
        raise ValueError("scheduled_at must be timezone-aware")
    job = Job(
        worker=klass.__relay_worker__,  # type: ignore[attr-defined]
        queue=validate_queue(options.queue if queue is None else queue),
        priority=_validate_priority(options.priority if priority is None else priority),
        max_attempts=_validate_max_attempts(
            options.max_attempts if max_attempts is None else max_attempts
        ),
        args=dict(args),
        meta=dict(meta or {}),
    )
    job.scheduled_at = scheduled_at  # type: ignore[assignment]  # None: the database's now()
    return job


def _enqueue(klass: type, args: Mapping[str, Any] | None = None, **opts: Any) -> Job:
    """Insert a job for this worker, inside the caller's transaction if one is open."""
    return enqueue_many([_new(klass, args, **opts)])[0]


async def _aenqueue(klass: type, args: Mapping[str, Any] | None = None, **opts: Any) -> Job:
    """See enqueue()."""
    return await sync_to_async(_enqueue)(klass, args, **opts)


async def _relay(
    klass: type,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    poll_interval: float | None = None,
    with_retries: bool = False,
    cancel_on_timeout: bool = False,
    **opts: Any,
) -> Any:
    """Enqueue a job and wait for its result; see :func:`django_relay.relay.relay_job`."""
    from django_relay.relay import relay_job

    return await relay_job(
        _new(klass, args, **opts),
        timeout=timeout,
        poll_interval=poll_interval,
        with_retries=with_retries,
        cancel_on_timeout=cancel_on_timeout,
    )


def _relay_sync(klass: type, args: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """See relay()."""
    return async_to_sync(_relay)(klass, args, **kwargs)


_CLASS_METHODS = {
    "new": _new,
    "enqueue": _enqueue,
    "aenqueue": _aenqueue,
    "relay": _relay,
    "relay_sync": _relay_sync,
}


# -- enqueueing many -------------------------------------------------------------


def encode(job: Job) -> queries.NewJob:
    """The row to insert for an unsaved job, its JSON encoded and size-checked.

    Raises:
        EncodeError: args or meta cannot be stored.
    """
    if not isinstance(job, Job):
        raise TypeError(f"enqueue_many takes Job instances (from Worker.new()), not {job!r}")
    if not job._state.adding:
        raise ValueError(f"job {job.pk} is already saved")
    limit = settings.MAX_ARGS_BYTES
    return queries.NewJob(
        worker=job.worker,
        queue=job.queue,
        args=codec.dumps(job.args, limit=limit, what="args"),
        meta=codec.dumps(job.meta, limit=limit, what="meta"),
        max_attempts=job.max_attempts,
        priority=job.priority,
        scheduled_at=job.scheduled_at,
        state=job.state if job.state == "suspended" else None,
        workflow_id=job.workflow_id,
        step=job.step,
        deps=codec.dumps(list(job.deps)) if job.deps else None,
        ignore_cancelled=job.ignore_cancelled,
        ignore_discarded=job.ignore_discarded,
    )


def enqueue_many(jobs: Iterable[Job] | Any) -> list[Job]:
    """Insert many jobs (or a workflow's) in one statement; return them saved.

    Every job is encoded before anything is sent, so one bad job inserts nothing.
    The very instances given are saved: each has its ``id`` afterwards.

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
    rows = [encode(job) for job in jobs]
    with connections[settings.DATABASE_ALIAS].cursor() as cursor:
        returned = queries.insert_jobs(cursor, rows)
    mark_saved(jobs, returned)
    if signals.job_enqueued.receivers:
        for job in jobs:
            signals.job_enqueued.send(sender=_registry.get(job.worker), job=job)
    return jobs


def mark_saved(jobs: Iterable[Job], returned: Iterable[tuple[Any, ...]]) -> None:
    """Give inserted jobs what the INSERT returned: ``(id, state, scheduled_at, inserted_at)``."""
    for job, (job_id, state, scheduled_at, inserted_at) in zip(jobs, returned, strict=True):
        job.id, job.state, job.scheduled_at, job.inserted_at = (
            job_id,
            state,
            scheduled_at,
            inserted_at,
        )
        job._state.adding = False
        job._state.db = settings.DATABASE_ALIAS


async def aenqueue_many(jobs: Iterable[Job] | Any) -> list[Job]:
    """See enqueue_many()."""
    return await sync_to_async(enqueue_many)(jobs)


def ensure_not_in_transaction(action: str) -> None:
    """Refuse to wait for a job from inside an open transaction: it cannot succeed.

    Raises:
        RelayError: a transaction is open on the jobs' database connection.
    """
    if connections[settings.DATABASE_ALIAS].in_atomic_block:
        raise RelayError(
            f"{action} inside an open transaction (transaction.atomic or ATOMIC_REQUESTS) "
            "would always time out: no runner can see the job before the transaction "
            "commits. Commit first (e.g. transaction.on_commit) or wait outside it."
        )

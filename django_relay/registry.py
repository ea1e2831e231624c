"""The worker registry: which classes may run, their options, and their outcomes.

A job row names its worker by dotted path; :func:`resolve` turns that path back
into a class only if it was registered with ``@worker`` (see
:mod:`django_relay.decorators`), never into an arbitrary callable.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from dataclasses import dataclass

from django.utils.module_loading import import_string

from django_relay.exceptions import WorkerError

QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

_registry: dict[str, type] = {}


def is_seconds(value: object) -> bool:
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
        if not is_seconds(self.seconds) or self.seconds < 0:
            # NaN or infinity would make the ack's interval arithmetic fail in SQL.
            raise ValueError(f"Snooze needs a number of seconds >= 0, not {self.seconds!r}")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker's jobs are run, as given to ``@worker``."""

    queue: str = "default"
    max_attempts: int = 20
    priority: int = 0
    timeout: float | None = None
    unique: Unique | None = None


def validate_queue(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name.

    Raises:
        ValueError: a clear message when it is not.
    """
    # fullmatch: with match() and "$", "default\n" passed as a valid name.
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise ValueError(f"invalid queue name {queue!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return queue


def validate_priority(priority: object) -> int:
    if type(priority) is not int or not 0 <= priority <= 9:
        raise ValueError(f"priority must be an int from 0 (first) to 9, not {priority!r}")
    return priority


def validate_max_attempts(max_attempts: object) -> int:
    if type(max_attempts) is not int or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
    return max_attempts


def make_options(
    *,
    queue: object,
    max_attempts: object,
    priority: object,
    timeout: object,
    unique: object = None,
) -> WorkerOptions:
    """Validated ``@worker`` options.

    Raises:
        ValueError: an option is out of range.
    """
    return WorkerOptions(
        queue=validate_queue(queue),
        max_attempts=validate_max_attempts(max_attempts),
        priority=validate_priority(priority),
        timeout=validate_timeout(timeout),
        unique=make_unique(unique),
    )


def default_backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: exponential, capped at a day, with jitter."""
    base = min(15 + 2 ** min(attempt, 20), 86_400)
    return base * random.uniform(0.9, 1.1)


def validate_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not is_seconds(timeout) or float(timeout) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)  # type: ignore[arg-type]


def register(klass: type, options: WorkerOptions) -> str:
    """Record ``klass`` as the worker for its dotted path; return the path."""
    path = f"{klass.__module__}.{klass.__qualname__}"
    klass.__relay_worker__ = path  # type: ignore[attr-defined]
    klass.__relay_options__ = options  # type: ignore[attr-defined]
    if not hasattr(klass, "backoff"):
        klass.backoff = lambda self, job: default_backoff(job.attempt)  # type: ignore[attr-defined]
    _registry[path] = klass
    return path


def lookup(path: str) -> type | None:
    """The class registered as ``path``, without importing anything."""
    return _registry.get(path)


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


#: States a unique job stays unique in by default: every state it may still run from.
UNIQUE_STATES = ("available", "scheduled", "executing", "retryable", "suspended")
_ALL_STATES = (*UNIQUE_STATES, "completed", "discarded", "cancelled")
_UNIQUE_FIELDS = ("worker", "queue", "args", "meta")


@dataclass(frozen=True, slots=True)
class Unique:
    """What makes two jobs duplicates (``@worker(unique=...)``, ``new(unique=...)``).

    Two jobs are duplicates when their ``fields`` are equal (for ``args`` only the
    ``keys`` given, for ``meta`` only the ``meta_keys`` given; None: all of it), they were enqueued
    in the same ``period`` (fixed windows of that many seconds; None: any time),
    and the first is still in one of ``states``.
    """

    period: float | None = None
    fields: tuple[str, ...] = ("worker", "queue", "args")
    keys: tuple[str, ...] | None = None
    meta_keys: tuple[str, ...] | None = None
    states: tuple[str, ...] = UNIQUE_STATES


def make_unique(unique: object) -> Unique | None:
    """``unique`` as given to ``@worker``/``new()`` (None, True, a dict or a ``Unique``).

    Raises:
        ValueError: naming the ``unique`` option that is wrong.
    """
    if unique is None or unique is False:
        return None
    if unique is True:
        return Unique()
    if isinstance(unique, dict):
        try:
            unique = Unique(**unique)
        except TypeError as exc:
            raise ValueError(f"unique: {exc}") from None
    if not isinstance(unique, Unique):
        raise ValueError(f"unique must be True, a dict or a Unique, not {unique!r}")
    period = unique.period
    if period is not None and (not is_seconds(period) or period <= 0):
        raise ValueError(f"unique period must be a positive number of seconds, not {period!r}")

    def names(option: str, value: object, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ValueError(f"unique {option} must be a list of names, not {value!r}")
        for name in value:
            if not isinstance(name, str) or (allowed is not None and name not in allowed):
                raise ValueError(f"unique {option}: unknown name {name!r}")
        return tuple(value)

    fields = names("fields", unique.fields, _UNIQUE_FIELDS)
    if "worker" not in fields:
        fields = ("worker", *fields)  # a key never spans two workers
    keys = None if unique.keys is None else names("keys", unique.keys, None)
    meta_keys = None if unique.meta_keys is None else names("meta_keys", unique.meta_keys, None)
    if meta_keys and "meta" not in fields:
        fields = (*fields, "meta")  # naming meta keys makes meta count
    states = names("states", unique.states, _ALL_STATES)
    if not states:
        raise ValueError("unique states must name at least one state")
    return Unique(float(period) if period is not None else None, fields, keys, meta_keys, states)

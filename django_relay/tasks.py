"""A backend for Django's Tasks framework: ``@task`` functions run as django_relay jobs.

``TASKS = {"default": {"BACKEND": "django_relay.tasks.RelayBackend"}}`` is all a
project changes. Each enqueued task is an ordinary :class:`~django_relay.models.Job`
of one internal worker, :class:`TaskWorker`, run by ``relayworker`` like any other
job: durable rows, rescue after a crash, retries, NOTIFY-pushed results,
``await_signal`` and the admin all apply. The job's args hold the task's module
path; the runner imports it and runs it only if it is a ``django.tasks.Task`` whose
backend is a :class:`RelayBackend`, never an arbitrary callable.

A task result's id is its job's id, as a string.
"""

from __future__ import annotations

import django

if django.VERSION < (6, 0):  # pragma: no cover - exercised by the Django 5.2 tox env
    raise ImportError(
        "django_relay.tasks (the backend for Django's Tasks framework) needs Django 6.0 "
        f"or later, which ships django.tasks; this is Django {django.get_version()}. "
        "Upgrade Django, or use django_relay's @worker classes."
    )

import math
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from django_relay import codec
from django_relay.conf import settings
from django_relay.decorators import worker
from django_relay.enqueue import enqueue_many
from django_relay.exceptions import WorkerError
from django_relay.models import Job, JobState
from django_relay.registry import default_backoff, validate_queue
from django_relay.results import accept_handle, relay_job

#: Attempts per task unless ``OPTIONS["MAX_ATTEMPTS"]`` or the task says otherwise.
DEFAULT_MAX_ATTEMPTS = 3

_OPTIONS = frozenset({"MAX_ATTEMPTS", "BACKOFF"})


class RunnerLost(Exception):
    """Recorded in ``TaskResult.errors`` for an attempt whose runner died mid-run.

    The job was rescued by another runner (see ``RELAY["RESCUE_AFTER"]``).
    """


def relay_priority(priority: int) -> int:
    """Django's task priority (-100..100, higher first) as a job priority (0..9, lower first).

    The 201 Django priorities are cut into ten bands of 20, the top one 21, highest
    first: 80..100 → 0, 60..79 → 1, 40..59 → 2, 20..39 → 3, 0..19 → 4 (Django's
    default, 0, is 4), -20..-1 → 5, -40..-21 → 6, -60..-41 → 7, -80..-61 → 8,
    -100..-81 → 9. A task of higher priority never runs after one of lower
    priority in the same queue; within a band, tasks run in order of
    ``run_after`` (or enqueueing).
    """
    span = TASK_MAX_PRIORITY - TASK_MIN_PRIORITY + 1
    # int(): Django accepts any whole number, 3.0 included.
    return int((TASK_MAX_PRIORITY - priority) * 10 // span)


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayTask(Task):
    """Django's ``Task`` plus django_relay's retry options.

    ``@task(max_attempts=5, backoff=10)`` and ``.using(max_attempts=..., backoff=...)``
    set them per task; ``None`` takes the backend's ``OPTIONS``.
    """

    #: Attempts before the task is FAILED for good (an error or a lost runner).
    max_attempts: int | None = None
    #: Seconds between a failed attempt and the next.
    backoff: float | None = None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
    ) -> RelayTask:
        """A copy with other defaults; see Django's ``Task.using()``."""
        task: Any = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        changes: dict[str, Any] = {"max_attempts": max_attempts, "backoff": backoff}
        changes = {name: value for name, value in changes.items() if value is not None}
        return replace(task, **changes) if changes else task


def _is_seconds(value: object) -> bool:
    return (
        type(value) is not bool
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


class RelayBackend(BaseTaskBackend):
    """Stores tasks as django_relay jobs, run by ``relayworker``.

    ``OPTIONS``:
        ``MAX_ATTEMPTS`` (default 3): attempts before a task is FAILED; an attempt
            whose runner died counts, so 1 means a crash loses the task.
        ``BACKOFF`` (default None: django_relay's exponential backoff with jitter):
            seconds between attempts, or a function (or its dotted path) taking
            the attempt number that failed and returning seconds.
    """

    task_class = RelayTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - _OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(unknown)}; "
                f"RelayBackend knows {sorted(_OPTIONS)}"
            )
        self.max_attempts = self.options.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['MAX_ATTEMPTS'] must be an int >= 1, "
                f"not {self.max_attempts!r}"
            )
        backoff = self.options.get("BACKOFF")
        if isinstance(backoff, str):
            backoff = import_string(backoff)
        if not (backoff is None or callable(backoff) or _is_seconds(backoff)):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['BACKOFF'] must be None, seconds >= 0, or a "
                f"function of the attempt number, not {backoff!r}"
            )
        self.backoff: float | Callable[[int], float] | None = backoff

    def validate_task(self, task: Task) -> None:
        """Django's checks, then django_relay's queue names and retry options.

        Raises:
            InvalidTask: the task cannot be enqueued on this backend.
        """
        super().validate_task(task)
        try:
            validate_queue(task.queue_name)
        except ValueError as exc:
            raise InvalidTask(
                f"Queue {task.queue_name!r} is not valid for backend: {exc}."
            ) from None
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
            raise InvalidTask(f"max_attempts must be an int >= 1, not {max_attempts!r}.")
        backoff = getattr(task, "backoff", None)
        if backoff is not None and not _is_seconds(backoff):
            raise InvalidTask(f"backoff must be a number of seconds >= 0, not {backoff!r}.")

    def new_job(self, task: Task, args: Any, kwargs: Any) -> Job:
        """The unsaved job that runs ``task(*args, **kwargs)``; nothing is stored.

        Raises:
            InvalidTask: the task is invalid for this backend, or cannot be
                imported by its module path (as the runner will).
            TypeError: an argument is not JSON (Django's own check).
            EncodeError: raised when the job is inserted, for arguments the codec
                refuses (non-finite floats, non-string keys, over
                ``RELAY["MAX_ARGS_BYTES"]``).
        """
        self.validate_task(task)
        try:
            found = import_string(task.module_path)
        except ImportError as exc:
            raise InvalidTask(f"Task {task.module_path!r} cannot be imported: {exc}.") from exc
        if not isinstance(found, Task) or found.func is not task.func:
            raise InvalidTask(
                f"{task.module_path!r} does not name this Task: a runner could not find it."
            )
        payload: dict[str, Any] = {
            "task": task.module_path,
            "backend": self.alias,
            # Django's own normalization, and its errors: a tuple becomes a list.
            "args": normalize_json(list(args)),
            "kwargs": normalize_json(dict(kwargs)),
            "priority": task.priority,
            "queue_name": task.queue_name,
        }
        if task.run_after is not None:
            payload["run_after"] = task.run_after
        for option in ("max_attempts", "backoff"):
            if getattr(task, option, None) is not None:
                payload[option] = getattr(task, option)
        job = TaskWorker.new(  # type: ignore[attr-defined]
            payload,
            queue=task.queue_name,
            priority=relay_priority(task.priority),
            max_attempts=getattr(task, "max_attempts", None) or self.max_attempts,
            scheduled_at=task.run_after,
        )
        return job

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Insert the task's job (inside the caller's transaction, if one is open).

        Raises:
            InvalidTask, TypeError, EncodeError: see :meth:`new_job`; nothing is stored.
        """
        [job] = enqueue_many([self.new_job(task, args, kwargs)])
        result = self.result_of(task, job)
        task_enqueued.send(sender=type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The task result ``result_id``, read from its job.

        Raises:
            TaskResultDoesNotExist: no task of this backend has that id.
        """
        job_id = str(result_id)
        job = None
        if _JOB_ID.fullmatch(job_id) and int(job_id) <= _MAX_JOB_ID:
            job = (
                Job.objects.using(settings.DATABASE_ALIAS)
                .filter(pk=int(job_id), worker=TaskWorker.__relay_worker__)  # type: ignore[attr-defined]
                .first()
            )
        if job is None or job.args.get("backend") != self.alias:
            raise TaskResultDoesNotExist(result_id)
        try:
            task = _stored_task(job.args)
        except Exception as exc:  # its module fails to import, or no longer has the task
            raise TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
        return self.result_of(task, job)

    def result_of(self, task: Task, job: Job) -> TaskResult:
        """The ``TaskResult`` that ``job`` (a row of ``task``) stands for."""
        status = _STATUS[job.state]
        errors = [_task_error(entry) for entry in job.errors if isinstance(entry, Mapping)]
        too_large = job.meta.get("result_too_large")
        if job.state == JobState.COMPLETED and too_large:
            # The job completed but its value was not stored: there is no return value
            # to give, so the result is a failure that says why.
            status = TaskResultStatus.FAILED
            errors.append(_too_large(too_large.get("size"), too_large.get("limit")))
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=str(job.pk),
            status=status,
            enqueued_at=job.inserted_at,
            started_at=_first_start(job),
            finished_at=job.finished_at if job.is_finished else None,
            last_attempted_at=job.attempted_at,
            args=job.args.get("args", []),
            kwargs=job.args.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=_worker_ids(job),
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.result)
        return result

    def backoff_after(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt``, per ``OPTIONS["BACKOFF"]``."""
        if self.backoff is None:
            return default_backoff(attempt)
        if callable(self.backoff):
            return float(self.backoff(attempt))
        return float(self.backoff)


_JOB_ID = re.compile(r"[0-9]{1,19}")
_MAX_JOB_ID = 2**63 - 1

_STATUS: dict[str, TaskResultStatus] = {
    JobState.AVAILABLE: TaskResultStatus.READY,
    JobState.SCHEDULED: TaskResultStatus.READY,  # deferred, snoozed, waiting for a signal
    JobState.RETRYABLE: TaskResultStatus.READY,
    JobState.SUSPENDED: TaskResultStatus.READY,
    JobState.EXECUTING: TaskResultStatus.RUNNING,
    JobState.COMPLETED: TaskResultStatus.SUCCESSFUL,
    JobState.DISCARDED: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}

#: The exception recorded for an attempt that ended without one being raised.
_KIND_EXCEPTIONS = {
    "rescued": f"{__name__}.RunnerLost",
    "cancel": "django_relay.exceptions.RelayCancelled",
    "worker": "django_relay.exceptions.WorkerError",
    "decode": "django_relay.exceptions.DecodeError",
}


def _too_large(size: int | None, limit: int | None) -> TaskError:
    return TaskError(
        exception_class_path="django_relay.exceptions.ResultTooLarge",
        traceback=f"ResultTooLarge: the return value is {size} bytes encoded; "
        f"RELAY['MAX_RESULT_BYTES'] is {limit}\n",
    )


def _task_error(entry: Mapping[str, Any]) -> TaskError:
    path = entry.get("exception") or _KIND_EXCEPTIONS.get(entry.get("kind", ""), "")
    return TaskError(
        exception_class_path=path or "builtins.Exception",
        traceback=entry.get("traceback") or f"{entry.get('error')}\n",
    )


def _attempt_entries(job: Job) -> dict[int, Mapping[str, Any]]:
    """The last error entry of each attempt that recorded its runner node."""
    return {
        entry["attempt"]: entry
        for entry in job.errors
        if isinstance(entry, Mapping)
        and entry.get("node")
        and isinstance(entry.get("attempt"), int)
    }


def _worker_ids(job: Job) -> list[str]:
    """One runner node id per attempt (Django: ``attempts == len(worker_ids)``)."""
    entries = _attempt_entries(job)
    return [
        str(entries[n]["node"]) if n in entries else str(job.attempted_by or "")
        for n in range(1, job.attempt + 1)
    ]


def _first_start(job: Job) -> datetime | None:
    first = _attempt_entries(job).get(1)
    if first is not None and first.get("started"):
        return datetime.fromisoformat(first["started"])
    return job.attempted_at


def _stored_task(stored: Mapping[str, Any]) -> Task:
    """The Task a job's args name, as it was enqueued (priority, queue, run_after ...).

    Raises:
        ImportError: the module path does not import.
        WorkerError: it imports, but not to a Task of a RelayBackend.
    """
    path = stored["task"]
    found = import_string(path)
    if not isinstance(found, Task):
        raise WorkerError(f"{path!r} is not a django.tasks Task; refusing to run it")
    options = {
        "priority": stored.get("priority"),
        "queue_name": stored.get("queue_name"),
        "run_after": stored.get("run_after"),
        "backend": stored.get("backend"),
    }
    if isinstance(found, RelayTask):
        options |= {"max_attempts": stored.get("max_attempts"), "backoff": stored.get("backoff")}
    try:
        task = found.using(**options)
    except InvalidTask:
        # Settings changed since it was enqueued (a queue removed ...): its own
        # defaults still say which function it is.
        task = found
    if not isinstance(task.get_backend(), RelayBackend):
        raise WorkerError(
            f"{path!r} uses task backend {task.backend!r}, not a RelayBackend; refusing to run it"
        )
    return task


@worker
class TaskWorker:
    """Runs the Django task named in its job's args (see the module docstring)."""

    def process(self, job: Job) -> Any:
        # A plain ``def``: it runs in a runner thread, so Django's signals are sent
        # synchronously, with the exception being handled visible to their receivers
        # (Django's log line for a failed task carries its traceback), and receivers
        # may use the ORM. Async task functions run through ``Task.call``.
        task = _stored_task(job.args)
        backend = task.get_backend()
        assert isinstance(backend, RelayBackend)  # checked by _stored_task
        sender = type(backend)
        result = backend.result_of(task, job)
        task_started.send(sender=sender, task_result=result)
        args, kwargs = job.args["args"], job.args["kwargs"]
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            value = normalize_json(value)
        except (Exception, SystemExit) as exc:
            # WaitForSignal (a BaseException) passes through: waiting is not finishing.
            final = job.attempt >= job.max_attempts
            _finish(result, TaskResultStatus.FAILED if final else TaskResultStatus.READY)
            result.errors.append(
                TaskError(
                    exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                    traceback="".join(traceback.format_exception(exc)),
                )
            )
            task_finished.send(sender=sender, task_result=result)
            raise
        size = len(codec.dumps(value).encode())
        if size > settings.MAX_RESULT_BYTES:  # the job completes, without its value
            _finish(result, TaskResultStatus.FAILED)
            result.errors.append(_too_large(size, settings.MAX_RESULT_BYTES))
        else:
            _finish(result, TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "_return_value", value)
        task_finished.send(sender=sender, task_result=result)
        return value

    def backoff(self, job: Job) -> float:
        seconds = job.args.get("backoff")
        if seconds is not None:
            return float(seconds)
        backend = task_backends[job.args["backend"]]
        if isinstance(backend, RelayBackend):
            return backend.backoff_after(job.attempt)
        return default_backoff(job.attempt)


def _finish(result: TaskResult, status: TaskResultStatus) -> None:
    object.__setattr__(result, "status", status)
    if status != TaskResultStatus.READY:
        object.__setattr__(result, "finished_at", timezone.now())


@dataclass(frozen=True, slots=True)
class TaskRelay:
    """``await relay(task, *args, **kwargs)``: enqueue a Django task, return its value.

    The wait's options never mix with the task's own keyword arguments: they are
    set with :meth:`using`, e.g. ``await relay.using(timeout=5)(send_mail, to)``.
    """

    timeout: float | None = None
    poll_interval: float | None = None
    with_retries: bool = False
    cancel_on_timeout: bool = False

    async def __call__(self, task: Task, /, *args: Any, **kwargs: Any) -> Any:
        """Enqueue ``task(*args, **kwargs)`` and wait for its return value.

        The job is inserted and awaited exactly as ``Worker.relay`` does (the
        result is pushed by NOTIFY), with the same exceptions.

        Raises:
            InvalidTask: the task's backend is not a RelayBackend, or validation failed.
            RelayTimeout: not finished within ``timeout`` (the task keeps running).
            RelayDiscard: it failed (with ``with_retries``, its last attempt failed).
            RelayCancelled: its job was cancelled.
            ResultTooLarge: its return value exceeded ``RELAY["MAX_RESULT_BYTES"]``.
            RelayError: called inside an open transaction.
        """
        backend = task.get_backend()
        if not isinstance(backend, RelayBackend):
            raise InvalidTask(
                f"relay() runs tasks of a RelayBackend; {task.module_path!r} uses backend "
                f"{task.backend!r} ({type(backend).__name__})."
            )

        async def announce(job: Job) -> None:
            result = backend.result_of(task, job)
            await task_enqueued.asend(sender=type(backend), task_result=result)

        return await relay_job(
            backend.new_job(task, args, kwargs),
            on_enqueued=announce,
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            with_retries=self.with_retries,
            cancel_on_timeout=self.cancel_on_timeout,
        )

    def using(
        self,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        with_retries: bool | None = None,
        cancel_on_timeout: bool | None = None,
    ) -> TaskRelay:
        """A relay with other wait options (``None`` keeps the current one).

        Args:
            timeout: Seconds to wait (default ``RELAY["DEFAULT_TIMEOUT"]``).
            poll_interval: Backup poll period, for a lost notification.
            with_retries: Wait through retries for the final outcome.
            cancel_on_timeout: Cancel the task if it has not started when the
                caller gives up (as ``Worker.relay``).
        """
        changes: dict[str, Any] = {
            "timeout": timeout,
            "poll_interval": poll_interval,
            "with_retries": with_retries,
            "cancel_on_timeout": cancel_on_timeout,
        }
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: ``await relay(task, *args, **kwargs)``; see :class:`TaskRelay`.
relay = TaskRelay()


def job_id(result: TaskResult) -> int:
    """The job id of a task result of a RelayBackend.

    Raises:
        TypeError: the result belongs to another kind of backend.
    """
    if not isinstance(task_backends[result.backend], RelayBackend) or not _JOB_ID.fullmatch(
        result.id
    ):
        raise TypeError(f"task result {result.id!r} is not from a RelayBackend")
    return int(result.id)


accept_handle(TaskResult, job_id)

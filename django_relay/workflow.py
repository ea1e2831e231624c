"""Workflows: named steps with dependencies, inserted atomically, run in order.

The builder validates the graph before anything is inserted. After that the
database drives the run: a trigger on ``Job`` releases a held step when its deps
finish, or cancels it (transitively) when one fails (see ``models.WORKFLOW_ADVANCE``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction

from django_relay.conf import settings
from django_relay.enqueue import enqueue_many
from django_relay.exceptions import RelayError
from django_relay.jobs import cancel_jobs
from django_relay.models import TERMINAL_STATES, Job, JobState, WorkflowRun
from django_relay.results import await_many
from django_relay.signalling import signal_sync


class WorkflowError(RelayError, ValueError):
    """A workflow that cannot be enqueued as built: nothing was inserted."""


@dataclass(slots=True)
class _Step:
    name: str
    job: Job
    deps: tuple[str, ...] = ()
    ignore_cancelled: bool = False
    ignore_discarded: bool = False


@dataclass
class Workflow:
    """A graph of jobs: each step runs once all its ``deps`` completed.

    Example::

        workflow = (
            Workflow(name="order-123")
            .add("approval", ApprovalWorker.new({"user_id": 123}))
            .add("charge", ChargeWorker.new({"user_id": 123}), deps=["approval"])
        )
        workflow.enqueue()
        await workflow.signal("approval", {"decision": "approved"})
        results = await workflow.relay(timeout=60)   # {"approval": ..., "charge": ...}
    """

    name: str | None = None
    steps: dict[str, _Step] = field(default_factory=dict)
    run: WorkflowRun | None = None

    # -- building -------------------------------------------------------------

    def add(
        self,
        name: str,
        job: Job,
        deps: Iterable[str] = (),
        ignore_cancelled: bool = False,
        ignore_discarded: bool = False,
    ) -> Workflow:
        """Add step ``name`` running ``job`` (from ``Worker.new()``) after ``deps``.

        Args:
            name: The step's name, unique in this workflow.
            job: An unsaved job, e.g. ``ChargeWorker.new({...})``.
            deps: Names of the steps that must complete first.
            ignore_cancelled: Run even if a dep is cancelled.
            ignore_discarded: Run even if a dep is discarded.

        Raises:
            WorkflowError: a duplicate or invalid name, or a job that cannot join.
        """
        if self.run is not None:
            raise WorkflowError("this workflow was already enqueued; build a new one")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise WorkflowError(f"step names are non-empty strings of up to 64 chars: {name!r}")
        if name in self.steps:
            raise WorkflowError(f"duplicate step name {name!r}")
        if not isinstance(job, Job):
            raise WorkflowError(f"step {name!r}: expected a Job from Worker.new(), not {job!r}")
        if not job._state.adding:
            raise WorkflowError(f"step {name!r}: job {job.pk} is already enqueued")
        owner = getattr(job, "_relay_workflow", None)
        if job.workflow_id is not None or (owner is not None and owner is not self):
            raise WorkflowError(f"step {name!r}: this job already belongs to another workflow")
        if any(s.job is job for s in self.steps.values()):
            raise WorkflowError(
                f"step {name!r}: this job is already step "
                f"{next(s.name for s in self.steps.values() if s.job is job)!r}"
            )
        job._relay_workflow = self  # type: ignore[attr-defined]
        # A step is never unique: a duplicate would stand for a job outside this run.
        job.unique_key = job.unique_states = None
        deps = (deps,) if isinstance(deps, str) else tuple(deps)
        self.steps[name] = _Step(name, job, deps, ignore_cancelled, ignore_discarded)
        return self

    def validate(self) -> None:
        """Refuse unknown deps and cycles (``add`` refused duplicates already).

        Raises:
            WorkflowError: naming the step and the problem.
        """
        if not self.steps:
            raise WorkflowError("a workflow needs at least one step")
        for step in self.steps.values():
            for dep in step.deps:
                if dep not in self.steps:
                    raise WorkflowError(f"step {step.name!r} depends on unknown step {dep!r}")
        cycle = _find_cycle({s.name: s.deps for s in self.steps.values()})
        if cycle:
            raise WorkflowError(f"the steps form a cycle: {' -> '.join(cycle)}")

    # -- enqueueing -----------------------------------------------------------

    def enqueue(self) -> list[Job]:
        """Insert the run and every step in one transaction; return the saved jobs.

        The very ``Job`` instances given to :meth:`add` are saved (each has its ``id``).

        Raises:
            WorkflowError: the graph is invalid (nothing is inserted).
            EncodeError: a step's args cannot be stored (nothing is inserted).
        """
        self.validate()
        if self.run is not None:
            raise WorkflowError("this workflow was already enqueued")
        dependents: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in self.steps.values():
            for dep in dict.fromkeys(step.deps):
                dependents[dep].append(step.name)
        with transaction.atomic(using=settings.DATABASE_ALIAS):
            run = WorkflowRun.objects.create(name=self.name or "")
            for step in self.steps.values():
                job = step.job
                job.workflow = run
                job.step, job.deps = step.name, list(step.deps)
                job.ignore_cancelled, job.ignore_discarded = (
                    step.ignore_cancelled,
                    step.ignore_discarded,
                )
                # The trigger that advances the run follows ``dependents`` from a
                # finished step and counts ``deps_pending`` down (see WORKFLOW_ADVANCE).
                job.dependents = dependents[step.name]
                if step.deps:
                    job.state = JobState.SUSPENDED
                    job.deps_pending = len(set(step.deps))
            try:
                jobs = enqueue_many([s.job for s in self.steps.values()])
            except Exception:
                for step in self.steps.values():  # leave the builder as it was
                    step.job.workflow = None
                    step.job.dependents = step.job.deps_pending = None
                raise
        self.run = run
        return jobs

    async def aenqueue(self) -> list[Job]:
        """See enqueue()."""
        return await sync_to_async(self.enqueue)()

    # -- after enqueueing -----------------------------------------------------

    @classmethod
    def load(cls, run: WorkflowRun | int) -> Workflow:
        """The workflow of an enqueued run, with its steps' current rows."""
        run = run if isinstance(run, WorkflowRun) else WorkflowRun.objects.get(pk=run)
        workflow = cls(name=run.name or None, run=run)
        for job in Job.objects.filter(workflow=run).order_by("id"):
            workflow.steps[job.step or ""] = _Step(
                job.step or "", job, tuple(job.deps), job.ignore_cancelled, job.ignore_discarded
            )
        return workflow

    @classmethod
    async def aload(cls, run: WorkflowRun | int) -> Workflow:
        """See load()."""
        return await sync_to_async(cls.load)(run)

    def _jobs(self, names: Sequence[str] | None = None) -> list[Job]:
        if self.run is None:
            raise WorkflowError("enqueue the workflow first")
        names = list(self.steps) if names is None else list(names)
        unknown = [n for n in names if n not in self.steps]
        if unknown:
            raise WorkflowError(f"no step named {', '.join(map(repr, unknown))}")
        return [self.steps[n].job for n in names]

    def states(self) -> dict[str, str]:
        """The current state of each step, read from the database."""
        ids = {job.pk: name for name, job in zip(self.steps, self._jobs(), strict=True)}
        rows = dict(Job.objects.filter(pk__in=ids).values_list("pk", "state"))
        return {name: rows.get(pk, "pruned") for pk, name in ids.items()}

    def state(self) -> str:
        """``running`` while any step may still run, then ``completed`` or ``failed``."""
        return run_state(self.states().values())

    def signal_sync(self, step_or_steps: str | Sequence[str], payload: Any, **kwargs: Any) -> int:
        """Deliver ``payload`` to steps by name, like :func:`django_relay.signal_sync`."""
        names = [step_or_steps] if isinstance(step_or_steps, str) else list(step_or_steps)
        return signal_sync(self._jobs(names), payload, **kwargs)

    async def signal(self, step_or_steps: str | Sequence[str], payload: Any, **kwargs: Any) -> int:
        """See signal_sync()."""
        return await sync_to_async(self.signal_sync)(step_or_steps, payload, **kwargs)

    async def relay(
        self, timeout: float | None = None, poll_interval: float | None = None
    ) -> dict[str, Any]:
        """Wait for every step to finish; return ``{step: result}``.

        Steps are waited through their retries. If a step did not complete, the
        exception of the first such step (in the order added) is raised:
        ``RelayCancelled`` for a declined approval and the steps it cancelled,
        ``RelayDiscard``, ``RelayTimeout`` ... For partial results, pass the jobs to
        ``await_many``.
        """
        results = await await_many(
            self._jobs(), timeout=timeout, poll_interval=poll_interval, with_retries=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return dict(zip(self.steps, results, strict=True))

    def relay_sync(self, **kwargs: Any) -> dict[str, Any]:
        """See relay()."""
        return async_to_sync(self.relay)(**kwargs)

    def cancel(self, reason: str = "workflow cancelled") -> int:
        """Cancel every unfinished step; return how many were cancelled."""
        return cancel_jobs(self._jobs(), reason)

    async def acancel(self, reason: str = "workflow cancelled") -> int:
        """See cancel()."""
        return await sync_to_async(self.cancel)(reason)

    def to_mermaid(self) -> str:
        """The graph as Mermaid text, e.g. for docs or the admin."""
        lines = ["flowchart TD"]
        ids = {name: f"s{i}" for i, name in enumerate(self.steps)}
        for name, step in self.steps.items():
            lines.append(f'    {ids[name]}["{_mermaid_label(name)}"]')
            lines.extend(f"    {ids[dep]} --> {ids[name]}" for dep in step.deps)
        return "\n".join(lines)


def run_state(step_states: Iterable[str]) -> str:
    """A workflow's state from its steps' states (see :meth:`Workflow.state`)."""
    states = list(step_states)
    if any(s not in TERMINAL_STATES for s in states):
        return "running"
    return "completed" if all(s == JobState.COMPLETED for s in states) else "failed"


def _mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in ``step -> deps`` as a path of step names, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in done:
            return None
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        visiting.append(node)
        for dep in graph[node]:
            if cycle := visit(dep):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in graph:
        if cycle := visit(node):
            return cycle
    return None


def dep_results(job: Job) -> dict[str, Any]:
    """Inside a step: ``{dep_step: result}`` for the job's deps (None for one that failed)."""
    if not job.workflow_id or not job.deps:
        return {}
    rows = dict(
        Job.objects.filter(workflow_id=job.workflow_id, step__in=job.deps).values_list(
            "step", "result"
        )
    )
    return {name: rows.get(name) for name in job.deps}


async def adep_results(job: Job) -> dict[str, Any]:
    """See dep_results()."""
    return await sync_to_async(dep_results)(job)

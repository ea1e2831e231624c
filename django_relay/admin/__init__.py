"""The admin: inspect jobs, their signals and workflows; approve, decline, retry, cancel.

Every action goes through the public API and is guarded by a permission of its
own (``django_relay.signal_job``, ``retry_job``, ``cancel_job``): users without
it neither see the action nor can force it with a crafted POST.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast, Now
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _, ngettext

from django_relay import codec, dashboard
from django_relay.conf import settings
from django_relay.exceptions import EncodeError
from django_relay.admin.graph import render_svg
from django_relay.jobs import cancel_jobs, retry_jobs
from django_relay.models import (
    TERMINAL_STATES,
    Job,
    JobQuerySet,
    JobSignal,
    JobState,
    Node,
    WorkflowRun,
)
from django_relay.signalling import signal_sync
from django_relay.workflow import Workflow


def _pretty(value: Any) -> str:
    try:
        data = codec.to_json(value)
    except EncodeError:
        # A row written past the codec (raw SQL, an older version) still shows.
        data = value
    return format_html(
        "<pre>{}</pre>", json.dumps(data, indent=2, ensure_ascii=False, default=repr)
    )


_UNFINISHED_STATES = [state for state in JobState if state not in TERMINAL_STATES]


def _run_is_unfinished(run: Any) -> Exists:
    return Exists(Job.objects.filter(workflow=run, state__in=_UNFINISHED_STATES))


class SafeDeleteMixin:
    """Delete only rows nothing live needs, from the object's page and in bulk alike.

    ``deletable(queryset)`` narrows a queryset to the rows that are safe to delete.
    An unsafe row offers no Delete button, its delete page is refused, and a bulk
    "delete selected" that includes one lists it as protected and deletes nothing.
    The deletion itself is narrowed again, in SQL, in case a row changed meanwhile.
    """

    model: Any
    #: Why a row cannot be deleted, shown on the refusal page.
    undeletable_reason: Any = ""

    def deletable(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        raise NotImplementedError

    def _one(self, obj: Any) -> QuerySet[Any]:
        return self.deletable(self.model._default_manager.filter(pk=obj.pk))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):  # type: ignore[misc]
            return False
        return obj is None or self._one(obj).exists()

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(  # type: ignore[misc]
            objs, request
        )
        objs = list(objs)
        safe = set(
            self.deletable(
                self.model._default_manager.filter(pk__in=[o.pk for o in objs])
            ).values_list("pk", flat=True)
        )
        unsafe = [f"{obj}: {self.undeletable_reason}" for obj in objs if obj.pk not in safe]
        # The collector asks has_delete_permission(obj) of every row, so an unsafe row
        # reads as a missing permission: name only permissions the user really lacks,
        # and list unsafe rows as protected, saying why.
        registry = self.admin_site._registry  # type: ignore[attr-defined]
        granted = {
            str(model._meta.verbose_name)
            for model, model_admin in registry.items()
            if model_admin.has_delete_permission(request)
        }
        lacking = {name for name in perms_needed if str(name) not in granted}
        return deleted, counts, lacking, [*protected, *unsafe]

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._one(obj).delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self.deletable(queryset).delete()


class WaitingForSignalFilter(admin.SimpleListFilter):
    title = _("waiting for a signal")
    parameter_name = "waiting"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        waiting = Job.objects.waiting_for_signal().values("pk")
        if self.value() == "yes":
            return queryset.filter(pk__in=waiting)
        if self.value() == "no":
            return queryset.exclude(pk__in=waiting)
        return queryset


class JobSignalInline(admin.TabularInline):
    model = JobSignal
    extra = 0
    can_delete = False
    fields = (
        "seq",
        "payload_display",
        "sender",
        "key",
        "inserted_at",
        "consumed_at",
        "consumed_attempt",
    )
    readonly_fields = fields

    @admin.display(description=_("payload"))
    def payload_display(self, obj: JobSignal) -> str:
        return _pretty(obj.payload)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A job's signals are part of the job: whoever may view it sees them.
        return request.user.has_perm("django_relay.view_job")


@admin.register(Job)
class JobAdmin(SafeDeleteMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "worker_name",
        "queue",
        "status",
        "attempts",
        "priority",
        "scheduled_at",
        "finished_at",
    )
    list_filter = ("state", WaitingForSignalFilter, "queue", "worker")
    search_fields = ("=id", "worker")
    ordering = ("-id",)
    inlines = (JobSignalInline,)
    actions = ("approve", "decline", "retry", "cancel")
    fields = (
        "id",
        "worker",
        "queue",
        "status",
        "attempts",
        "priority",
        "args_display",
        "meta_display",
        "result_display",
        "errors_display",
        "scheduled_at",
        "inserted_at",
        "attempted_at",
        "finished_at",
        "attempted_by",
    )
    readonly_fields = fields
    undeletable_reason = _(
        "not finished, or a step of a workflow that is still running (its dependents read it)"
    )

    def deletable(self, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(state__in=TERMINAL_STATES).exclude(
            _run_is_unfinished(OuterRef("workflow_id"))
        )

    def get_urls(self) -> list[URLPattern]:
        return [*dashboard.urls(self), *super().get_urls()]

    # -- display ------------------------------------------------------------

    @admin.display(description=_("worker"), ordering="worker")
    def worker_name(self, obj: Job) -> str:
        return obj.worker.rpartition(".")[2]

    @admin.display(description=_("state"), ordering="state")
    def status(self, obj: Job) -> str:
        wait = obj.signal_wait
        if wait is None:
            return str(obj.get_state_display())
        until = wait.get("deadline") or _("no deadline")
        return format_html(
            "{} ({} {}, {} {})",
            _("waiting for a signal"),
            _("since"),
            wait.get("since"),
            _("until"),
            until,
        )

    @admin.display(description=_("attempt"))
    def attempts(self, obj: Job) -> str:
        return f"{obj.attempt}/{obj.max_attempts}"

    @admin.display(description=_("args"))
    def args_display(self, obj: Job) -> str:
        return _pretty(obj.args)

    @admin.display(description=_("meta"))
    def meta_display(self, obj: Job) -> str:
        return _pretty(obj.meta)

    @admin.display(description=_("result"))
    def result_display(self, obj: Job) -> str:
        return _pretty(obj.result)

    @admin.display(description=_("errors"))
    def errors_display(self, obj: Job) -> str:
        if not obj.errors:
            return "-"
        return format_html_join(
            "",
            "<p><b>{} {} ({}, {})</b>: {}</p><pre>{}</pre>",
            (
                (
                    _("attempt"),
                    e.get("attempt"),
                    e.get("kind", "error"),
                    e.get("at"),
                    e.get("error"),
                    e.get("traceback", ""),
                )
                for e in obj.errors
            ),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        if search_term and not search_term.isdigit():
            by_args = (
                queryset.annotate(args_text=Cast("args", TextField()))
                .filter(args_text__icontains=search_term)
                .values("pk")
            )
            found, distinct = super().get_search_results(request, queryset, search_term)
            return queryset.filter(pk__in=by_args) | found, distinct
        return super().get_search_results(request, queryset, search_term)

    # -- permissions --------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are enqueued by code, through a worker

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows move only through actions, never by hand-editing

    def has_signal_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_relay.signal_job")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_relay.retry_job")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_relay.cancel_job")

    # -- actions ------------------------------------------------------------

    @admin.action(description=_("Approve selected waiting jobs"), permissions=["signal"])
    def approve(self, request: HttpRequest, queryset: JobQuerySet) -> HttpResponse | None:
        return self._decide(request, queryset, "approved")

    @admin.action(description=_("Decline selected waiting jobs"), permissions=["signal"])
    def decline(self, request: HttpRequest, queryset: JobQuerySet) -> HttpResponse | None:
        return self._decide(request, queryset, "declined")

    def _decide(
        self, request: HttpRequest, queryset: JobQuerySet, decision: str
    ) -> HttpResponse | None:
        waiting = list(queryset.waiting_for_signal())
        if "apply" not in request.POST:
            # A confirmation page, with an optional note, before anything is sent.
            return TemplateResponse(
                request,
                "admin/django_relay/decide.html",
                {
                    **self.admin_site.each_context(request),
                    "title": _("Send “%s” to waiting jobs") % decision,
                    "decision": decision,
                    "waiting": waiting,
                    "queryset": queryset,
                    "action": request.POST.get("action"),
                    "opts": self.model._meta,
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                },
            )
        user = request.user.get_username()
        payload = {"decision": decision, "by": user}
        note = request.POST.get("note", "").strip()
        if note:
            payload["note"] = note[:2000]
        sent = 0
        for job in waiting:
            # One decision per wait: a double click or a resubmitted form sends nothing.
            key = f"admin:{(job.signal_wait or {}).get('n')}"
            if signal_sync(job.pk, payload, sender=user, key=key):
                sent += 1
                self.log_change(request, job, f"Sent signal {payload!r}")
        self.message_user(
            request,
            ngettext(
                "%(count)d job received the decision “%(decision)s”.",
                "%(count)d jobs received the decision “%(decision)s”.",
                sent,
            )
            % {"count": sent, "decision": decision},
            messages.SUCCESS if sent else messages.WARNING,
        )
        return None

    @admin.action(description=_("Retry selected jobs"), permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        jobs = list(queryset)
        count = retry_jobs(jobs)
        for job in jobs:
            self.log_change(request, job, "Retried")
        self.message_user(
            request, ngettext("%d job will run again.", "%d jobs will run again.", count) % count
        )

    @admin.action(description=_("Cancel selected jobs"), permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: JobQuerySet) -> None:
        jobs = list(queryset.unfinished())
        count = cancel_jobs(jobs, f"cancelled by {request.user.get_username()} in the admin")
        for job in jobs:
            self.log_change(request, job, "Cancelled")
        self.message_user(
            request, ngettext("%d job cancelled.", "%d jobs cancelled.", count) % count
        )


@admin.register(Node)
class NodeAdmin(SafeDeleteMixin, admin.ModelAdmin):
    list_display = ("id", "hostname", "pid", "queues", "started_at", "heartbeat_at")
    readonly_fields = list_display
    undeletable_reason = _(
        "its runner is alive (it heartbeated within RESCUE_AFTER); deleting it would "
        "hand its running jobs to another runner"
    )

    def deletable(self, queryset: QuerySet[Node]) -> QuerySet[Node]:
        stale = Now() - dt.timedelta(seconds=settings.RESCUE_AFTER)
        return queryset.filter(heartbeat_at__lt=stale)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# -- workflows --------------------------------------------------------------

_FAILED_STATES = [JobState.DISCARDED, JobState.CANCELLED]


def _run_state(unfinished: int, failed: int) -> str:
    # Workflow.state()'s rule, from counts, so a page of runs takes one query.
    if unfinished:
        return "running"
    return "failed" if failed else "completed"


# The same states as filters on WorkflowRunAdmin.get_queryset()'s annotations.
_STATE_FILTERS = {
    "running": Q(unfinished_steps__gt=0),
    "completed": Q(unfinished_steps=0, failed_steps=0),
    "failed": Q(unfinished_steps=0, failed_steps__gt=0),
}


class WorkflowStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("running", _("running")), ("completed", _("completed")), ("failed", _("failed"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[WorkflowRun]
    ) -> QuerySet[WorkflowRun]:
        condition = _STATE_FILTERS.get(self.value() or "")
        return queryset if condition is None else queryset.filter(condition)


@admin.register(WorkflowRun)
class WorkflowRunAdmin(SafeDeleteMixin, admin.ModelAdmin):
    """Workflow runs: state derived from their steps; the detail page draws the graph."""

    list_display = ("id", "name", "status", "progress", "inserted_at")
    list_filter = (WorkflowStateFilter,)
    search_fields = ("=id", "name")
    ordering = ("-id",)
    actions = ("cancel",)
    fields = ("id", "name", "status", "progress", "inserted_at")
    readonly_fields = fields
    undeletable_reason = _("still running: cancel it first")

    def deletable(self, queryset: QuerySet[WorkflowRun]) -> QuerySet[WorkflowRun]:
        return queryset.exclude(_run_is_unfinished(OuterRef("pk")))

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowRun]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                step_count=Count("jobs"),
                unfinished_steps=Count("jobs", filter=Q(jobs__state__in=_UNFINISHED_STATES)),
                failed_steps=Count("jobs", filter=Q(jobs__state__in=_FAILED_STATES)),
                waiting_steps=Count(
                    "jobs",
                    filter=Q(jobs__state=JobState.SCHEDULED, jobs__meta__has_key="signal_wait"),
                ),
            )
        )

    # -- display ------------------------------------------------------------

    @admin.display(description=_("state"))
    def status(self, obj: Any) -> str:
        state = _run_state(obj.unfinished_steps, obj.failed_steps)
        if not obj.waiting_steps:
            return state
        return ngettext(
            "%(state)s (%(count)d step waiting for a signal)",
            "%(state)s (%(count)d steps waiting for a signal)",
            obj.waiting_steps,
        ) % {"state": state, "count": obj.waiting_steps}

    @admin.display(description=_("steps finished"))
    def progress(self, obj: Any) -> str:
        return f"{obj.step_count - obj.unfinished_steps}/{obj.step_count}"

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        run = self.get_object(request, unquote(object_id))
        if run is not None and self.has_view_or_change_permission(request, run):
            extra_context = {**(extra_context or {}), **self._steps_context(request, run)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _steps_context(self, request: HttpRequest, run: WorkflowRun) -> dict[str, Any]:
        workflow = Workflow.load(run)
        site = self.admin_site.name
        job_admin = self.admin_site._registry.get(Job)
        can_view_jobs = job_admin is not None and job_admin.has_view_permission(request)
        can_signal = can_view_jobs and request.user.has_perm("django_relay.signal_job")
        changelist = reverse(f"{site}:django_relay_job_changelist", current_app=site)
        steps, states, labels = [], {}, {}
        for name, step in workflow.steps.items():
            job = step.job
            wait = job.signal_wait
            states[name] = "waiting" if wait else job.state
            labels[name] = str(_("waiting for a signal") if wait else job.get_state_display())
            steps.append(
                {
                    "name": name,
                    "job": job,
                    "state": labels[name],
                    "wait": wait,
                    "deps": step.deps,
                    "attempt": f"{job.attempt}/{job.max_attempts}",
                    "error": job.errors[-1].get("error") if job.errors else "",
                    "job_url": reverse(
                        f"{site}:django_relay_job_change", args=[job.pk], current_app=site
                    )
                    if can_view_jobs
                    else None,
                    # The job list narrowed to this job, where Approve/Decline apply.
                    "decide_url": f"{changelist}?waiting=yes&id__exact={job.pk}"
                    if wait and can_signal
                    else None,
                }
            )
        return {
            "relay_steps": steps,
            "relay_graph": render_svg(
                {name: step.deps for name, step in workflow.steps.items()},
                states,
                labels=labels,
            ),
            "relay_mermaid": workflow.to_mermaid(),
        }

    # -- permissions --------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are created by Workflow.enqueue()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # steps move only through the runner and actions

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_relay.cancel_job")

    # -- actions ------------------------------------------------------------

    @admin.action(description=_("Cancel selected workflows"), permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        reason = f"workflow cancelled by {request.user.get_username()} in the admin"
        steps = runs = 0
        for run in queryset:
            count = Workflow.load(run).cancel(reason)
            if count:
                steps, runs = steps + count, runs + 1
                self.log_change(request, run, f"Cancelled {count} unfinished steps")
        self.message_user(
            request,
            ngettext(
                "%(steps)d unfinished step cancelled (%(runs)d workflows).",
                "%(steps)d unfinished steps cancelled (%(runs)d workflows).",
                steps,
            )
            % {"steps": steps, "runs": runs},
            messages.SUCCESS if steps else messages.WARNING,
        )

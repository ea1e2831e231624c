"""The workflows' pages: runs, their state, a run's steps drawn as a graph, cancelling."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _, ngettext

from django_relay.admin.actions import UNFINISHED_STATES, SafeDeleteMixin, run_is_unfinished
from django_relay.admin.graph import render_svg
from django_relay.models import (
    Job,
    JobState,
    WorkflowRun,
)
from django_relay.workflow import Workflow

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
        return queryset.exclude(run_is_unfinished(OuterRef("pk")))

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowRun]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                step_count=Count("jobs"),
                unfinished_steps=Count("jobs", filter=Q(jobs__state__in=UNFINISHED_STATES)),
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

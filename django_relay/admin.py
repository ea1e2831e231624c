"""The admin: inspect jobs and their signals; approve, decline, retry, cancel.

Every action goes through the public API and is guarded by a permission of its
own (``django_relay.signal_job``, ``retry_job``, ``cancel_job``): users without
it neither see the action nor can force it with a crafted POST.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_relay import codec
from django_relay.awaiting import signal_sync
from django_relay.jobs import cancel_jobs, retry_jobs
from django_relay.models import Job, JobSignal, Node


def _pretty(value: Any) -> str:
    return format_html(
        "<pre>{}</pre>", json.dumps(codec.to_json(value), indent=2, ensure_ascii=False)
    )


class WaitingForSignalFilter(admin.SimpleListFilter):
    title = _("waiting for a signal")
    parameter_name = "waiting"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
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
class JobAdmin(admin.ModelAdmin):
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
    def approve(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        return self._decide(request, queryset, "approved")

    @admin.action(description=_("Decline selected waiting jobs"), permissions=["signal"])
    def decline(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        return self._decide(request, queryset, "declined")

    def _decide(
        self, request: HttpRequest, queryset: QuerySet[Job], decision: str
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
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
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
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        jobs = list(queryset.unfinished())
        count = cancel_jobs(jobs, f"cancelled by {request.user.get_username()} in the admin")
        for job in jobs:
            self.log_change(request, job, "Cancelled")
        self.message_user(
            request, ngettext("%d job cancelled.", "%d jobs cancelled.", count) % count
        )


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("id", "hostname", "pid", "queues", "started_at", "heartbeat_at")
    readonly_fields = list_display

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

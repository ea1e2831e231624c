"""The jobs' pages: list, filters, a job's signals, and the dashboard's URLs."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import OuterRef, QuerySet
from django.http import HttpRequest
from django.urls import URLPattern
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

import django_relay.admin.display as admin_display
import django_relay.admin.filters as admin_filters
from django_relay import codec, dashboard
from django_relay.admin.actions import JobActions, SafeDeleteMixin, run_is_unfinished
from django_relay.exceptions import EncodeError
from django_relay.models import (
    TERMINAL_STATES,
    Job,
    JobSignal,
)


def _pretty(value: Any) -> str:
    try:
        data = codec.to_json(value)
    except EncodeError:
        # A row written past the codec (raw SQL, an older version) still shows.
        data = value
    return format_html(
        "<pre>{}</pre>", json.dumps(data, indent=2, ensure_ascii=False, default=repr)
    )


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
class JobAdmin(SafeDeleteMixin, JobActions):
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
    list_filter = (
        "state",
        WaitingForSignalFilter,
        admin_filters.DeadlineWithinFilter,
        "queue",
        admin_filters.WorkerFilter,
    )
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
            run_is_unfinished(OuterRef("workflow_id"))
        )

    def get_urls(self) -> list[URLPattern]:
        return [*dashboard.urls(self), *super().get_urls()]

    # -- display ------------------------------------------------------------

    @admin.display(description=_("worker"), ordering="worker")
    def worker_name(self, obj: Job) -> str:
        return admin_filters.short_name(obj.worker)

    @admin.display(description=_("state"), ordering="state")
    def status(self, obj: Job) -> str:
        return admin_display.state_badge(obj)

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
            found, distinct = super().get_search_results(request, queryset, search_term)
            return queryset.filter(admin_filters.text_search(search_term)) | found, distinct
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

"""The admin of flow control: queues (pause, resume, limits) and periodic jobs.

Every change needs ``django_relay.control_queue``: without it a user sees the
queues but neither the actions nor a form that saves.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _, ngettext

from django_relay import periodic, queues
from django_relay.models import Job, JobState, PeriodicEntry, Queue

_CONTROL = "django_relay.control_queue"


class QueueForm(forms.ModelForm):
    class Meta:
        model = Queue
        fields = (
            "name",
            "local_limit",
            "global_limit",
            "rate_limit",
            "rate_period",
            "partition",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            queues.validate_limits(
                global_limit=data.get("global_limit"),
                rate_limit=data.get("rate_limit"),
                rate_period=data.get("rate_period"),
                partition=data.get("partition") or "",
            )
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    form = QueueForm
    list_display = (
        "name",
        "status",
        "local_limit",
        "global_limit",
        "rate",
        "partition",
        "available",
        "executing",
    )
    ordering = ("name",)
    actions = ("pause", "resume")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Queue]:
        def count(state: str) -> Subquery:
            return Subquery(
                Job.objects.filter(queue=OuterRef("name"), state=state)
                .values("queue")
                .annotate(n=Count("id"))
                .values("n")
            )

        return (
            super()
            .get_queryset(request)
            .annotate(
                n_available=count(JobState.AVAILABLE),
                n_executing=count(JobState.EXECUTING),
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("name",) if obj is not None else ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(_CONTROL)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(_CONTROL)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(_CONTROL)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_relay.view_queue") or request.user.has_perm(_CONTROL)

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(_CONTROL)

    @admin.display(description=_("state"), ordering="paused")
    def status(self, obj: Queue) -> str:
        if obj.paused:
            return str(_("paused"))
        if obj.paused_nodes:
            return f"{_('paused on')} {', '.join(map(str, obj.paused_nodes))}"
        return str(_("running"))

    @admin.display(description=_("rate limit"))
    def rate(self, obj: Queue) -> str:
        return f"{obj.rate_limit}/{obj.rate_period:g}s" if obj.rate_limit else "-"

    @admin.display(description=_("available"))
    def available(self, obj: Any) -> int:
        return obj.n_available or 0

    @admin.display(description=_("executing"))
    def executing(self, obj: Any) -> int:
        return obj.n_executing or 0

    @admin.action(description=_("Pause selected queues"), permissions=["control"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        self._each(request, queryset, queues.pause_queue, "Paused")

    @admin.action(description=_("Resume selected queues"), permissions=["control"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        self._each(request, queryset, queues.resume_queue, "Resumed")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Queue], change: Any, verb: str
    ) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            change(name)
            self.log_change(request, Queue(name=name), f"{verb} from the admin")
        self.message_user(
            request,
            ngettext("%(verb)s %(n)d queue.", "%(verb)s %(n)d queues.", len(names))
            % {"verb": verb, "n": len(names)},
            messages.SUCCESS,
        )


@admin.register(PeriodicEntry)
class PeriodicEntryAdmin(admin.ModelAdmin):
    """``RELAY["PERIODIC"]`` entries (a row once a runner has scheduled them)."""

    list_display = ("name", "cron", "worker", "next_run", "last_tick", "last_job")
    ordering = ("name",)
    actions = ("run_now",)
    readonly_fields = ("name", "last_tick", "last_job_id", "updated_at")

    def _entry(self, obj: PeriodicEntry) -> tuple[periodic.Entry, Any] | None:
        # Read per row (entries are few): the admin instance is shared by requests.
        for entry in periodic.entries():
            if entry.name == obj.name:
                return entry, entry.next_tick(timezone.now())
        return None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # entries are configuration (RELAY["PERIODIC"])

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_run_periodic_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_relay.run_periodic")

    @admin.display(description=_("cron"))
    def cron(self, obj: PeriodicEntry) -> str:
        found = self._entry(obj)
        return f"{found[0].cron} ({found[0].timezone})" if found else str(_("not configured"))

    @admin.display(description=_("worker"))
    def worker(self, obj: PeriodicEntry) -> str:
        found = self._entry(obj)
        return found[0].worker if found else "-"

    @admin.display(description=_("next run"))
    def next_run(self, obj: PeriodicEntry) -> Any:
        found = self._entry(obj)
        return found[1] if found else "-"

    @admin.display(description=_("last job"))
    def last_job(self, obj: PeriodicEntry) -> str:
        if obj.last_job_id is None:
            return "-"
        url = reverse("admin:django_relay_job_change", args=[obj.last_job_id])
        return format_html('<a href="{}">#{}</a>', url, obj.last_job_id)

    @admin.action(description=_("Run selected periodic jobs now"), permissions=["run_periodic"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicEntry]) -> None:
        for row in queryset:
            try:
                job = periodic.run_now(row.name)
            except KeyError:
                self.message_user(request, f"{row.name} is no longer configured", messages.WARNING)
                continue
            self.log_change(request, row, f"Run now: job {job.pk}")
            self.message_user(request, f"{row.name}: enqueued job {job.pk}", messages.SUCCESS)

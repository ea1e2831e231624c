"""What staff may do to rows: the actions on jobs, and deleting only what nothing live needs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Exists, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _, ngettext

import django_relay.admin.display as admin_display
import django_relay.admin.filters as admin_filters
from django_relay import dashboard
from django_relay.jobs import cancel_jobs, retry_jobs
from django_relay.models import (
    TERMINAL_STATES,
    Job,
    JobQuerySet,
    JobState,
)
from django_relay.signalling import signal_sync

UNFINISHED_STATES = [state for state in JobState if state not in TERMINAL_STATES]


def run_is_unfinished(run: Any) -> Exists:
    return Exists(Job.objects.filter(workflow=run, state__in=UNFINISHED_STATES))


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


class JobActions(admin.ModelAdmin):
    """Approve, decline, retry, cancel: each through the public API, each behind a permission."""

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
                    "waiting": admin_display.decisions(waiting),
                    "ol_breadcrumbs": dashboard.OL_BREADCRUMBS,
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
        replaying = admin_filters.replaying_signals(jobs)
        count = retry_jobs(jobs)
        for job in jobs:
            self.log_change(request, job, "Retried")
        self.message_user(
            request, ngettext("%d job will run again.", "%d jobs will run again.", count) % count
        )
        if replaying:
            self.message_user(request, admin_display.replay_warning(replaying), messages.WARNING)

    @admin.action(description=_("Cancel selected jobs"), permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: JobQuerySet) -> None:
        jobs = list(queryset.unfinished())
        count = cancel_jobs(jobs, f"cancelled by {request.user.get_username()} in the admin")
        for job in jobs:
            self.log_change(request, job, "Cancelled")
        self.message_user(
            request, ngettext("%d job cancelled.", "%d jobs cancelled.", count) % count
        )

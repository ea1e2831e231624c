"""The runners' page: which runners are alive, and deleting the stopped ones."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from django_relay.admin.actions import SafeDeleteMixin
from django_relay.conf import settings
from django_relay.models import (
    Node,
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

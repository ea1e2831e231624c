"""Staff users with chosen permissions, and a test client that enforces CSRF."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client


def staff_user(*codenames: str) -> User:
    """A staff user holding exactly these ``django_relay`` permissions."""
    name = "staff-" + "-".join(codenames or ("none",))
    user, _ = User.objects.get_or_create(username=name, defaults={"is_staff": True})
    perms = Permission.objects.filter(
        content_type__app_label="django_relay", codename__in=codenames
    )
    user.user_permissions.add(*perms)
    return user


class AdminClient:
    """A logged-in client for one changelist, posting with the CSRF token as a browser would."""

    def __init__(self, user: User, changelist: str) -> None:
        self.changelist = changelist
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(user)
        self.client.get(changelist)  # sets the CSRF cookie

    def get(self, *args, **kwargs):
        return self.client.get(*args, **kwargs)

    def post(self, data: dict):
        token = self.client.cookies["csrftoken"].value
        return self.client.post(self.changelist, {**data, "csrfmiddlewaretoken": token})

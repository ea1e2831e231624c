"""django_relay.tasks on every supported Django: a backend on 6.x, a clear error on 5.2."""

from __future__ import annotations

import importlib

import django
import pytest


def test_the_tasks_backend_imports_on_django_6_and_names_the_requirement_before():
    import django_relay

    if django.VERSION >= (6, 0):
        module = importlib.import_module("django_relay.tasks")
        assert module.RelayBackend.supports_get_result is True
        assert "relay" in django_relay.__all__ and django_relay.relay is module.relay
    else:
        # ``from django_relay import *`` must keep working on Django 5.2.
        assert "relay" not in django_relay.__all__
        with pytest.raises(ImportError, match=r"needs Django 6\.0 or later.*this is Django 5"):
            importlib.import_module("django_relay.tasks")
        with pytest.raises(ImportError, match=r"needs Django 6\.0"):
            django_relay.relay  # noqa: B018

"""django_relay: persistent, distributed async/await for Django on PostgreSQL.

The public API (SPEC section 1) is re-exported here, loaded on first access so
that listing ``django_relay`` in ``INSTALLED_APPS`` imports no models.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

import django

if TYPE_CHECKING:
    from django_relay.awaiting import await_signal, await_signal_sync, signal, signal_sync
    from django_relay.exceptions import (
        DecodeError,
        EncodeError,
        RelayCancelled,
        RelayDiscard,
        RelayError,
        RelayTimeout,
        ResultTooLarge,
        SignalTimeout,
    )
    from django_relay.jobs import acancel_jobs, aretry_jobs, cancel_jobs, retry_jobs
    from django_relay.relay import await_many, await_many_sync, await_result, await_result_sync
    from django_relay.tasks import relay
    from django_relay.workers import Cancel, Snooze, aenqueue_many, enqueue_many, worker
    from django_relay.workflow import Workflow, WorkflowError, adep_results, dep_results

__all__ = [
    "Cancel",
    "DecodeError",
    "EncodeError",
    "RelayCancelled",
    "RelayDiscard",
    "RelayError",
    "RelayTimeout",
    "ResultTooLarge",
    "SignalTimeout",
    "Snooze",
    "Workflow",
    "WorkflowError",
    "acancel_jobs",
    "adep_results",
    "aenqueue_many",
    "aretry_jobs",
    "await_many",
    "await_many_sync",
    "await_result",
    "await_result_sync",
    "await_signal",
    "await_signal_sync",
    "cancel_jobs",
    "dep_results",
    "enqueue_many",
    "retry_jobs",
    "signal",
    "signal_sync",
    "worker",
]

if django.VERSION >= (6, 0):  # relay() runs Django tasks: django.tasks is Django 6+
    __all__ += ["relay"]

_HOMES = {
    "Cancel": "workers",
    "Snooze": "workers",
    "worker": "workers",
    "enqueue_many": "workers",
    "aenqueue_many": "workers",
    "await_result": "relay",
    "relay": "tasks",
    "cancel_jobs": "jobs",
    "Workflow": "workflow",
    "WorkflowError": "workflow",
    "dep_results": "workflow",
    "adep_results": "workflow",
    "acancel_jobs": "jobs",
    "retry_jobs": "jobs",
    "aretry_jobs": "jobs",
    "await_many": "relay",
    "await_result_sync": "relay",
    "await_many_sync": "relay",
    "await_signal": "awaiting",
    "await_signal_sync": "awaiting",
    "signal": "awaiting",
    "signal_sync": "awaiting",
    "RelayError": "exceptions",
    "EncodeError": "exceptions",
    "DecodeError": "exceptions",
    "RelayTimeout": "exceptions",
    "RelayDiscard": "exceptions",
    "RelayCancelled": "exceptions",
    "ResultTooLarge": "exceptions",
    "SignalTimeout": "exceptions",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'django_relay' has no attribute {name!r}")
    value = getattr(import_module(f"django_relay.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(ModuleType):
    # ``relay`` names a public function and, until the package layout renames it, the
    # submodule django_relay/relay.py too: importing that submodule would rebind the
    # package's ``relay`` to the module. The public name wins; the submodule is still
    # imported with ``from django_relay.relay import ...`` (through sys.modules).
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "relay" and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

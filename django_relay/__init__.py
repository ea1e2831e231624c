"""django_relay: persistent, distributed async/await for Django on PostgreSQL.

The public API (SPEC section 1) is re-exported here, loaded on first access so
that listing ``django_relay`` in ``INSTALLED_APPS`` imports no models.

``_EXPORTS`` is the one list of public names (``__all__`` is derived from it);
the ``TYPE_CHECKING`` imports mirror it for type checkers, and a test keeps the
two equal.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

import django

if TYPE_CHECKING:  # the same names, for type checkers (``x as x``: re-exported)
    from django_relay.decorators import worker as worker
    from django_relay.enqueue import aenqueue_many as aenqueue_many, enqueue_many as enqueue_many
    from django_relay.exceptions import (
        DecodeError as DecodeError,
        EncodeError as EncodeError,
        RelayCancelled as RelayCancelled,
        RelayDiscard as RelayDiscard,
        RelayError as RelayError,
        RelayTimeout as RelayTimeout,
        ResultTooLarge as ResultTooLarge,
        SignalTimeout as SignalTimeout,
    )
    from django_relay.jobs import (
        acancel_jobs as acancel_jobs,
        aretry_jobs as aretry_jobs,
        cancel_jobs as cancel_jobs,
        retry_jobs as retry_jobs,
    )
    from django_relay.registry import Cancel as Cancel, Snooze as Snooze, Unique as Unique
    from django_relay.results import (
        await_many as await_many,
        await_many_sync as await_many_sync,
        await_result as await_result,
        await_result_sync as await_result_sync,
    )
    from django_relay.signalling import (
        await_signal as await_signal,
        await_signal_sync as await_signal_sync,
        signal as signal,
        signal_sync as signal_sync,
    )
    from django_relay.tasks import relay as relay
    from django_relay.workflow import (
        Workflow as Workflow,
        WorkflowError as WorkflowError,
        adep_results as adep_results,
        dep_results as dep_results,
    )

#: Public name -> the module (under ``django_relay``) that defines it.
_EXPORTS = {
    "worker": "decorators",
    "Cancel": "registry",
    "Snooze": "registry",
    "Unique": "registry",
    "enqueue_many": "enqueue",
    "aenqueue_many": "enqueue",
    "await_result": "results",
    "await_result_sync": "results",
    "await_many": "results",
    "await_many_sync": "results",
    "await_signal": "signalling",
    "await_signal_sync": "signalling",
    "signal": "signalling",
    "signal_sync": "signalling",
    "relay": "tasks",
    "Workflow": "workflow",
    "WorkflowError": "workflow",
    "dep_results": "workflow",
    "adep_results": "workflow",
    "cancel_jobs": "jobs",
    "acancel_jobs": "jobs",
    "retry_jobs": "jobs",
    "aretry_jobs": "jobs",
    "RelayError": "exceptions",
    "EncodeError": "exceptions",
    "DecodeError": "exceptions",
    "RelayTimeout": "exceptions",
    "RelayDiscard": "exceptions",
    "RelayCancelled": "exceptions",
    "ResultTooLarge": "exceptions",
    "SignalTimeout": "exceptions",
}

# relay() runs Django tasks, and django.tasks is Django 6+: ``import *`` must not
# reach for it on Django 5.2 (where accessing it raises a clear ImportError).
__all__ = sorted(name for name in _EXPORTS if name != "relay" or django.VERSION >= (6, 0))


def __getattr__(name: str) -> Any:
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module 'django_relay' has no attribute {name!r}")
    value = getattr(import_module(f"django_relay.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)

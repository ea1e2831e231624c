"""System checks, each with a stable id."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from django_relay.conf import DEFAULTS, settings

_NUMBERS = (
    "MAX_ARGS_BYTES",
    "MAX_RESULT_BYTES",
    "DEFAULT_TIMEOUT",
    "POLL_INTERVAL",
    "FETCH_INTERVAL",
    "STAGE_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "RESCUE_AFTER",
    "LOOP_BLOCKED_WARNING",
    "GRACE_PERIOD",
    "LISTENER_PING_INTERVAL",
    "LISTENER_PING_TIMEOUT",
    "CONNECT_TIMEOUT",
    "STATEMENT_TIMEOUT",
    "TCP_KEEPALIVE",
)


# Not tagged Tags.database: Django runs those only when a database is named
# (``check --database``, migrate), and this check needs no query, only the vendor.
@register(Tags.compatibility)
def check_postgresql(app_configs: Any, **kwargs: Any) -> list[Error]:
    if not isinstance(getattr(django_settings, "RELAY", {}), dict):
        return []  # E003 says so; reading a key of it would crash the check
    alias = settings.DATABASE_ALIAS
    if alias not in django_settings.DATABASES:
        return [
            Error(
                f"RELAY['DATABASE_ALIAS'] is {alias!r}, which is not in DATABASES.",
                id="django_relay.E002",
            )
        ]
    vendor = connections[alias].vendor
    if vendor == "postgresql":
        return []
    return [
        Error(
            "django_relay requires PostgreSQL.",
            hint=f"DATABASES[{alias!r}] uses the {vendor!r} backend.",
            id="django_relay.E001",
        )
    ]


@register(Tags.database)
def check_listen(app_configs: Any, **kwargs: Any) -> list[Error]:
    """LISTEN receives a NOTIFY sent from another connection (``listener.probe``).

    Tagged ``database``: Django runs it for ``check --database``, not on every
    command. ``relayworker`` runs the same probe before it starts.
    """
    databases = kwargs.get("databases") or ()
    relay = getattr(django_settings, "RELAY", {})
    alias = relay.get("DATABASE_ALIAS", "default") if isinstance(relay, dict) else None
    if not databases or alias not in databases or alias not in django_settings.DATABASES:
        return []
    if connections[alias].vendor != "postgresql":
        return []  # E001
    from django_relay.listener import probe

    try:
        probe.probe_sync()
    except probe.ListenBroken as exc:
        message, hint = str(exc), None
    except Exception as exc:
        message = f"The LISTEN probe could not connect to the database: {exc}"
        hint = "Check DATABASES and RELAY['LISTEN_DSN']."
    else:
        return []
    return [Error(message, hint=hint, id="django_relay.E012")]


@register()
def check_relay_setting(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    relay = getattr(django_settings, "RELAY", {})
    if not isinstance(relay, dict):
        return [Error("settings.RELAY must be a dict.", id="django_relay.E003")]
    errors: list[Error | Warning] = [
        Error(
            f"RELAY has an unknown key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
            id="django_relay.E004",
        )
        for key in relay
        if key not in DEFAULTS
    ]
    for key in _NUMBERS:
        value = getattr(settings, key)
        if not _positive(value):
            errors.append(
                Error(
                    f"RELAY[{key!r}] must be a positive number, not {value!r}.",
                    id="django_relay.E005",
                )
            )
    prune = settings.PRUNE_AFTER
    if prune is not None and (not isinstance(prune, int | float) or prune <= 0):
        errors.append(
            Error(
                f"RELAY['PRUNE_AFTER'] must be a positive number or None, not {prune!r}.",
                id="django_relay.E005",
            )
        )
    threshold = settings.PREPARE_THRESHOLD
    if threshold is not None and (type(threshold) is not int or threshold < 0):
        errors.append(
            Error(
                f"RELAY['PREPARE_THRESHOLD'] must be None or an int >= 0, not {threshold!r}.",
                hint="None (the default) is safe behind a pooler in transaction mode.",
                id="django_relay.E005",
            )
        )
    errors.extend(_check_queues(settings.QUEUES))
    rescue_after, heartbeat = settings.RESCUE_AFTER, settings.HEARTBEAT_INTERVAL
    if _positive(rescue_after) and _positive(heartbeat) and rescue_after <= heartbeat * 2:
        errors.append(
            Warning(
                "RELAY['RESCUE_AFTER'] is not more than twice HEARTBEAT_INTERVAL: a busy but "
                "healthy runner may have its jobs rescued.",
                id="django_relay.W001",
            )
        )
    return errors


def _positive(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def _check_queues(queues: object) -> list[Error | Warning]:
    from django_relay.registry import validate_queue

    if not isinstance(queues, dict) or not queues:
        return [
            Error(
                "RELAY['QUEUES'] must be a non-empty dict of name -> concurrency.",
                id="django_relay.E006",
            )
        ]
    errors: list[Error | Warning] = []
    for name, limit in queues.items():
        try:
            validate_queue(name)
        except ValueError as exc:
            errors.append(Error(f"RELAY['QUEUES']: {exc}", id="django_relay.E006"))
        if type(limit) is not int or limit < 1:
            errors.append(
                Error(
                    f"RELAY['QUEUES'][{name!r}] must be an int >= 1, not {limit!r}.",
                    id="django_relay.E006",
                )
            )
    return errors


@register()
def check_optional_packages(app_configs: Any, **kwargs: Any) -> list[Error]:
    """A setting that turns on an optional feature has its package installed."""
    relay = getattr(django_settings, "RELAY", {})
    if not isinstance(relay, dict):
        return []
    errors = []
    for key, module, package, extra, check_id in (
        ("METRICS", "prometheus_client", "prometheus-client", "prometheus", "E009"),
        ("TRACING", "opentelemetry.trace", "opentelemetry-api", "otel", "E010"),
    ):
        if not relay.get(key):
            continue
        try:
            import_module(module)
        except ImportError:
            errors.append(
                Error(
                    f"RELAY[{key!r}] is on, but {package} is not installed.",
                    hint=f"pip install 'django-relay[{extra}]'",
                    id=f"django_relay.{check_id}",
                )
            )
    return errors


@register()
def check_channel_layer(app_configs: Any, **kwargs: Any) -> list[Error]:
    """The layer job events go to exists and can be loaded (when events are on)."""
    relay = getattr(django_settings, "RELAY", {})
    if not isinstance(relay, dict) or not relay.get("PUBLISH_EVENTS", True):
        return []
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    alias = relay.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"])
    if alias not in layers:
        if not layers and "CHANNEL_LAYER" not in relay:
            return []  # no Channels set up at all: events are simply not published
        known = ", ".join(map(repr, layers)) or "none"
        return [
            Error(
                f"RELAY['CHANNEL_LAYER'] is {alias!r}, which is not in CHANNEL_LAYERS.",
                hint=f"Layers configured: {known}. Name one of them, or set "
                "RELAY['PUBLISH_EVENTS'] = False to publish no job events.",
                id="django_relay.E007",
            )
        ]
    backend = layers[alias].get("BACKEND") if isinstance(layers[alias], dict) else None
    try:
        import_string(str(backend))
    except ImportError as exc:
        return [
            Error(
                f"CHANNEL_LAYERS[{alias!r}]['BACKEND'] ({backend!r}) cannot be imported: {exc}",
                hint="Install the layer's package or fix the dotted path.",
                id="django_relay.E008",
            )
        ]
    return []


@register()
def check_periodic(app_configs: Any, **kwargs: Any) -> list[Error]:
    """``RELAY["PERIODIC"]``: valid cron expressions, registered workers, valid options."""
    relay = getattr(django_settings, "RELAY", {})
    if not isinstance(relay, dict) or not relay.get("PERIODIC"):
        return []
    from django_relay.periodic import parse

    try:
        parse(relay["PERIODIC"])
    except ValueError as exc:
        return [
            Error(
                str(exc),
                hint="Each entry: {'cron': '*/5 * * * *', 'worker': 'app.workers.Name', "
                "'args': {...}, 'options': {...}, 'timezone': 'Europe/Paris', 'name': ...}.",
                id="django_relay.E011",
            )
        ]
    return []

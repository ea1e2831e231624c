"""System checks: stable ids, clear messages, and none for a correct configuration."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import Error, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db.utils import ConnectionHandler
from django.test.utils import override_settings

from django_relay import checks


def relay_messages(**relay: Any) -> list[Any]:
    """What ``manage.py check`` reports about django_relay with ``RELAY = relay``."""
    with override_settings(RELAY=relay):
        return [m for m in run_checks() if m.id.startswith("django_relay.")]


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def sqlite_alias(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DATABASES gains an ``other`` alias on SQLite.

    The global ``connections`` caches the DATABASES it was built from, so the check
    gets a handler built from the overridden setting (no connection is opened: the
    vendor is a class attribute of the backend).
    """
    databases = {
        **settings.DATABASES,
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }
    with warnings.catch_warnings():
        # Django warns that the global connections will not follow: we know, see above.
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        override = override_settings(DATABASES=databases)
        override.enable()
    try:
        monkeypatch.setattr(checks, "connections", ConnectionHandler(databases))
        yield
    finally:
        override.disable()


def test_the_test_settings_pass_every_check():
    assert [m for m in run_checks() if m.id.startswith("django_relay.")] == []
    assert checks.check_postgresql(None) == []
    assert checks.check_relay_setting(None) == []


def test_an_empty_relay_dict_uses_the_defaults_and_passes():
    assert relay_messages() == []


def test_no_relay_setting_at_all_passes():
    with override_settings():
        del settings.RELAY
        assert checks.check_relay_setting(None) == []
        assert checks.check_postgresql(None) == []


# -- E001 / E002: the database ----------------------------------------------------------------


def test_e001_a_non_postgresql_alias_is_refused(sqlite_alias):
    with override_settings(RELAY={"DATABASE_ALIAS": "other"}):
        errors = checks.check_postgresql(None)
        assert ids(errors) == ["django_relay.E001"]
        assert isinstance(errors[0], Error)
        assert errors[0].msg == "django_relay requires PostgreSQL."
        assert "DATABASES['other']" in errors[0].hint
        assert "'sqlite'" in errors[0].hint
        # manage.py check runs it by default: no --database needed.
        assert "django_relay.E001" in ids(run_checks())
        with pytest.raises(SystemCheckError, match="django_relay requires PostgreSQL"):
            call_command("check")


def test_e001_not_raised_for_the_postgresql_alias_next_to_a_sqlite_one(sqlite_alias):
    with override_settings(RELAY={"DATABASE_ALIAS": "default"}):
        assert checks.check_postgresql(None) == []


def test_e002_an_unknown_alias_is_refused():
    messages = relay_messages(DATABASE_ALIAS="nope")
    assert ids(messages) == ["django_relay.E002"]
    assert "'nope'" in messages[0].msg and "DATABASES" in messages[0].msg


# -- E003 / E004: the shape of RELAY ----------------------------------------------------------


@pytest.mark.parametrize("relay", [[], "default", None, 5])
def test_e003_relay_must_be_a_dict(relay):
    with override_settings(RELAY=relay):
        messages = [m for m in run_checks() if m.id.startswith("django_relay.")]
    assert ids(messages) == ["django_relay.E003"]


def test_e004_an_unknown_key_is_refused_with_the_known_ones_as_hint():
    messages = relay_messages(QUEUE={"default": 1}, MAX_ARGS_BYTES=10)
    assert ids(messages) == ["django_relay.E004"]
    assert "'QUEUE'" in messages[0].msg
    assert "QUEUES" in messages[0].hint and "MAX_ARGS_BYTES" in messages[0].hint


def test_e004_reports_each_unknown_key():
    assert ids(relay_messages(A=1, B=2)) == ["django_relay.E004", "django_relay.E004"]


# -- E005: numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_ARGS_BYTES", 0),
        ("MAX_RESULT_BYTES", -1),
        ("DEFAULT_TIMEOUT", "30"),
        ("POLL_INTERVAL", None),
        ("FETCH_INTERVAL", True),
        ("STAGE_INTERVAL", float("nan")),
        ("GRACE_PERIOD", [15]),
        ("LISTENER_PING_INTERVAL", 0.0),
        ("HEARTBEAT_INTERVAL", "5"),
        ("RESCUE_AFTER", "60"),
        ("PRUNE_AFTER", 0),
        ("PRUNE_AFTER", "7d"),
        ("PREPARE_THRESHOLD", -1),
        ("PREPARE_THRESHOLD", "5"),
        ("PREPARE_THRESHOLD", True),
    ],
    ids=repr,
)
def test_e005_bad_numbers_are_refused_naming_the_key(key, value):
    messages = relay_messages(**{key: value})
    assert ids(messages) == ["django_relay.E005"]
    assert f"RELAY['{key}']" in messages[0].msg
    assert repr(value) in messages[0].msg


@pytest.mark.parametrize(
    "relay",
    [
        {"PRUNE_AFTER": None},
        {"PREPARE_THRESHOLD": None},
        {"PREPARE_THRESHOLD": 0},
        {"PREPARE_THRESHOLD": 5},
        {"MAX_ARGS_BYTES": 1},
        {"POLL_INTERVAL": 0.01},
        {"GRACE_PERIOD": 600},
    ],
    ids=repr,
)
def test_good_numbers_pass(relay):
    assert relay_messages(**relay) == []


# -- E006: queues -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queues", "count"),
    [
        ({}, 1),
        ([], 1),
        ("default=10", 1),
        (None, 1),
        ({"bad name": 1}, 1),
        ({"": 1}, 1),
        ({"default": 0}, 1),
        ({"default": "10"}, 1),
        ({"default": 2.0}, 1),
        ({"default": True}, 1),
        ({"ok": 1, "bad name": 0}, 2),
    ],
    ids=repr,
)
def test_e006_bad_queues_are_refused(queues, count):
    messages = relay_messages(QUEUES=queues)
    assert ids(messages) == ["django_relay.E006"] * count
    assert all("RELAY['QUEUES']" in m.msg for m in messages)


def test_e006_names_the_bad_queue():
    (message,) = relay_messages(QUEUES={"default": 1, "mail box": 2})
    assert "'mail box'" in message.msg


def test_good_queues_pass():
    assert relay_messages(QUEUES={"default": 10, "mail.out-1": 1, "_x": 100}) == []


# -- W001 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rescue_after", "heartbeat"), [(10, 5), (9.9, 5), (1, 5)], ids=["equal", "under", "far under"]
)
def test_w001_rescue_after_too_close_to_the_heartbeat(rescue_after, heartbeat):
    messages = relay_messages(RESCUE_AFTER=rescue_after, HEARTBEAT_INTERVAL=heartbeat)
    assert ids(messages) == ["django_relay.W001"]
    assert isinstance(messages[0], Warning)
    assert "RESCUE_AFTER" in messages[0].msg


def test_w001_not_raised_above_twice_the_heartbeat():
    assert relay_messages(RESCUE_AFTER=10.5, HEARTBEAT_INTERVAL=5) == []


def test_w001_is_not_checked_when_the_numbers_themselves_are_bad():
    # Comparing "60" with a float used to crash the check instead of reporting E005.
    assert ids(relay_messages(RESCUE_AFTER="60", HEARTBEAT_INTERVAL=None)) == [
        "django_relay.E005",
        "django_relay.E005",
    ]


# -- the channel layer job events go to ------------------------------------------


def _layer_errors(**overrides):
    from django_relay.checks import check_channel_layer

    with override_settings(**overrides):
        return [(e.id, e.msg) for e in check_channel_layer(None)]


def test_channel_layer_of_the_test_settings_is_fine():
    assert _layer_errors() == []


def test_no_channels_configured_means_no_events_and_no_error():
    assert _layer_errors(CHANNEL_LAYERS={}) == []


def test_a_missing_channel_layer_is_refused():
    [(check_id, message)] = _layer_errors(RELAY={"CHANNEL_LAYER": "events"})
    assert check_id == "django_relay.E007" and "'events'" in message
    [(check_id, _)] = _layer_errors(CHANNEL_LAYERS={}, RELAY={"CHANNEL_LAYER": "events"})
    assert check_id == "django_relay.E007"
    assert _layer_errors(RELAY={"CHANNEL_LAYER": "events", "PUBLISH_EVENTS": False}) == []


def test_a_wrong_channel_layer_backend_is_refused():
    layers = {"default": {"BACKEND": "no_such_package.Layer"}}
    [(check_id, message)] = _layer_errors(CHANNEL_LAYERS=layers)
    assert check_id == "django_relay.E008" and "no_such_package.Layer" in message


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "module", "check_id", "hint"),
    [
        ("METRICS", "prometheus_client", "E009", "pip install 'django-relay[prometheus]'"),
        ("TRACING", "opentelemetry.trace", "E010", "pip install 'django-relay[otel]'"),
    ],
)
def test_an_optional_feature_without_its_package_is_an_error(
    monkeypatch, key, module, check_id, hint
):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with override_settings(RELAY={key: True}):
        errors = [e for e in run_checks() if e.id == f"django_relay.{check_id}"]
    assert [e.hint for e in errors] == [hint]


# -- E012: LISTEN receives a NOTIFY from another connection -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_e012_passes_when_listen_receives():
    assert checks.check_listen(None, databases=["default"]) == []


@pytest.mark.django_db(transaction=True)
def test_e012_a_listen_that_hears_nothing_names_the_setting():
    # NOTIFY reaches only its own database's sessions: as deaf as LISTEN through a pooler
    # in transaction mode (tests/test_pooler.py runs that case against a real PgBouncer).
    db = settings.DATABASES["default"]
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} "
    with override_settings(RELAY={"LISTEN_DSN": dsn + "dbname=postgres"}):
        errors = checks.check_listen(None, databases=["default"])
    assert ids(errors) == ["django_relay.E012"]
    assert "LISTEN does not work through RELAY['LISTEN_DSN']" in errors[0].msg
    assert "Set RELAY['LISTEN_DSN'] to a direct connection" in errors[0].msg


def test_e012_runs_only_when_the_jobs_database_is_named():
    # A database check: plain ``manage.py check`` and every command's checks stay offline.
    assert checks.check_listen(None) == []
    assert checks.check_listen(None, databases=["channels_postgres"]) == []

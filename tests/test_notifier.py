"""The process listener: its LISTEN probe, and LISTEN through RELAY["LISTEN_DSN"]."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import override_settings

from django_relay.listener import probe
from django_relay.listener.notifier import Notifier
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_probe_comes_back_through_a_listen_dsn():
    db = connection.settings_dict
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} "
    dsn += f"dbname={db['NAME']} application_name=relay_listen_dsn"
    notifier = Notifier()
    with override_settings(RELAY={"LISTEN_DSN": dsn}):
        notifier.start()
        try:
            wait_for(notifier.probe_ok.is_set, timeout=10, message="the probe NOTIFY")
            assert notifier.connected.is_set() and notifier.epoch == 1
            # The listener connected with that DSN, not Django's parameters.
            assert notifier._conn.info.parameter_status("application_name") == "relay_listen_dsn"
        finally:
            notifier.stop()


def listener_error(
    caplog: pytest.LogCaptureFixture, listen_dsn: str
) -> tuple[logging.LogRecord, Notifier]:
    """Start a notifier listening through ``listen_dsn``; the ERROR it logs, and it (stopped)."""
    notifier = Notifier()
    with (
        override_settings(RELAY={"LISTEN_DSN": listen_dsn}),
        caplog.at_level(logging.WARNING, logger="django_relay"),
    ):
        notifier.start()
        try:
            record = wait_for(
                lambda: next((r for r in caplog.records if r.levelno == logging.ERROR), None),
                timeout=30,
                message="the listener's ERROR",
            )
            assert notifier.connected.is_set()  # it serves on, by polling
        finally:
            notifier.stop()
    return record, notifier


def test_a_listen_dsn_that_cannot_hear_the_jobs_database_is_reported_at_error(caplog):
    # NOTIFY reaches only the sessions of its own database: a LISTEN_DSN naming another
    # database hears nothing, as a LISTEN through a pooler in transaction mode does
    # (tests/test_pooler.py runs that case against a real PgBouncer).
    db = connection.settings_dict
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} "
    dsn += "dbname=postgres"
    record, notifier = listener_error(caplog, dsn)
    assert not notifier.probe_ok.is_set()
    assert "LISTEN does not work through RELAY['LISTEN_DSN']" in record.getMessage()
    assert "Set RELAY['LISTEN_DSN'] to a direct connection" in record.getMessage()
    assert "polling" in record.getMessage()
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1


def test_the_probe_refuses_a_listen_dsn_on_another_database():
    db = connection.settings_dict
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} "
    with (
        override_settings(RELAY={"LISTEN_DSN": dsn + "dbname=postgres"}),
        pytest.raises(probe.ListenBroken, match="RELAY\\['LISTEN_DSN'\\]"),
    ):
        probe.probe_sync(timeout=1.0)
    with override_settings(RELAY={"LISTEN_DSN": dsn + f"dbname={db['NAME']}"}):
        probe.probe_sync(timeout=10.0)

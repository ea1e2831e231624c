"""The process listener: its start-up probe, and LISTEN through RELAY["LISTEN_DSN"]."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import override_settings

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


def test_a_probe_that_never_comes_back_names_the_setting_to_fix(caplog):
    # As behind a pooler in transaction mode: the NOTIFY to ourselves is lost.
    notifier = Notifier()
    with caplog.at_level(logging.WARNING, logger="django_relay"):
        notifier._check_probe()
    [record] = caplog.records
    assert "RELAY['LISTEN_DSN']" in record.getMessage()
    assert "polling" in record.getMessage()

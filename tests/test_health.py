"""Health checks: ``manage.py relayhealth`` and the JSON view, against real runners."""

from __future__ import annotations

import io
import socket

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from tests.conftest import wait_for


def relayhealth(*args: str) -> tuple[bool, str]:
    """Run the command in-process: ``(healthy, its one line)``."""
    out = io.StringIO()
    try:
        call_command("relayhealth", *args, stdout=out)
    except CommandError as exc:
        return False, str(exc)
    return True, out.getvalue().strip()


def node_of(runner) -> str:
    ready = runner.wait_for_line(" ready: queues")
    return ready.split("relayworker ", 1)[1].split(" ready", 1)[0]


@pytest.mark.django_db
def test_healthy_when_the_database_answers_and_migrations_are_applied():
    assert relayhealth() == (True, "ok: database: answers; migrations: applied")


@pytest.mark.django_db
def test_an_unapplied_migration_is_unhealthy_and_named():
    [(app, latest)] = MigrationLoader(connection).graph.leaf_nodes("django_relay")
    MigrationRecorder(connection).record_unapplied(app, latest)
    healthy, line = relayhealth()
    assert not healthy
    assert line == f"unhealthy: migrations: 1 unapplied: django_relay.{latest}"


@pytest.mark.django_db
def test_an_unknown_runner_is_unhealthy():
    assert relayhealth("--node", "no-such-host") == (
        False,
        "unhealthy: runner: no runner named 'no-such-host' (not started, or stopped)",
    )


@pytest.mark.parametrize("max_age", ["0", "-1", "nan", "inf"])
def test_max_age_must_be_positive_seconds(max_age):
    with pytest.raises(CommandError, match="--max-age: max_age must be a positive number"):
        call_command("relayhealth", "--local", f"--max-age={max_age}")


@pytest.mark.e2e
def test_runner_is_healthy_while_it_heartbeats_and_not_once_it_stops(start_runner):
    runner = start_runner()
    node = node_of(runner)
    host, pid, _ = node.split(":")
    for selection in (["--node", node], ["--node", f"{host}:{pid}"], ["--local"]):
        # Fresh within 3 heartbeats (0.5 s each in tests); under load one may be late.
        _, line = wait_for(
            lambda s=selection: (r := relayhealth(*s, "--max-age", "1.5"))[0] and r,
            message=f"relayhealth {selection} to pass",
        )
        assert line.startswith(f"ok: database: answers; migrations: applied; runner: {node}")
    assert host == socket.gethostname()

    runner.kill()  # SIGKILL: no clean goodbye, its row stays and its heartbeat ages
    _, line = wait_for(
        lambda: not (r := relayhealth("--node", node, "--max-age", "1.5"))[0] and r,
        message="relayhealth to fail once the heartbeat is stale",
    )
    assert line.startswith(f"unhealthy: runner: {node} last heartbeat ")
    assert line.endswith("s ago (max 1.5s)")


@pytest.mark.e2e
def test_health_view_answers_json_and_503_when_the_runner_stopped(start_runner, client):
    runner = start_runner()
    node = node_of(runner)
    response = wait_for(
        lambda: (
            (r := client.get("/relay/health/", {"node": node, "max_age": 1.5})).status_code == 200
            and r
        ),
        message="the health view to pass",
    )
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == {"ok": True, "detail": "answers"}
    assert body["checks"]["runner"]["ok"] is True

    runner.stop()  # a clean stop removes the runner's row
    response = client.get("/relay/health/", {"node": node})
    assert response.status_code == 503
    assert response.json()["checks"]["runner"] == {
        "ok": False,
        "detail": f"no runner named {node!r} (not started, or stopped)",
    }
    assert client.get("/relay/health/", {"max_age": "soon"}).status_code == 400
    assert client.get("/relay/health/").json()["status"] == "ok"

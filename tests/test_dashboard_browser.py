"""The dashboard in a real browser (Playwright driving Debian's Chromium) over ASGI.

Skipped, saying why, where Chromium or Playwright is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections

from django_relay.models import Job
from tests.conftest import REPO_ROOT, STARTUP_TIMEOUT, subprocess_env, wait_for
from tests.ports import free_port
from tests.signal_workers import ApprovalWorker
from tests.workers import EchoWorker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium"),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (the test extra has it)"
)


APP = "example_project.asgi:application"


@pytest.fixture
def asgi_server(transactional_db: None) -> Iterator[str]:
    """The example project under daphne (HTTP and the job-event websocket), on the test DB."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", APP],
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "daphne exited"
        try:
            with urllib.request.urlopen(f"{base}/admin/login/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=STARTUP_TIMEOUT, message="daphne to serve")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def orm(transactional_db: None) -> Iterator[Callable[..., Any]]:
    """``orm(fn, *args)`` runs ``fn`` on a thread of its own, and returns its value.

    Playwright's sync API keeps an event loop in the test's thread, where Django
    refuses ORM calls.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="orm")
    yield lambda fn, *args: pool.submit(fn, *args).result(30)
    pool.submit(connections.close_all).result(10)
    pool.shutdown()


@pytest.fixture
def page(asgi_server: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser.new_page(base_url=asgi_server)
        finally:
            browser.close()


def test_dashboard_moves_live_while_a_runner_works_and_approves(page, orm, start_runner):
    expect = sync_api.expect
    expect.set_options(timeout=20_000)
    orm(User.objects.create_superuser, "ops", "ops@example.com", "a-long-password")
    page.goto("/admin/login/?next=/admin/django_relay/job/dashboard/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a-long-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/job/dashboard/")
    expect(page.locator("#relay-status")).to_have_attribute("data-mode", "live")

    for n in range(5):
        orm(EchoWorker.enqueue, {"value": n})
    approval = orm(ApprovalWorker.enqueue, {"wait_timeout": 0, "user_id": 7})
    row = page.locator('#relay-queues tr[data-queue="default"] td')
    available, completed = row.nth(1), row.nth(6)
    expect(available).to_have_text("6")  # no runner yet
    expect(completed).to_have_text("0")

    start_runner()
    expect(completed).to_have_text("5")
    expect(available).to_have_text("0")
    expect(page.locator("#relay-runners tbody tr")).to_have_count(1)
    expect(page.locator("#relay-runners-alive")).to_have_text("1")
    waiting = page.locator(f'#relay-waiting tr[data-job="{approval.pk}"]')
    expect(waiting).to_be_visible()
    expect(page.locator("#relay-chart rect.completed").first).to_be_visible()

    waiting.locator("input[value=Approve]").click()  # the admin's confirmation page
    expect(page.locator("#content")).to_contain_text("approved")
    page.fill("#id_note", "looks fine")
    page.click("input[name=apply]")
    expect(page.locator(".messagelist")).to_contain_text("1 job received the decision")

    def row_of(pk: int) -> Job:
        return Job.objects.get(pk=pk)

    wait_for(lambda: orm(row_of, approval.pk).state == "completed", timeout=20)
    assert orm(row_of, approval.pk).result == {"charged": 7, "by": "ops"}
    page.goto("/admin/django_relay/job/dashboard/")
    expect(page.locator(f'#relay-waiting tr[data-job="{approval.pk}"]')).to_have_count(0)
    expect(completed).to_have_text("6")

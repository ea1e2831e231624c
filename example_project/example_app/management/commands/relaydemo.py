"""``manage.py relaydemo``: start a runner, relay a few jobs, print what came back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_relay import RelayCancelled, Workflow, await_result

from ...workers import (
    CalculatorWorker,
    FlakyWorker,
    FraudCheckWorker,
    InventoryWorker,
    ShippingWorker,
)


class Command(BaseCommand):
    help = "Run the example workers in a relayworker and relay jobs to them."

    def handle(self, *args: Any, **options: Any) -> None:
        runner = subprocess.Popen(
            [sys.executable, sys.argv[0], "relayworker", "--queues", "default=10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert runner.stdout is not None
        for line in runner.stdout:
            if "ready" in line:
                self.stdout.write(f"runner: {line.strip()}")
                break
        else:
            raise CommandError("relayworker did not start; is the database migrated?")
        threading.Thread(target=lambda: [None for _ in runner.stdout], daemon=True).start()
        try:
            asyncio.run(self._demo())
        finally:
            runner.terminate()
            runner.wait(20)

    async def _demo(self) -> None:
        started = time.perf_counter()
        result = await CalculatorWorker.relay({"a": 10, "b": 32}, timeout=5.0)
        self.stdout.write(
            f"CalculatorWorker.relay({{'a': 10, 'b': 32}}) -> {result} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms"
        )

        inventory, fraud, shipping = await asyncio.gather(
            InventoryWorker.relay({"sku": "A1"}, timeout=5.0),
            FraudCheckWorker.relay({"user_id": 7}, timeout=5.0),
            ShippingWorker.relay({"address": "1 Main St"}, timeout=5.0),
        )
        self.stdout.write(f"order checks in parallel -> {inventory}, {fraud}, {shipping}")

        result = await FlakyWorker.relay({"succeed_on": 2}, timeout=10.0, with_retries=True)
        self.stdout.write(f"FlakyWorker failed once, retried -> {result}")

        workflow = (
            Workflow(name="demo")
            .add("add", CalculatorWorker.new({"a": 1, "b": 2}))
            .add("check", InventoryWorker.new({"sku": "B2"}), deps=["add"])
        )
        await workflow.aenqueue()
        self.stdout.write(f"workflow add -> check -> {await workflow.relay(timeout=10.0)}")

        job = await CalculatorWorker.aenqueue({"a": 2, "b": 2}, schedule_in=3600)
        from django_relay import acancel_jobs

        await acancel_jobs([job])
        try:
            await await_result(job, timeout=5.0)
        except RelayCancelled as exc:
            self.stdout.write(f"a cancelled job raises RelayCancelled: {exc}")
        self.stdout.write("done: see the jobs at /admin/django_relay/job/")

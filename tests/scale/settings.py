"""Settings of the scale test's processes: the test settings, minus per-job log lines.

``tests.settings`` logs every completed job at INFO (``django_relay.jobs``), which at
thousands of jobs a second costs the runners throughput; the runners' INFO lines we
read (ready, ``relay stats``) come from ``django_relay`` itself and stay. Each line
starts with its level, so the harness can pick out warnings and errors.
"""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import LOGGING

LOGGING["formatters"] = {"levelled": {"format": "%(levelname)s %(name)s: %(message)s"}}
LOGGING["handlers"]["console"]["formatter"] = "levelled"
LOGGING["loggers"]["django_relay.jobs"] = {"level": "WARNING"}

#!/usr/bin/env python
"""Django's command-line utility for the example project.

Works from anywhere, e.g. from the repository root: ``python example_project/manage.py migrate``.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This directory holds example_project/ and example_app/; the repository root holds
# django_relay/ (and tests/), importable even without `pip install -e .`.
for entry in (HERE.parent, HERE):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.conf import settings
    from django.core.management import execute_from_command_line
    from example_project.dburl import ensure_database
    from example_project.embedded import EmbeddedDatabaseError

    try:
        settings.DATABASES  # noqa: B018 - loads the settings, which pick the database
    except EmbeddedDatabaseError as exc:
        sys.exit(f"error: {exc}")
    if ensure_database(settings.DATABASES["default"]):
        print(f"Created the database {settings.DATABASES['default']['NAME']!r}.")

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

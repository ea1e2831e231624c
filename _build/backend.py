"""The build backend: setuptools, once the interpreter is known to be new enough.

pip checks ``requires-python`` of the project it installs only after resolving its
dependencies; on an older Python, with the extras, that resolution backtracks through every
version of every dependency for minutes before it says so. The check here runs first, when
pip asks for the project's metadata, and stops at once.
"""

import sys

if sys.version_info < (3, 12):  # noqa: UP036 - this is the check
    raise SystemExit(
        f"django-relay needs Python 3.12 or newer; this is Python {sys.version.split()[0]} "
        f"({sys.executable})."
    )

from setuptools.build_meta import *  # noqa: F403

"""Turn a ``DATABASE_URL`` into a Django ``DATABASES`` entry.

Deliberately tiny: only PostgreSQL URLs, which is all django_relay supports.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

_ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
}


def parse(url: str) -> dict[str, Any]:
    """Parse a database URL into a Django database settings dict.

    Args:
        url: e.g. ``postgres://user:secret@db.example.com:5433/app?sslmode=require``.
            Query parameters become ``OPTIONS`` (libpq connection parameters), except
            ``host`` and ``port``, which are the ``HOST`` and ``PORT`` when the URL names
            none, as in libpq: ``postgres://postgres@/app?host=/var/run/postgresql``.

    Returns:
        A dict suitable as a value of ``settings.DATABASES``.

    Raises:
        ValueError: the scheme is not a PostgreSQL one, or the port is not a number.
    """
    parts = urlsplit(url)
    try:
        engine = _ENGINES[parts.scheme]
    except KeyError:
        raise ValueError(
            f"Unsupported database URL scheme {parts.scheme!r}: django_relay needs PostgreSQL "
            f"(use one of {', '.join(sorted(_ENGINES))}://)."
        ) from None
    # .port raises ValueError itself for a non-numeric port, with a clear enough message.
    port = parts.port
    options = dict(parse_qsl(parts.query))
    # A percent-encoded host is a Unix socket directory: postgres://%2Fvar%2Frun%2Fpostgresql/db.
    # Taken from the netloc as written: .hostname lowercases it, which breaks a path.
    host = unquote(parts.hostname or "")
    written = parts.netloc.rpartition("@")[2]
    if written.lower().startswith("%2f"):
        host = unquote(re.sub(r":\d+$", "", written))
    return {
        "ENGINE": engine,
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host or options.pop("host", ""),
        "PORT": str(port) if port is not None else options.pop("port", ""),
        "OPTIONS": options,
    }


def ensure_database(settings_dict: dict[str, Any]) -> bool:
    """Create the example's database if the server lacks it; True if it was created.

    A convenience for trying the example on a fresh server, so that ``migrate``
    is the first command: Django itself never creates databases.
    """
    import psycopg
    from psycopg import sql

    params = {
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        **settings_dict.get("OPTIONS", {}),
    }
    params = {key: value for key, value in params.items() if value is not None}
    name = settings_dict["NAME"]
    try:
        psycopg.connect(dbname=name, **params).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True

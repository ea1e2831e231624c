"""The scale test: namespaces, PgBouncer, runners and callers (see tests/test_scale.py)."""

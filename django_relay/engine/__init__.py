"""The runner behind ``manage.py relayworker``: one module per role."""

"""The admin: inspect jobs, their signals and workflows; approve, decline, retry, cancel.

Every action goes through the public API and is guarded by a permission of its
own (``django_relay.signal_job``, ``retry_job``, ``cancel_job``): users without
it neither see the action nor can force it with a crafted POST.
"""

from django_relay.admin import flow, jobs, nodes, workflows  # noqa: F401  (registering)

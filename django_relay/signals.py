"""Django dispatch signals for the job lifecycle.

Each is sent with ``sender`` the worker class and ``job`` the
:class:`~django_relay.models.Job`. Runner-side signals are sent with
``asend``, so async receivers run on the runner's loop and sync receivers run
in a thread. The outcome signals (completed, failed, discarded, cancelled,
snoozed) also carry ``duration`` when the runner sends them for an attempt:
seconds from the start of the attempt until its outcome was persisted.
"""

from django.dispatch import Signal

#: A job was inserted (sent by enqueue/enqueue_many, once per job).
job_enqueued = Signal()
#: A runner is about to call ``process``.
job_started = Signal()
#: ``process`` returned a value.
job_completed = Signal()
#: ``process`` raised and attempts remain: the job is ``retryable``.
job_failed = Signal()
#: ``process`` raised on the last attempt, or the worker could not be resolved.
job_discarded = Signal()
#: ``process`` returned ``Cancel``.
job_cancelled = Signal()
#: ``process`` returned ``Snooze`` (including a wait for a signal).
job_snoozed = Signal()
#: A message was delivered to the job with ``signal()``.
job_signalled = Signal()
#: ``relay()`` has the job's outcome, or gave up waiting: sent with ``job`` and
#: ``duration``, the seconds since the call.
job_relayed = Signal()

"""Operations on enqueued jobs: cancel and retry."""

from __future__ import annotations

from collections.abc import Iterable

from asgiref.sync import sync_to_async
from django.db import connections, transaction

from django_relay import queries, signals
from django_relay.conf import settings
from django_relay.models import Job
from django_relay.registry import lookup


def _ids(jobs: Iterable[Job | int]) -> list[int]:
    return [job.pk if isinstance(job, Job) else int(job) for job in jobs]


def cancel_jobs(jobs: Iterable[Job | int], reason: str = "cancelled") -> int:
    """Cancel the unfinished jobs among ``jobs``; return how many were cancelled.

    A job that is running is marked cancelled at once and its relays raise
    ``RelayCancelled``; its ``process`` is not interrupted, but whatever it
    returns is dropped (the runner's ack no longer matches the row).
    ``job_cancelled`` is sent for each, and for each workflow step cancelled in
    turn because its dep was (like ``job_enqueued``, at once, not on commit).
    """
    alias = settings.DATABASE_ALIAS
    with connections[alias].cursor() as cursor:
        cancelled = queries.cancel_jobs(cursor, _ids(jobs), reason)
    if cancelled and signals.job_cancelled.receivers:
        for job in [
            *Job.objects.using(alias).filter(pk__in=cancelled).order_by("id"),
            *cascade_cancelled(cancelled),
        ]:
            signals.job_cancelled.send(sender=lookup(job.worker), job=job)
    return len(cancelled)


def cascade_cancelled(job_ids: Iterable[int]) -> list[Job]:
    """The workflow steps cancelled because the jobs ``job_ids`` did not complete.

    A step's dependents are cancelled by a trigger, inside the statement that
    ended it; whoever ran that statement reads them back with this, to send
    ``job_cancelled`` for them.
    """
    alias = settings.DATABASE_ALIAS
    with connections[alias].cursor() as cursor:
        ids = queries.cascade_cancelled(cursor, list(job_ids))
    return list(Job.objects.using(alias).filter(pk__in=ids).order_by("id")) if ids else []


async def acancel_jobs(jobs: Iterable[Job | int], reason: str = "cancelled") -> int:
    """See cancel_jobs()."""
    return await sync_to_async(cancel_jobs)(jobs, reason)


def retry_jobs(jobs: Iterable[Job | int]) -> int:
    """Run failed, cancelled or scheduled jobs again now; return how many changed.

    A job whose attempts are spent gets one more. In a workflow, a retried step
    runs only once its deps completed: one whose dep failed, or is going again,
    is held (``suspended``) until they finish. Retrying a failed step also holds
    again the steps its failure cancelled (transitively), so they run after it;
    those are counted too.
    """
    alias = settings.DATABASE_ALIAS
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        return len(queries.retry_jobs(cursor, _ids(jobs)))


async def aretry_jobs(jobs: Iterable[Job | int]) -> int:
    """See retry_jobs()."""
    return await sync_to_async(retry_jobs)(jobs)

"""Operations on enqueued jobs: cancel and retry."""

from __future__ import annotations

from collections.abc import Iterable

from asgiref.sync import sync_to_async
from django.db import connections, transaction

from django_relay import queries
from django_relay.conf import settings
from django_relay.models import Job


def _ids(jobs: Iterable[Job | int]) -> list[int]:
    return [job.pk if isinstance(job, Job) else int(job) for job in jobs]


def cancel_jobs(jobs: Iterable[Job | int], reason: str = "cancelled") -> int:
    """Cancel the unfinished jobs among ``jobs``; return how many were cancelled.

    A job that is running is marked cancelled at once and its relays raise
    ``RelayCancelled``; its ``process`` is not interrupted, but whatever it
    returns is dropped (the runner's ack no longer matches the row).
    """
    with connections[settings.DATABASE_ALIAS].cursor() as cursor:
        return len(queries.cancel_jobs(cursor, _ids(jobs), reason))


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

"""pgqueuer 1.6's consumer for ``manage.py relaybench`` (the ``bench`` extra).

Run as a process of its own, like ``relayworker``: ``python -m
django_relay.management.commands._benchpgq DSN BATCH CONCURRENCY``, with
``PGQUEUER_SCHEMA`` naming the schema the bench installed. It runs pgqueuer at
its best, as its own CLI does: asyncpg and uvloop. It prints ``ready`` once it
listens, then consumes no-op jobs until it is terminated.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def main(dsn: str, batch: int, concurrency: int) -> None:
    import asyncpg
    from pgqueuer import PgQueuer

    pgq = PgQueuer.from_asyncpg_connection(await asyncpg.connect(dsn))

    @pgq.entrypoint("noop")
    async def noop(job: object) -> None:
        return None

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    print("ready", flush=True)
    await pgq.qm.run(batch_size=batch, max_concurrent_tasks=concurrency)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

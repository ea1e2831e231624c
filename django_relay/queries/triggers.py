"""The state-changing SQL of the triggers declared on the models (``Meta.triggers``).

Changing a statement here changes a trigger: it needs a migration.
"""

from django_relay.queries.channels import AVAILABLE_CHANNEL, EVENTS_CHANNEL

# When a step finishes, decide for each held dependent: run it (every dep completed,
# or ended in a way it ignores), cancel it (a dep was cancelled or discarded and it
# does not ignore that), or keep holding it. Locking the dependents first makes two
# deps finishing in concurrent transactions safe: the second waits for the first
# to commit, and the UPDATE (a new statement, so a new snapshot) then sees both.
# Cancelling a dependent fires this trigger again: cascades are transitive. Its
# error entry names the ``cause`` (the dep's job id): whoever finished that dep can
# read back what the cascade cancelled, and retrying the dep can hold it again.
WORKFLOW_ADVANCE = """
PERFORM 1 FROM django_relay_job
WHERE workflow_id = NEW.workflow_id AND state = 'suspended' AND deps ? NEW.step
ORDER BY id FOR UPDATE;
UPDATE django_relay_job AS d SET
    state = s.next_state,
    scheduled_at = now(),
    finished_at = CASE WHEN s.next_state = 'cancelled' THEN now() END,
    errors = CASE WHEN s.next_state = 'cancelled' THEN d.errors || jsonb_build_array(
        jsonb_build_object('attempt', d.attempt, 'at', now(), 'kind', 'cancel',
                           'error', s.reason, 'cause', NEW.id)) ELSE d.errors END
FROM (
    SELECT c.id,
           CASE WHEN bool_or(p.state = 'cancelled' AND NOT c.ignore_cancelled
                             OR p.state = 'discarded' AND NOT c.ignore_discarded)
                THEN 'cancelled'
                WHEN bool_and(p.state = 'completed'
                              OR p.state = 'cancelled' AND c.ignore_cancelled
                              OR p.state = 'discarded' AND c.ignore_discarded)
                THEN 'available'
                ELSE 'suspended' END AS next_state,
           'dependency ' || string_agg(p.step || ' was ' || p.state, ', ' ORDER BY p.step)
               FILTER (WHERE p.state IN ('cancelled', 'discarded')) AS reason
    FROM django_relay_job AS c
    CROSS JOIN LATERAL jsonb_array_elements_text(c.deps) AS dep(name)
    JOIN django_relay_job AS p ON p.workflow_id = c.workflow_id AND p.step = dep.name
    WHERE c.workflow_id = NEW.workflow_id AND c.state = 'suspended' AND c.deps ? NEW.step
    GROUP BY c.id
) AS s
WHERE d.id = s.id AND s.next_state <> 'suspended';
RETURN NULL;
"""


# A signal inserted for a job snoozed in await_signal makes it available (its
# queue's runners are then woken by the job trigger).
SIGNAL_WAKE = (
    "UPDATE django_relay_job SET state = 'available', scheduled_at = now() "
    "WHERE id = NEW.job_id AND state = 'scheduled' AND meta ? 'signal_wait'; "
)


# Statement-level NOTIFY triggers (one NOTIFY per queue, or per 100 finished jobs,
# per statement; see README "Architecture"). They read the statement's transition
# tables: ``new_rows`` (and ``old_rows`` for an UPDATE). A refused NOTIFY (payload
# over 8000 bytes) would abort the statement, so payloads stay small by design.

#: The sequence that numbers ``relay_available`` notifications: runners take turns by it.
AVAILABLE_SEQUENCE = "django_relay_available_seq"

# Payload: "<count>:<seq>:<hops>:<queue>" (the queue last: it may hold colons).
_AVAILABLE_NOTIFY = """
PERFORM pg_notify('{channel}',
                  a.n || ':' || nextval('{sequence}') || ':0:' || a.queue)
FROM (SELECT n.queue, count(*) AS n FROM new_rows AS n {join}
      WHERE n.state = 'available' {changed} GROUP BY n.queue) AS a;
RETURN NULL;
"""
AVAILABLE_INSERTED = _AVAILABLE_NOTIFY.format(
    channel=AVAILABLE_CHANNEL, sequence=AVAILABLE_SEQUENCE, join="", changed=""
)
# Cheap when nothing became available (a claim, an ack): one scan of new_rows. A
# waiter subscribing to an available job (queries.SUBSCRIBE) announces it again: a
# claim running meanwhile skipped the row it had locked (SKIP LOCKED), and would
# otherwise leave it to the backup poll.
AVAILABLE_UPDATED = (
    "IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state = 'available') THEN RETURN NULL; END IF;"
    + _AVAILABLE_NOTIFY.format(
        channel=AVAILABLE_CHANNEL,
        sequence=AVAILABLE_SEQUENCE,
        join="JOIN old_rows AS o ON o.id = n.id",
        changed="AND (o.state <> 'available' OR o.waiters IS DISTINCT FROM n.waiters)",
    )
)

#: Finished jobs per ``relay_finished_*`` payload: 100 entries stay under 5,000 bytes.
FINISHED_PER_NOTIFY = 100

# A JSON array of [id, state, attempt], one per job of the statement that left
# 'executing' or reached a terminal state: to each channel in the job's ``waiters``
# (a process that waits for it), and to ``relay_events`` (the live event feed). Such
# a row is never 'executing' now: a claim returns after one scan of new_rows. A
# channel name NOTIFY would refuse (empty, over 63 bytes) is skipped: it would abort
# the statement.
FINISHED = f"""
IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state <> 'executing') THEN RETURN NULL; END IF;
PERFORM pg_notify(f.channel, f.payload)
FROM (SELECT c.channel,
             json_agg(json_build_array(c.id, c.state, c.attempt) ORDER BY c.id)::text AS payload
      FROM (SELECT w.channel, n.id, n.state, n.attempt,
                   (row_number() OVER (PARTITION BY w.channel ORDER BY n.id) - 1)
                       / {FINISHED_PER_NOTIFY} AS chunk
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
            CROSS JOIN LATERAL unnest(
                coalesce(n.waiters, '{{}}') || '{EVENTS_CHANNEL}'::varchar) AS w(channel)
            WHERE o.state IS DISTINCT FROM n.state
              AND (o.state = 'executing' OR n.state IN ('completed', 'discarded', 'cancelled'))
              AND octet_length(w.channel) BETWEEN 1 AND 63
           ) AS c
      GROUP BY c.channel, c.chunk) AS f;
RETURN NULL;
"""

"""The state-changing SQL of the triggers declared on the models (``Meta.triggers``).

Changing a statement here changes a trigger: it needs a migration.
"""

from django_relay.queries.channels import AVAILABLE_CHANNEL, EVENTS_CHANNEL

# When steps finish, decide for each held dependent: run it (every dep completed,
# or ended in a way it ignores), cancel it (a dep was cancelled or discarded and it
# does not ignore that), or keep holding it.
#
# A statement-level trigger: the acks of a batch of steps touch each dependent
# once, however many of its deps they finish. The dependents are the ones the
# finished steps name (``dependents``, found through the run's step index), and
# each counts its deps not done yet (``deps_pending``): while more are left than
# finished here, it only counts down, so a fan-in of n costs O(n), not O(n^2).
# The decision itself (the last deps, a failure, or an unknown count) looks at
# every dep, as it always did, and counts them afresh. So a count may be too low
# (the step then looks at its deps sooner) but never too high: it is exact at
# insert (the step's distinct deps, none finished), goes down once per dep's
# finish while the step is held, and a step held again by a retry gets NULL (see
# RETRY_JOBS); a dep retried after it was counted is pending again, uncounted.
#
# Locking the dependents first, in id order, makes deps finishing in concurrent
# transactions safe: the second waits for the first to commit, and the decision (a
# new statement, so a new snapshot) then sees the first's count. Cancelling a
# dependent fires this trigger again: cascades are transitive. Its error entry
# names the ``cause``: the job id of a dep that failed here (the lowest), or of
# one that finished here. Whoever finished that dep can read back what the
# cascade cancelled, and retrying the dep can hold it again.
WORKFLOW_ADVANCE = """
IF NOT EXISTS (SELECT 1 FROM new_rows
               WHERE workflow_id IS NOT NULL AND dependents <> '[]'
                 AND state IN ('completed', 'discarded', 'cancelled')) THEN
    RETURN NULL;
END IF;
-- The statements below are planned so that their cost never depends on the
-- table's statistics, for this transaction until this trigger returns (then the
-- settings are what they were; an error rolls them back with the statement).
-- Each row they read is found through a unique index, one lookup per step: no
-- sequential scan (analysed while no step was held, each lookup scanned the table,
-- O(n^2) for a fan-out of n). No JIT: their estimated cost grows with the steps
-- they touch (998 released at once: over 800,000, eight times jit_above_cost), and
-- compiling took 0.7 s of that ack's 0.77 s.
saved_jit := current_setting('jit');
saved_seqscan := current_setting('enable_seqscan');
PERFORM set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true);
-- Planned at each run (EXECUTE), like the runner's claim: a plan cached by the
-- session would be the one for the first statement's rows.
EXECUTE $sql$
SELECT array_agg(h.id ORDER BY h.id), array_agg(h.done ORDER BY h.id),
       array_agg(h.fails ORDER BY h.id), array_agg(h.cause ORDER BY h.id)
FROM (
    SELECT c.id, count(*) FILTER (WHERE NOT f.fails) AS done, bool_or(f.fails) AS fails,
           coalesce(min(n.id) FILTER (WHERE f.fails), min(n.id)) AS cause
    FROM new_rows AS n
    -- One index lookup per named step (relay_job_workflow_step, unique); so are
    -- the lookups of held steps and of deps below.
    CROSS JOIN LATERAL (SELECT DISTINCT jsonb_array_elements_text(n.dependents)) AS dep(name)
    CROSS JOIN LATERAL (
        SELECT c.id, c.ignore_cancelled, c.ignore_discarded FROM django_relay_job AS c
        WHERE c.workflow_id = n.workflow_id AND c.step = dep.name AND c.state = 'suspended'
        LIMIT 1
    ) AS c
    CROSS JOIN LATERAL (
        SELECT n.state = 'cancelled' AND NOT c.ignore_cancelled
               OR n.state = 'discarded' AND NOT c.ignore_discarded AS fails
    ) AS f
    WHERE n.workflow_id IS NOT NULL AND n.dependents <> '[]'
      AND n.state IN ('completed', 'discarded', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM old_rows AS o WHERE o.id = n.id AND o.state = n.state)
    GROUP BY c.id
) AS h
$sql$ INTO held, done, fails, causes;
IF held IS NOT NULL THEN
    PERFORM 1 FROM django_relay_job WHERE id = ANY(held) ORDER BY id FOR UPDATE;
    -- Decide for each held step: its next state, its count, why it is cancelled.
    EXECUTE $sql$
    SELECT array_agg(c.id), jsonb_object_agg(c.id, jsonb_build_object(
               'state', CASE WHEN g.all_done THEN 'available'
                             WHEN g.recount THEN a.next_state ELSE 'suspended' END,
               'pending', CASE WHEN g.all_done THEN 0
                               WHEN g.recount THEN a.pending
                               ELSE c.deps_pending - h.done END,
               'reason', a.reason, 'cause', h.cause))
    FROM unnest($1::bigint[], $2::int[], $3::boolean[], $4::bigint[]) AS h(id, done, fails, cause)
    CROSS JOIN LATERAL (
        SELECT c.id, c.workflow_id, c.deps, c.deps_pending, c.ignore_cancelled,
               c.ignore_discarded
        FROM django_relay_job AS c WHERE c.id = h.id AND c.state = 'suspended' LIMIT 1
    ) AS c
    -- Every dep finished here, none failing for it (a repeated dep makes the
    -- array longer: such a step is recounted): it runs, with no dep to read.
    CROSS JOIN LATERAL (
        SELECT coalesce(NOT h.fails AND jsonb_array_length(c.deps) <= h.done, false)
            AS all_done
    ) AS e
    CROSS JOIN LATERAL (
        SELECT e.all_done,
               NOT e.all_done AND (h.fails OR c.deps_pending IS NULL
                                   OR c.deps_pending <= h.done) AS recount
    ) AS g
    CROSS JOIN LATERAL (
        -- Gated on g.recount (a one-time filter): a count-down reads no dep.
        SELECT CASE WHEN bool_or(p.state = 'cancelled' AND NOT c.ignore_cancelled
                                 OR p.state = 'discarded' AND NOT c.ignore_discarded)
                    THEN 'cancelled'
                    WHEN bool_and(p.state = 'completed'
                                  OR p.state = 'cancelled' AND c.ignore_cancelled
                                  OR p.state = 'discarded' AND c.ignore_discarded)
                    THEN 'available'
                    ELSE 'suspended' END AS next_state,
               count(*) FILTER (
                   WHERE NOT (p.state = 'completed'
                              OR p.state = 'cancelled' AND c.ignore_cancelled
                              OR p.state = 'discarded' AND c.ignore_discarded)) AS pending,
               'dependency ' || string_agg(p.step || ' was ' || p.state, ', ' ORDER BY p.step)
                   FILTER (WHERE p.state IN ('cancelled', 'discarded')) AS reason
        FROM (SELECT DISTINCT jsonb_array_elements_text(c.deps)) AS dep(name)
        CROSS JOIN LATERAL (
            SELECT p.step, p.state FROM django_relay_job AS p
            WHERE p.workflow_id = c.workflow_id AND p.step = dep.name LIMIT 1
        ) AS p
        WHERE g.recount
    ) AS a
    $sql$ INTO decided, decisions USING held, done, fails, causes;
    -- Applied by id, each row reading its own decision: no join whose order the
    -- statistics could get wrong (the table outside, analysed while no step was
    -- held, and every decision recomputed for each of its rows).
    EXECUTE $sql$
    UPDATE django_relay_job AS d SET
        (state, deps_pending, scheduled_at, finished_at, errors) = (
            SELECT s.state, s.pending,
                   CASE WHEN s.state = 'suspended' THEN d.scheduled_at ELSE now() END,
                   CASE WHEN s.state = 'cancelled' THEN now() END,
                   CASE WHEN s.state = 'cancelled' THEN d.errors || jsonb_build_array(
                       jsonb_build_object('attempt', d.attempt, 'at', now(), 'kind', 'cancel',
                                          'error', s.reason, 'cause', s.cause))
                        ELSE d.errors END
            FROM jsonb_to_record($2 -> d.id::text)
                AS s(state varchar, pending int, reason text, cause bigint))
    WHERE d.id = ANY($1) AND d.state = 'suspended'
    $sql$ USING decided, decisions;
END IF;
PERFORM set_config('jit', saved_jit, true),
        set_config('enable_seqscan', saved_seqscan, true);
RETURN NULL;
"""

#: The variables WORKFLOW_ADVANCE declares: the held dependents it found, in id
#: order, with how many of their deps finished here, whether one failed for them,
#: and the cause to name if they are cancelled; the steps it decided for and the
#: decisions (by id); the settings it restores.
WORKFLOW_ADVANCE_DECLARE = [
    ("held", "bigint[]"),
    ("done", "int[]"),
    ("fails", "boolean[]"),
    ("causes", "bigint[]"),
    ("decided", "bigint[]"),
    ("decisions", "jsonb"),
    ("saved_jit", "text"),
    ("saved_seqscan", "text"),
]


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


# A query joining new_rows to old_rows runs through EXECUTE, so it is planned for
# this statement's rows: PL/pgSQL caches a plan per session, made for the row count
# of the statement that first ran it (a handful, after a claim or an ack), and that
# plan's nested loop makes a statement changing n rows cost O(n^2) (a fan-out's
# 1,000 steps made available at once: 1 s). Planning costs about 0.1 ms.
# ``where`` first: a statement with no such row (most claims and acks) returns after
# one scan of new_rows, unplanned.
def _notify_if_any(where: str, query: str) -> str:
    return (
        f"IF NOT EXISTS (SELECT 1 FROM new_rows WHERE {where}) THEN RETURN NULL; END IF;"
        f" EXECUTE $q$ SELECT {query} $q$; RETURN NULL;"
    )


# Payload: "<count>:<seq>:<hops>:<queue>" (the queue last: it may hold colons).
_AVAILABLE_NOTIFY = """pg_notify('{channel}',
                  a.n || ':' || nextval('{sequence}') || ':0:' || a.queue)
FROM (SELECT n.queue, count(*) AS n FROM new_rows AS n {join}
      WHERE n.state = 'available' {changed} GROUP BY n.queue) AS a"""
AVAILABLE_INSERTED = (
    "PERFORM "
    + _AVAILABLE_NOTIFY.format(
        channel=AVAILABLE_CHANNEL, sequence=AVAILABLE_SEQUENCE, join="", changed=""
    )
    + "; RETURN NULL;"
)
# A waiter subscribing to an available job (queries.SUBSCRIBE) announces it again: a
# claim running meanwhile skipped the row it had locked (SKIP LOCKED), and would
# otherwise leave it to the backup poll.
AVAILABLE_UPDATED = _notify_if_any(
    "state = 'available'",
    _AVAILABLE_NOTIFY.format(
        channel=AVAILABLE_CHANNEL,
        sequence=AVAILABLE_SEQUENCE,
        join="JOIN old_rows AS o ON o.id = n.id",
        changed="AND (o.state <> 'available' OR o.waiters IS DISTINCT FROM n.waiters)",
    ),
)

#: Finished jobs per ``relay_finished_*`` payload: 100 entries stay under 5,000 bytes.
FINISHED_PER_NOTIFY = 100

# A JSON array of [id, state, attempt], one per job of the statement that left
# 'executing' or reached a terminal state: to each channel in the job's ``waiters``
# (a process that waits for it), and to ``relay_events`` (the live event feed). Such
# a row is never 'executing' now: a claim returns after one scan of new_rows. A
# channel name NOTIFY would refuse (empty, over 63 bytes) is skipped: it would abort
# the statement.
_FINISHED_NOTIFY = f"""pg_notify(f.channel, f.payload)
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
      GROUP BY c.channel, c.chunk) AS f"""
FINISHED = _notify_if_any("state <> 'executing'", _FINISHED_NOTIFY)

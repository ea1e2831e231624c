"""Every SQL statement that moves a job's state, in one place (a module per role).

Enqueueing runs on Django's connection (so it joins the caller's transaction);
the runner and the relay listener run these statements on their own psycopg
connections, where batches of ids travel as arrays: one round trip for many
jobs, with a statement whose text never changes (so it can stay prepared, on a
direct connection with ``RELAY["PREPARE_THRESHOLD"]`` set).
"""

from django_relay.queries.channels import (
    AVAILABLE_CHANNEL as AVAILABLE_CHANNEL,
    EVENTS_CHANNEL as EVENTS_CHANNEL,
    FINISHED_CHANNEL as FINISHED_CHANNEL,
    NOTIFY as NOTIFY,
    PING as PING,
    QUEUE_CHANNEL as QUEUE_CHANNEL,
    SIGNAL_CHANNEL as SIGNAL_CHANNEL,
    TERMINAL as TERMINAL,
    Available as Available,
    available_payload as available_payload,
    finished_channel as finished_channel,
    finished_payload as finished_payload,
    listen as listen,
    notify as notify,
    ping as ping,
)
from django_relay.queries.enqueue import (
    INSERT_JOBS as INSERT_JOBS,
    INSERT_RESERVED_JOBS as INSERT_RESERVED_JOBS,
    RESERVE_JOB_IDS as RESERVE_JOB_IDS,
    RESERVED_JOBS as RESERVED_JOBS,
    STATEMENT_BYTES as STATEMENT_BYTES,
    NewJob as NewJob,
    Row as Row,
    ainsert_reserved_jobs as ainsert_reserved_jobs,
    insert_jobs as insert_jobs,
    insert_rows as insert_rows,
    job_row as job_row,
    reserve_job_ids as reserve_job_ids,
    statements as statements,
)
from django_relay.queries.flow import (
    LIMIT_QUEUE as LIMIT_QUEUE,
    PAUSE_QUEUE as PAUSE_QUEUE,
    SCALE_QUEUE as SCALE_QUEUE,
    QueueRow as QueueRow,
    change_queue as change_queue,
    periodic_ticks as periodic_ticks,
    queue_rows as queue_rows,
    record_tick_job as record_tick_job,
    take_tick as take_tick,
)
from django_relay.queries.jobs import (
    CANCEL_JOBS as CANCEL_JOBS,
    CASCADE_CANCELLED as CASCADE_CANCELLED,
    LOCK_RETRIED_RUNS as LOCK_RETRIED_RUNS,
    RETRY_JOBS as RETRY_JOBS,
    cancel_jobs as cancel_jobs,
    cascade_cancelled as cascade_cancelled,
    retry_jobs as retry_jobs,
)
from django_relay.queries.maintenance import (
    DUTY_LOCK_NAMESPACE as DUTY_LOCK_NAMESPACE,
    DUTY_LOCKS as DUTY_LOCKS,
    FORGET_NODES as FORGET_NODES,
    HEARTBEAT as HEARTBEAT,
    IDLE_TIMEOUT as IDLE_TIMEOUT,
    LIVE_NODES as LIVE_NODES,
    PRUNE as PRUNE,
    RESCUE as RESCUE,
    STAGE as STAGE,
    TAKE_DUTY_LOCK as TAKE_DUTY_LOCK,
    forget_node as forget_node,
    heartbeat as heartbeat,
    live_nodes as live_nodes,
    prune as prune,
    rescue as rescue,
    stage as stage,
    take_duty_lock as take_duty_lock,
)
from django_relay.queries.observability import (
    FINISHED_RECENT as FINISHED_RECENT,
    RETRYABLE_BY_WORKER as RETRYABLE_BY_WORKER,
    RUNNER_HEARTBEATS as RUNNER_HEARTBEATS,
    RUNNERS as RUNNERS,
    UNFINISHED_COUNTS as UNFINISHED_COUNTS,
    finished_recent as finished_recent,
    retryable_by_worker as retryable_by_worker,
    runner_heartbeats as runner_heartbeats,
    runners as runners,
    unfinished_counts as unfinished_counts,
)
from django_relay.queries.results import (
    CANCEL_UNSTARTED as CANCEL_UNSTARTED,
    OUTCOMES as OUTCOMES,
    SUBSCRIBE as SUBSCRIBE,
    cancel_unstarted as cancel_unstarted,
    fetch_outcomes as fetch_outcomes,
    subscribe as subscribe,
)
from django_relay.queries.runner import (
    ACK as ACK,
    CLAIM as CLAIM,
    JOB_COLUMNS as JOB_COLUMNS,
    QUEUES_WITH_WORK as QUEUES_WITH_WORK,
    RECONCILE as RECONCILE,
    RELEASE as RELEASE,
    STAGE_QUEUE_NOW as STAGE_QUEUE_NOW,
    Ack as Ack,
    QueueLimits as QueueLimits,
    ack as ack,
    ack_on as ack_on,
    ack_params as ack_params,
    claim as claim,
    claim_limited as claim_limited,
    claim_on as claim_on,
    reconcile as reconcile,
    release as release,
    stage_for_drain as stage_for_drain,
)
from django_relay.queries.signalling import (
    CONSUME_SIGNAL as CONSUME_SIGNAL,
    NTH_SIGNAL as NTH_SIGNAL,
    SEND_SIGNAL as SEND_SIGNAL,
    nth_signal as nth_signal,
    send_signal as send_signal,
)

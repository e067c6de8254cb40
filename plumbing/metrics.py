"""Metrics every process exports; domain metrics live with their domain.

Labels carry only bounded values (queue names, message types, reason kinds),
never an order id, an email or free text.
"""

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_HANDLED = Counter(
    "orderflow_messages_handled_total",
    "Deliveries handled by a consumer, by outcome (ok, duplicate, dead_lettered, requeued).",
    ["queue", "type", "outcome"],
)
HANDLER_DURATION = Histogram(
    "orderflow_handler_duration_seconds",
    "Time to handle one delivery, commit included.",
    ["queue", "type"],
)
DEAD_LETTERED = Counter(
    "orderflow_dead_lettered_messages_total",
    "Messages a consumer dead-lettered itself, by queue and kind of reason.",
    ["queue", "reason"],
)
OUTBOX_BACKLOG = Gauge("orderflow_outbox_backlog_messages", "Outbox rows not yet confirmed by the broker.", ["service"])
OUTBOX_PUBLISHED = Counter(
    "orderflow_outbox_published_total",
    "Outbox messages the broker confirmed, by path: after_commit (by their writer, right after its commit) or "
    "sweep (by the relay: rows of writers that do not collect theirs, and held rows whose writer died or whose "
    "publish failed).",
    ["service", "path"],
)
OUTBOX_AGE = Gauge("orderflow_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.", ["service"])
OUTBOX_PARKED = Counter(
    "orderflow_outbox_parked_total",
    "Outbox rows the relay parked in outbox_parked: unpublishable, refused by the broker, or failed too often.",
    ["service"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "orderflow_outbox_parked_messages", "Rows in outbox_parked, waiting for orderctl outbox retry or drop.", ["service"]
)
COMMANDS_EXPIRED = Counter(
    "orderflow_commands_expired_total",
    "Commands refused unhandled because their deadline had passed (Command.Expired), by queue and type.",
    ["queue", "type"],
)
COMMAND_QUEUE_WAIT = Histogram(
    "orderflow_command_queue_wait_seconds",
    "Time from a command's sending (its envelope's occurredAt, outbox included) to a consumer handling it.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
READY = Gauge(
    "orderflow_ready",
    "1 when broker and database are connected, the broker not blocked, and not draining.",
    ["service"],
)
RETENTION_PURGED = Counter(
    "orderflow_retention_purged_total",
    "Rows deleted by bounded retention (plumbing/retention.py), by table: inbox, webhook_event, ...",
    ["service", "table"],
)
BROKER_BLOCKED = Gauge(
    "orderflow_broker_blocked",
    "1 while RabbitMQ has blocked this process's connection (connection.blocked: a memory or disk alarm).",
    ["service"],
)
BATCH_SIZE = Histogram(
    "orderflow_batch_deliveries",
    "Deliveries a consumer handled in one transaction (BATCH_MAX above 1): 1 when they come one at a time.",
    ["queue"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_FALLBACKS = Counter(
    "orderflow_batch_fallbacks_total",
    "Batches that failed before their commit and were handled again one delivery at a time.",
    ["queue"],
)

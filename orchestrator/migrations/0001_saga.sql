-- One row per order: the saga's state document, its status and a version bumped by every transition.
CREATE TABLE saga (
    order_id      text PRIMARY KEY,
    status        text NOT NULL,
    current_state text,
    state         jsonb NOT NULL,
    request_hash  text NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_status ON saga (status);

-- Append-only history of every transition, as Step Functions' execution history.
CREATE TABLE saga_history (
    id         bigserial PRIMARY KEY,
    order_id   text NOT NULL REFERENCES saga (order_id),
    at         timestamptz NOT NULL,
    event      text NOT NULL,
    state      text,
    lane       text NOT NULL,
    attempt    integer,
    command_id text,
    error      text,
    cause      text,
    detail     jsonb
);
CREATE INDEX saga_history_order ON saga_history (order_id, id);

-- Durable timers: at most one per saga lane (a step's timeout or retry wait, a Parallel's timeout).
CREATE TABLE saga_timer (
    order_id text NOT NULL REFERENCES saga (order_id),
    lane     text NOT NULL,
    token    text NOT NULL,
    kind     text NOT NULL,
    due_at   timestamptz NOT NULL,
    PRIMARY KEY (order_id, lane)
);
CREATE INDEX saga_timer_due ON saga_timer (due_at);

-- Transactional outbox: rows written in the same transaction as the state
-- change they announce; the relay publishes them with confirms, then deletes them.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    message_id  text NOT NULL UNIQUE,
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    envelope    jsonb NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Inbox: one row per message a consumer has handled, so a redelivery has no second effect.
CREATE TABLE inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

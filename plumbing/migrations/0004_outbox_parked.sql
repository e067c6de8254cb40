-- A row the relay counts failed publishes of (an outage of the broker does not count): how many in a row,
-- and since when. A row that cannot be published, or failed too often, moves to outbox_parked.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN first_failed_at timestamptz;

-- Outbox rows the relay set aside instead of retrying them for ever and holding up the rows behind them: the
-- row as it was, why it was parked and after how many failed publishes. `orderctl outbox` lists, retries
-- (back into the outbox) or drops them.
CREATE TABLE outbox_parked (
    id              bigint PRIMARY KEY,
    message_id      text NOT NULL,
    exchange        text NOT NULL,
    routing_key     text NOT NULL,
    envelope        jsonb NOT NULL,
    body            bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    held_until      timestamptz,
    first_failed_at timestamptz,
    attempts        integer NOT NULL,
    reason          text NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per order and channel: claimed before sending, so a redelivered command sends nothing twice.
CREATE TABLE notification (
    order_id     text NOT NULL,
    channel      text NOT NULL CHECK (channel IN ('email', 'sms')),
    status       text NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
    detail       text NOT NULL DEFAULT '',
    attempts     integer NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, channel)
);

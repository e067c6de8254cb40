-- An order compensated before any payment was recorded: a ProcessPayment that arrives later (a retry still
-- queued, a redelivery after an outage) must not charge it.
CREATE TABLE payment_void (
    order_id   text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The fraud screen's decisions (payment.ScreenOrder), one per idempotency key ({orderId}-screen): a screening
-- asked again is answered as it was first decided, even after the rules (settings) changed. Kept as the record
-- of why an order was refused.
CREATE TABLE fraud_screening (
    idempotency_key text PRIMARY KEY,
    order_id        text NOT NULL,
    decision        text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reasons         jsonb NOT NULL,
    amount_minor    bigint NOT NULL,
    currency        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_screening_order ON fraud_screening (order_id);

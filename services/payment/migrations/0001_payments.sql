-- One payment per order: the PaymentIntent created with idempotency key {orderId}-payment.
CREATE TABLE payment (
    order_id          text PRIMARY KEY,
    payment_intent_id text NOT NULL UNIQUE,
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL,
    status            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refund (
    refund_id         text PRIMARY KEY,
    order_id          text NOT NULL,
    payment_intent_id text NOT NULL,
    amount_minor      bigint NOT NULL,
    status            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_order ON refund (order_id);

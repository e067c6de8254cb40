CREATE TABLE order_record (
    order_id          text PRIMARY KEY,
    status            text NOT NULL,
    customer_email    text NOT NULL,
    customer_phone    text,
    lines             jsonb NOT NULL,
    amount            numeric(14, 2) NOT NULL,
    currency          text NOT NULL,
    payment_intent_id text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_record_created ON order_record (created_at DESC);

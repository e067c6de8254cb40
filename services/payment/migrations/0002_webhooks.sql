-- A ProcessPayment whose PaymentIntent waits for the customer (3-D Secure) or is still processing is
-- answered later, when Stripe's webhook says how it ended: this is the command to answer.
CREATE TABLE pending_reply (
    order_id          text PRIMARY KEY,
    payment_intent_id text NOT NULL,
    command_id        text NOT NULL,
    reply_to          text NOT NULL,
    attempt           integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Webhook events already applied: a replayed event has no second effect.
CREATE TABLE webhook_event (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_event_age ON webhook_event (received_at);

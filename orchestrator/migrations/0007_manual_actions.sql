-- Operator actions that send a command outside the workflow (issue 17: the manual refund), one row each
-- (orchestrator/manual_actions.py). The reply to such a command carries its id as causation id: the runner
-- finds it here, records the outcome in the saga's history and leaves the workflow's state alone (the
-- engine would take it for a stale reply). request_key is the client's Idempotency-Key (or one the API made):
-- a request repeated with the same key finds its row and sends nothing twice.
CREATE TABLE saga_manual_action (
    command_id   text PRIMARY KEY,
    order_id     text NOT NULL REFERENCES saga (order_id),
    action       text NOT NULL CHECK (action IN ('refund')),
    request_key  text NOT NULL,
    -- What was asked (amount, reason, who): a repeated key must ask for the same thing.
    request      jsonb NOT NULL,
    -- The amount this action holds against the charge while pending or once done (a full refund: what
    -- remained when it was asked); NULL for actions that move no money.
    amount       numeric(16, 2),
    requested_at timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending', 'succeeded', 'failed')),
    settled_at   timestamptz,
    result       jsonb,
    UNIQUE (order_id, action, request_key)
);

-- Several workflows in one engine (issue 18): a saga row's key (order_id, which saga_history and saga_timer
-- reference and which is the correlation id of its messages) is the saga's own key: the orderId for the order
-- workflow, "<orderId> cancel" for the cancellation workflow (orchestrator/cancellation.py; an orderId holds no
-- space, so the two never meet). The order a saga is about is its state's orderId, kept here for queries
-- ("every saga of this order"); PostgreSQL keeps it from the state document, so no writer can forget it.
ALTER TABLE saga ADD COLUMN subject_order_id text GENERATED ALWAYS AS (state ->> 'orderId') STORED;
CREATE INDEX saga_subject_order ON saga (subject_order_id);

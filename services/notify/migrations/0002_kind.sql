-- Which message a row claims: the order's confirmation, or its cancellation notice (the cancellation workflow,
-- issue 18). Each kind is sent at most once per order and channel; rows from before are confirmations.
ALTER TABLE notification ADD COLUMN kind text NOT NULL DEFAULT 'confirmation'
    CHECK (kind IN ('confirmation', 'cancellation'));
ALTER TABLE notification DROP CONSTRAINT notification_pkey;
ALTER TABLE notification ADD PRIMARY KEY (order_id, kind, channel);

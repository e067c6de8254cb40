-- VoidOrderRecord, the compensation of CreateOrderRecord: a record of a compensated order turns VOIDED, and a
-- tombstone is left whether or not a record existed, so a CreateOrderRecord that lands later (its step timed
-- out, its process was paused) writes nothing. Both commands take the order's advisory lock.
CREATE TABLE order_void (
    order_id  text PRIMARY KEY,
    reason    text NOT NULL DEFAULT '',
    voided_at timestamptz NOT NULL DEFAULT now()
);

-- Tombstones: every ReleaseInventory leaves one, whatever it released, and ReserveInventory reads it in its own
-- transaction (both under the order's advisory lock). A ReserveInventory that lands after its order was
-- compensated (its step timed out, then the saga released) therefore reserves nothing.
CREATE TABLE order_released (
    order_id    text PRIMARY KEY,
    released_at timestamptz NOT NULL DEFAULT now()
);

-- How each order's saga ended, from the order.<status> events. The stale-reservation sweeper releases only
-- reservations of orders known to have ended otherwise than CONFIRMED: never a running or confirmed order's.
CREATE TABLE order_outcome (
    order_id    text PRIMARY KEY,
    status      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

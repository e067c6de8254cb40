-- A timer whose firing fails (a saga the engine cannot apply it to) is retried with backoff and, after a bound,
-- parked, so it never holds up the timers due after it. A transition that arms the lane afresh clears both.
ALTER TABLE saga_timer ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE saga_timer ADD COLUMN last_error text;
ALTER TABLE saga_timer ADD COLUMN parked_at timestamptz;
CREATE INDEX saga_timer_live_due ON saga_timer (due_at) WHERE parked_at IS NULL;

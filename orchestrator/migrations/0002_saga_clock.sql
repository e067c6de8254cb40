-- The saga clock: the last moment an orchestrator replica could reach both the broker and the database.
-- Time the platform spends unreachable does not count against timers (orchestrator/saga_clock.py).
CREATE TABLE saga_clock (
    id             smallint PRIMARY KEY CHECK (id = 1),
    heartbeat_at   timestamptz NOT NULL,
    paused_seconds double precision NOT NULL DEFAULT 0
);
INSERT INTO saga_clock (id, heartbeat_at) VALUES (1, now());

-- When a timer was (re)armed: only timers armed before a pause are pushed back by it.
ALTER TABLE saga_timer ADD COLUMN armed_at timestamptz NOT NULL DEFAULT now();

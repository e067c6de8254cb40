-- A row its writer publishes itself right after the commit: the relay leaves it alone until held_until, so
-- it is not published twice; past that (the writer crashed, or the broker refused it) the relay publishes it.
ALTER TABLE outbox ADD COLUMN held_until timestamptz;

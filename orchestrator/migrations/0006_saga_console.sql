-- The operator's console (issue 17): GET /api/v1/sagas filters and pages over these (orchestrator/saga_queries.py).

-- The order as it was requested. The engine keeps it only inside the state document, where steps add their
-- results next to it (ResultPath); the console shows it and filters by its lines' product ids. Captured when
-- the saga row is inserted: the state's main data is then the input as the engine started it. A runner that
-- writes the column itself wins (the trigger leaves a value it was given). Sagas from before this migration
-- get their state's data at this moment: the input plus the results of the steps they ran.
ALTER TABLE saga ADD COLUMN input jsonb;
UPDATE saga SET input = state -> 'main' -> 'data';

CREATE FUNCTION saga_input_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.input IS NULL THEN
        NEW.input := NEW.state -> 'main' -> 'data';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER saga_input BEFORE INSERT ON saga FOR EACH ROW EXECUTE FUNCTION saga_input_on_insert();

-- The saga's error name (why it failed), kept by PostgreSQL from the state document for the error filter.
ALTER TABLE saga ADD COLUMN error_name text GENERATED ALWAYS AS (state -> 'error' ->> 'Error') STORED;

-- Newest first, keyset on (created_at, order_id): the listing's order, alone and within a status.
CREATE INDEX saga_created ON saga (created_at DESC, order_id DESC);
CREATE INDEX saga_status_created ON saga (status, created_at DESC, order_id DESC);
DROP INDEX saga_status;  -- the one above serves every query it served
CREATE INDEX saga_current_state ON saga (current_state);
CREATE INDEX saga_error_name ON saga (error_name) WHERE error_name IS NOT NULL;
CREATE INDEX saga_updated ON saga (updated_at);
-- items @> '[{"productId": ...}]': sagas with a line of that product.
CREATE INDEX saga_input_items ON saga USING gin ((input -> 'items') jsonb_path_ops);

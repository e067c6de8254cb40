-- The error filter of GET /api/v1/sagas (orchestrator/saga_queries.py) matches any error a saga recorded in its
-- history, not only the one it ended with: an EXISTS on saga_history by order and error name. This index answers
-- it per saga without reading the saga's other rows, and lets the planner start from the few sagas that met a
-- rare error. Only rows that name an error (most history rows do not).
CREATE INDEX saga_history_error ON saga_history (error, order_id) WHERE error IS NOT NULL;

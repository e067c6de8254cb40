-- Versioned definitions: each definition is stored when first deployed (version = a hash of its content), and
-- each saga records the one it started on and runs to its end on it, while new sagas start on the newest.
-- A stored version is never deleted: a saga that still runs on it needs it.
CREATE TABLE workflow_definition (
    name        text NOT NULL,
    version     text NOT NULL,
    document    jsonb NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- NULL for sagas started before versions were recorded: they run on whatever definition is deployed.
ALTER TABLE saga ADD COLUMN workflow_name text;
ALTER TABLE saga ADD COLUMN workflow_version text;

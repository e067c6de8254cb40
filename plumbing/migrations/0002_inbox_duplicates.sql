-- How many redeliveries of each message the inbox absorbed: the evidence that duplicates had no effect.
ALTER TABLE inbox ADD COLUMN duplicates integer NOT NULL DEFAULT 0;

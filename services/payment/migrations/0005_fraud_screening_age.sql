-- The retention loop deletes fraud decisions older than FRAUD_SCREENING_RETENTION_DAYS in batches, oldest
-- first, walking this index.
CREATE INDEX fraud_screening_created_at ON fraud_screening (created_at);

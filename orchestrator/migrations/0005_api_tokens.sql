-- Bearer tokens for the orchestrator's API (orchestrator/api_tokens.py, `orderctl token`). Only a token's
-- SHA-256 is stored: a token is 32 random bytes, so its hash cannot be reversed by guessing, and a plain
-- (unsalted, fast) hash is enough; a password hash's slowness would only cost every request. A token is
-- revoked, never deleted, so the audit trail (created_by, and issue 17's "who did what") keeps its name.
CREATE TABLE api_token (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    role         text NOT NULL CHECK (role IN ('viewer', 'operator')),
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- API keys created through POST /v1/keys: the table of
-- migrations/sqlite/0010_api_keys.sql with the same columns and meanings.
CREATE TABLE api_keys (
    id              TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'write', 'read')),
    secret_sha256   TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    expires_at      BIGINT,
    revoked_at      BIGINT
);

-- API keys created through POST /v1/keys. Only the SHA-256 of a secret is
-- kept; keys declared in the configuration are not stored at all.
-- A revoked key keeps its row (revoked_at set) so that its id stays taken
-- and the revocation can be audited.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role = 'admin' OR role = 'write' OR role = 'read'),
    secret_sha256   TEXT NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    expires_at      INTEGER,
    revoked_at      INTEGER
) STRICT;

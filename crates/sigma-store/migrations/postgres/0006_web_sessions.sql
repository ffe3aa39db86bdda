-- Console sessions (sigma-web): an API key exchanged for a cookie. Only the SHA-256 of the
-- session id is stored, so a copy of the database signs nobody in. Every replica reads the same
-- rows, so a sign-out on one replica holds on all of them.
CREATE TABLE web_sessions (
    id_hash       TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    csrf_token    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX web_sessions_key ON web_sessions (key_id);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);

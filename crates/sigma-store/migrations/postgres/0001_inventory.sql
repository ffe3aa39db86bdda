-- sigma inventory schema (PostgreSQL). Times are Unix milliseconds (UTC); JSON is stored as text.
CREATE TABLE providers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    name_key    TEXT NOT NULL UNIQUE,
    country     TEXT,
    website     TEXT,
    notes       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE purposes (
    name          TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    mesh          TEXT NOT NULL DEFAULT '{}',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

INSERT INTO purposes (name, display_name, mesh, created_at, updated_at) VALUES
    ('xrayr',     'XrayR node', '{}', (extract(epoch from now()) * 1000)::bigint, (extract(epoch from now()) * 1000)::bigint),
    ('vpn-exit',  'VPN exit',   '{}', (extract(epoch from now()) * 1000)::bigint, (extract(epoch from now()) * 1000)::bigint),
    ('vpn-relay', 'VPN relay',  '{}', (extract(epoch from now()) * 1000)::bigint, (extract(epoch from now()) * 1000)::bigint),
    ('vpn-entry', 'VPN entry',  '{}', (extract(epoch from now()) * 1000)::bigint, (extract(epoch from now()) * 1000)::bigint),
    ('monitor',   'Monitoring', '{}', (extract(epoch from now()) * 1000)::bigint, (extract(epoch from now()) * 1000)::bigint);

CREATE TABLE vps (
    id                    TEXT PRIMARY KEY,
    hostname              TEXT NOT NULL,
    alias                 TEXT,
    provider_id           TEXT REFERENCES providers(id),
    ip_addresses          TEXT NOT NULL DEFAULT '[]',
    country               TEXT,
    city                  TEXT,
    purpose               TEXT NOT NULL REFERENCES purposes(name),
    status                TEXT NOT NULL,
    status_before_delete  TEXT,
    tags                  TEXT NOT NULL DEFAULT '[]',
    monitoring            BIGINT NOT NULL DEFAULT 1,
    node_exporter_port    BIGINT NOT NULL DEFAULT 9100,
    system_info           TEXT,
    last_heartbeat_at     BIGINT,
    desired_version       BIGINT NOT NULL DEFAULT 1,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    deleted_at            BIGINT
);
-- Hostnames are stored lower-cased, so this is the case-insensitive uniqueness among live VPS.
CREATE UNIQUE INDEX vps_hostname_live ON vps (hostname) WHERE deleted_at IS NULL;
CREATE INDEX vps_updated_at ON vps (updated_at);
CREATE INDEX vps_status ON vps (status);
CREATE INDEX vps_purpose ON vps (purpose);
CREATE INDEX vps_country ON vps (country);
CREATE INDEX vps_provider ON vps (provider_id);

CREATE TABLE vps_tags (
    vps_id  TEXT NOT NULL REFERENCES vps(id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (vps_id, tag)
);
CREATE INDEX vps_tags_tag ON vps_tags (tag);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    prefix        TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    vps_id        TEXT REFERENCES vps(id),
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_revoked_at ON api_keys (revoked_at);
CREATE INDEX api_keys_vps ON api_keys (vps_id);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    prefix      TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL,
    name        TEXT NOT NULL,
    presets     TEXT NOT NULL,
    max_uses    BIGINT NOT NULL,
    uses        BIGINT NOT NULL DEFAULT 0,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE audit_log (
    id             BIGSERIAL PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    before         TEXT,
    after          TEXT
);
CREATE INDEX audit_at ON audit_log (at);
CREATE INDEX audit_resource ON audit_log (resource_type, resource_id);
CREATE INDEX audit_actor ON audit_log (actor);

-- Small facts about the installation itself (e.g. whether the first admin key was issued).
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

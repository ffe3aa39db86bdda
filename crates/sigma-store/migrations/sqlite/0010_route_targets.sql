-- Route upstreams inside the fleet: a route forwards either to a backend (host, port, cluster
-- type, as before) or to a target (one VPS, or the pool of a purpose's VPS, optionally only in
-- some countries, at a named port of the target's purpose). SQLite cannot drop NOT NULL, so
-- the table is rebuilt; the CHECK makes a half-backend or half-target row unstorable.
CREATE TABLE envoy_routes_new (
    id                  TEXT PRIMARY KEY,
    vps_id              TEXT NOT NULL REFERENCES vps(id),
    name                TEXT NOT NULL,
    listen_port         INTEGER NOT NULL,
    backend_host        TEXT,
    backend_port        INTEGER,
    cluster_type        TEXT,
    target_kind         TEXT NOT NULL DEFAULT 'backend',
    target_vps_id       TEXT REFERENCES vps(id),
    target_purpose      TEXT REFERENCES purposes(name),
    target_port         TEXT,
    target_countries    TEXT NOT NULL DEFAULT '[]',
    connect_timeout_ms  INTEGER NOT NULL,
    proxy_protocol      TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    CHECK (
        (target_kind = 'backend' AND backend_host IS NOT NULL AND backend_port IS NOT NULL
            AND cluster_type IS NOT NULL AND target_vps_id IS NULL AND target_purpose IS NULL
            AND target_port IS NULL)
        OR (target_kind = 'vps' AND target_vps_id IS NOT NULL AND target_purpose IS NULL
            AND target_port IS NOT NULL AND backend_host IS NULL AND backend_port IS NULL
            AND cluster_type IS NULL)
        OR (target_kind = 'pool' AND target_purpose IS NOT NULL AND target_vps_id IS NULL
            AND target_port IS NOT NULL AND backend_host IS NULL AND backend_port IS NULL
            AND cluster_type IS NULL)
    )
);
INSERT INTO envoy_routes_new (id, vps_id, name, listen_port, backend_host, backend_port,
    cluster_type, connect_timeout_ms, proxy_protocol, status, created_at, updated_at)
SELECT id, vps_id, name, listen_port, backend_host, backend_port, cluster_type,
    connect_timeout_ms, proxy_protocol, status, created_at, updated_at
FROM envoy_routes;
DROP TABLE envoy_routes;
ALTER TABLE envoy_routes_new RENAME TO envoy_routes;
CREATE UNIQUE INDEX envoy_routes_name ON envoy_routes (vps_id, name);
CREATE UNIQUE INDEX envoy_routes_port ON envoy_routes (vps_id, listen_port);
-- Who forwards to a VPS or a purpose (retire checks, the chains view, pool changes).
CREATE INDEX envoy_routes_target_vps ON envoy_routes (target_vps_id) WHERE target_vps_id IS NOT NULL;
CREATE INDEX envoy_routes_target_purpose ON envoy_routes (target_purpose) WHERE target_purpose IS NOT NULL;

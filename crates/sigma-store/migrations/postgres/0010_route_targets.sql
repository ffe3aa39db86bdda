-- Route upstreams inside the fleet: a route forwards either to a backend (host, port, cluster
-- type, as before) or to a target (one VPS, or the pool of a purpose's VPS, optionally only in
-- some countries, at a named port of the target's purpose). The CHECK makes a half-backend or
-- half-target row unstorable.
ALTER TABLE envoy_routes ALTER COLUMN backend_host DROP NOT NULL;
ALTER TABLE envoy_routes ALTER COLUMN backend_port DROP NOT NULL;
ALTER TABLE envoy_routes ALTER COLUMN cluster_type DROP NOT NULL;
ALTER TABLE envoy_routes ADD COLUMN target_kind TEXT NOT NULL DEFAULT 'backend';
ALTER TABLE envoy_routes ADD COLUMN target_vps_id TEXT REFERENCES vps(id);
ALTER TABLE envoy_routes ADD COLUMN target_purpose TEXT REFERENCES purposes(name);
ALTER TABLE envoy_routes ADD COLUMN target_port TEXT;
ALTER TABLE envoy_routes ADD COLUMN target_countries TEXT NOT NULL DEFAULT '[]';
ALTER TABLE envoy_routes ADD CONSTRAINT envoy_routes_upstream CHECK (
    (target_kind = 'backend' AND backend_host IS NOT NULL AND backend_port IS NOT NULL
        AND cluster_type IS NOT NULL AND target_vps_id IS NULL AND target_purpose IS NULL
        AND target_port IS NULL)
    OR (target_kind = 'vps' AND target_vps_id IS NOT NULL AND target_purpose IS NULL
        AND target_port IS NOT NULL AND backend_host IS NULL AND backend_port IS NULL
        AND cluster_type IS NULL)
    OR (target_kind = 'pool' AND target_purpose IS NOT NULL AND target_vps_id IS NULL
        AND target_port IS NOT NULL AND backend_host IS NULL AND backend_port IS NULL
        AND cluster_type IS NULL)
);
CREATE INDEX envoy_routes_target_vps ON envoy_routes (target_vps_id) WHERE target_vps_id IS NOT NULL;
CREATE INDEX envoy_routes_target_purpose ON envoy_routes (target_purpose) WHERE target_purpose IS NOT NULL;

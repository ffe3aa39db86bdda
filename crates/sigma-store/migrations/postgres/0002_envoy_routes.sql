-- Envoy routes of the classic mode, and the per-VPS version an agent follows.
CREATE TABLE envoy_routes (
    id                  TEXT PRIMARY KEY,
    vps_id              TEXT NOT NULL REFERENCES vps(id),
    name                TEXT NOT NULL,
    listen_port         BIGINT NOT NULL,
    backend_host        TEXT NOT NULL,
    backend_port        BIGINT NOT NULL,
    cluster_type        TEXT NOT NULL,
    connect_timeout_ms  BIGINT NOT NULL,
    proxy_protocol      TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE UNIQUE INDEX envoy_routes_name ON envoy_routes (vps_id, name);
CREATE UNIQUE INDEX envoy_routes_port ON envoy_routes (vps_id, listen_port);

ALTER TABLE vps ADD COLUMN envoy_version BIGINT NOT NULL DEFAULT 0;

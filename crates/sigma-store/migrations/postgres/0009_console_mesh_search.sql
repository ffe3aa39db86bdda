-- The facts the console's overview counts from agents' mesh reports, as columns (issue 18).
-- Reading them out of the agent_state JSON of every row made each overview a scan of the
-- table's widest column. Written by the heartbeat flush from the latest report; NULL means
-- unknown (no report yet, a classic-mode agent, or an agent that does not know).
--   mesh_proxy: the proxy state the agent reports (MeshPhase: installing, starting, ready,
--               degraded, stopped).
--   mesh_cert_expires_at / mesh_token_expires_at: Unix ms.
ALTER TABLE vps ADD COLUMN mesh_proxy TEXT;
ALTER TABLE vps ADD COLUMN mesh_cert_expires_at BIGINT;
ALTER TABLE vps ADD COLUMN mesh_token_expires_at BIGINT;

-- Backfill from what agents already reported (sigma wrote that JSON itself, timestamps in
-- RFC 3339, which timestamptz reads).
UPDATE vps SET
    mesh_proxy = CASE WHEN (agent_state::json -> 'mesh_state' ->> 'state')
                          IN ('installing', 'starting', 'ready', 'degraded', 'stopped')
                      THEN agent_state::json -> 'mesh_state' ->> 'state' END,
    mesh_cert_expires_at = (EXTRACT(EPOCH FROM (agent_state::json -> 'mesh_state' ->> 'cert_expires_at')::timestamptz) * 1000)::BIGINT,
    mesh_token_expires_at = (EXTRACT(EPOCH FROM (agent_state::json -> 'mesh_state' ->> 'token_expires_at')::timestamptz) * 1000)::BIGINT
WHERE agent_state IS NOT NULL AND json_typeof(agent_state::json -> 'mesh_state') = 'object';

-- Partial indexes over the live rows that have the fact, so the overview's counts and the
-- list's filters read a few index entries. The heartbeat flush writes these columns only for
-- rows whose facts changed (a proxy changing state, a certificate or token renewed), so the
-- indexes cost the flush next to nothing in the steady state.
CREATE INDEX vps_live_mesh_proxy ON vps (mesh_proxy, status)
    WHERE deleted_at IS NULL AND mesh_proxy IS NOT NULL;
CREATE INDEX vps_live_mesh_cert ON vps (mesh_cert_expires_at, status)
    WHERE deleted_at IS NULL AND mesh_cert_expires_at IS NOT NULL;
CREATE INDEX vps_live_mesh_token ON vps (mesh_token_expires_at, status)
    WHERE deleted_at IS NULL AND mesh_token_expires_at IS NOT NULL;

-- The console's text search (a case-insensitive substring of hostname, alias, city or the
-- address list), indexed: a pg_trgm GIN index answers LIKE '%…%' on the lower-cased
-- columns joined by newlines (which a search cannot contain, so no match spans two columns)
-- without reading the table. pg_trgm is a trusted extension shipped with PostgreSQL (on Debian
-- in the postgresql-NN package itself), so the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX vps_live_search ON vps USING gin (
    (lower(hostname || chr(10) || COALESCE(alias, '') || chr(10) || COALESCE(city, '')
           || chr(10) || ip_addresses)) gin_trgm_ops
) WHERE deleted_at IS NULL;

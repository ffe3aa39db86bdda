-- The facts the console's overview counts from agents' mesh reports, as columns (issue 18).
-- Reading them out of the agent_state JSON of every row made each overview a scan of the
-- table's widest column. Written by the heartbeat flush from the latest report; NULL means
-- unknown (no report yet, a classic-mode agent, or an agent that does not know).
--   mesh_proxy: the proxy state the agent reports (MeshPhase: installing, starting, ready,
--               degraded, stopped).
--   mesh_cert_expires_at / mesh_token_expires_at: Unix ms.
ALTER TABLE vps ADD COLUMN mesh_proxy TEXT;
ALTER TABLE vps ADD COLUMN mesh_cert_expires_at INTEGER;
ALTER TABLE vps ADD COLUMN mesh_token_expires_at INTEGER;

-- Backfill from what agents already reported. julianday() reads RFC 3339 with any number of
-- fraction digits and a zone; an unreadable value stays NULL (unknown) rather than failing.
UPDATE vps SET
    mesh_proxy = CASE WHEN json_extract(agent_state, '$.mesh_state.state')
                          IN ('installing', 'starting', 'ready', 'degraded', 'stopped')
                      THEN json_extract(agent_state, '$.mesh_state.state') END,
    mesh_cert_expires_at = CAST(ROUND((julianday(json_extract(agent_state, '$.mesh_state.cert_expires_at'))
                                       - 2440587.5) * 86400000) AS INTEGER),
    mesh_token_expires_at = CAST(ROUND((julianday(json_extract(agent_state, '$.mesh_state.token_expires_at'))
                                        - 2440587.5) * 86400000) AS INTEGER)
WHERE json_valid(agent_state) AND json_type(agent_state, '$.mesh_state') = 'object';

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
-- address list), indexed: an FTS5 trigram index finds the rows holding a substring of three
-- or more characters without reading the table (the LIKE scan it replaces read every row: 144
-- ms p50 at 100,000 VPS). Shorter searches still scan.
--
-- The index's rows are keyed by search_key, a stable integer of the VPS's own: the table's
-- implicit rowid is not stable (VACUUM may renumber it), so external content keyed by it
-- could drift. The index keeps its own copy of the four columns (a few dozen bytes a VPS).
ALTER TABLE vps ADD COLUMN search_key INTEGER;
UPDATE vps SET search_key = rowid;
CREATE UNIQUE INDEX vps_search_key ON vps (search_key);
CREATE VIRTUAL TABLE vps_search USING fts5(hostname, alias, city, ip_addresses, tokenize = 'trigram');
INSERT INTO vps_search (rowid, hostname, alias, city, ip_addresses)
    SELECT search_key, hostname, alias, city, ip_addresses FROM vps;
-- A new VPS gets the next key; setting it fires the update trigger, which indexes the row.
CREATE TRIGGER vps_search_insert AFTER INSERT ON vps BEGIN
    UPDATE vps SET search_key = (SELECT COALESCE(MAX(search_key), 0) + 1 FROM vps)
    WHERE rowid = new.rowid;
END;
-- The heartbeat flush names ip_addresses in every UPDATE; the WHEN clause makes the rows
-- whose searched text did not change cost a comparison, not an index write.
CREATE TRIGGER vps_search_update AFTER UPDATE OF search_key, hostname, alias, city, ip_addresses ON vps
WHEN old.search_key IS NOT new.search_key OR old.hostname IS NOT new.hostname
    OR old.alias IS NOT new.alias OR old.city IS NOT new.city
    OR old.ip_addresses IS NOT new.ip_addresses
BEGIN
    DELETE FROM vps_search WHERE rowid = old.search_key;
    INSERT INTO vps_search (rowid, hostname, alias, city, ip_addresses)
        VALUES (new.search_key, new.hostname, new.alias, new.city, new.ip_addresses);
END;
CREATE TRIGGER vps_search_delete AFTER DELETE ON vps BEGIN
    DELETE FROM vps_search WHERE rowid = old.search_key;
END;

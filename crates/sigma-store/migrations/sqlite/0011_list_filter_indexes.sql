-- The VPS list's most common filter pairs, over live rows, in the list's order (issue 19).
-- With 1,000,000 VPS a page filtered by purpose and country took 566 ms p50 (1.1 s p99): the
-- total count walked the country's index entries (150,000) and read each row to test its
-- purpose. With the pair leading an index that also holds the sort columns, the count and the
-- page read index entries only (sqlite3 CLI on the benchmark's 1M database: count 9.3 s cold /
-- 0.57 s warm -> 2 ms). The same for a provider and a status. Neither index holds a column
-- the heartbeat flush writes, so they cost it nothing; an insert pays two more index entries.
CREATE INDEX vps_live_by_purpose ON vps (purpose, country, hostname, id) WHERE deleted_at IS NULL;
CREATE INDEX vps_live_by_provider ON vps (provider_id, status, hostname, id) WHERE deleted_at IS NULL;

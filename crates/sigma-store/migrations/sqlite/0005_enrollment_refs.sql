-- Enrollment tokens refer to what their presets name by reference, not by name (issue 13):
-- a renamed provider keeps its tokens, a deleted one revokes exactly its tokens, and a token
-- can be bound to one VPS for a reinstall. `presets` stays the snapshot taken at creation.
ALTER TABLE enrollment_tokens ADD COLUMN provider_id TEXT REFERENCES providers(id);
ALTER TABLE enrollment_tokens ADD COLUMN purpose TEXT REFERENCES purposes(name);
ALTER TABLE enrollment_tokens ADD COLUMN vps_id TEXT REFERENCES vps(id);
CREATE INDEX enrollment_tokens_provider ON enrollment_tokens (provider_id);
CREATE INDEX enrollment_tokens_purpose ON enrollment_tokens (purpose);
CREATE INDEX enrollment_tokens_vps ON enrollment_tokens (vps_id);

-- Existing presets: the provider the name designated when the token was made (its exact name,
-- else the case-insensitive key it was looked up by), and the purpose by its exact name.
UPDATE enrollment_tokens SET provider_id = COALESCE(
    (SELECT p.id FROM providers p WHERE p.name = json_extract(enrollment_tokens.presets, '$.provider')),
    (SELECT p.id FROM providers p WHERE p.name_key = lower(json_extract(enrollment_tokens.presets, '$.provider')))
) WHERE json_extract(presets, '$.provider') IS NOT NULL;
UPDATE enrollment_tokens SET purpose = json_extract(presets, '$.purpose')
WHERE json_extract(presets, '$.purpose') IN (SELECT name FROM purposes);

-- A live token whose preset designates nothing any more (its provider was renamed before this
-- migration, or deleted by the old name match) could only fail every enrollment: revoke it,
-- and say so in the audit log. Its presets snapshot keeps the name it had.
INSERT INTO audit_log (at, actor, action, resource_type, resource_id, before, after)
SELECT CAST(strftime('%s','now') AS INTEGER) * 1000, 'system', 'enrollment_token.revoke',
       'enrollment_token', id, NULL,
       '{"reason":"its presets name a provider or purpose that no longer exists (migration 0005)"}'
FROM enrollment_tokens
WHERE revoked_at IS NULL
  AND ((json_extract(presets, '$.provider') IS NOT NULL AND provider_id IS NULL)
    OR (json_extract(presets, '$.purpose') IS NOT NULL AND purpose IS NULL));
UPDATE enrollment_tokens SET revoked_at = CAST(strftime('%s','now') AS INTEGER) * 1000
WHERE revoked_at IS NULL
  AND ((json_extract(presets, '$.provider') IS NOT NULL AND provider_id IS NULL)
    OR (json_extract(presets, '$.purpose') IS NOT NULL AND purpose IS NULL));

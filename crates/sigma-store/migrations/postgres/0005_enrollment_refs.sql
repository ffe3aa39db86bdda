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
    (SELECT p.id FROM providers p WHERE p.name = (enrollment_tokens.presets::json ->> 'provider')),
    (SELECT p.id FROM providers p WHERE p.name_key = lower((enrollment_tokens.presets::json ->> 'provider')))
) WHERE (presets::json ->> 'provider') IS NOT NULL;
UPDATE enrollment_tokens SET purpose = (presets::json ->> 'purpose')
WHERE (presets::json ->> 'purpose') IN (SELECT name FROM purposes);

-- A live token whose preset designates nothing any more (its provider was renamed before this
-- migration, or deleted by the old name match) could only fail every enrollment: revoke it,
-- and say so in the audit log. Its presets snapshot keeps the name it had.
INSERT INTO audit_log (at, actor, action, resource_type, resource_id, before, after)
SELECT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT, 'system', 'enrollment_token.revoke',
       'enrollment_token', id, NULL,
       '{"reason":"its presets name a provider or purpose that no longer exists (migration 0005)"}'
FROM enrollment_tokens
WHERE revoked_at IS NULL
  AND (((presets::json ->> 'provider') IS NOT NULL AND provider_id IS NULL)
    OR ((presets::json ->> 'purpose') IS NOT NULL AND purpose IS NULL));
UPDATE enrollment_tokens SET revoked_at = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
WHERE revoked_at IS NULL
  AND (((presets::json ->> 'provider') IS NOT NULL AND provider_id IS NULL)
    OR ((presets::json ->> 'purpose') IS NOT NULL AND purpose IS NULL));

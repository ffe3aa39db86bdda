//! API keys and enrollment tokens: issuing, listing, revoking, and authenticating requests.
//!
//! Authenticated keys are cached by prefix, so a request costs one SHA-256 and a map lookup.
//! A revocation made here takes effect at once; one made by another replica takes effect at
//! that replica's next change poll.
//!
//! One file (about 910 lines) because keys and enrollment tokens are one credential scheme:
//! the same prefix-and-hash secrets and the same row decoding helpers; it splits into keys and
//! tokens if it grows further.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use sigma_types::{
    ApiKey, ApiKeyCreate, ApiKeyCreated, EnrollmentPresets, EnrollmentToken, EnrollmentTokenCreate,
    EnrollmentTokenCreated, List, Role,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::db::{from_ms, now_ms};
use crate::error::{Error, Result, is_unique_violation};
use crate::secret;

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id.
    pub key_id: Uuid,
    /// The key's prefix.
    pub prefix: String,
    /// The key's role.
    pub role: Role,
    /// For agent keys, the VPS it acts for.
    pub vps_id: Option<Uuid>,
}

impl Principal {
    /// How this principal appears in the audit log.
    pub fn actor(&self) -> String {
        format!("key:{}", self.prefix)
    }
}

#[derive(Debug)]
struct CachedKey {
    id: Uuid,
    hash: String,
    role: Role,
    vps_id: Option<Uuid>,
    expires_at: Option<i64>,
    revoked_at: AtomicI64,
    last_used_at: AtomicI64,
}

/// Keys seen recently, by prefix.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
}

/// How often a key's `last_used_at` is written at most.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

impl KeyCache {
    fn get(&self, prefix: &str) -> Option<Arc<CachedKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
            .cloned()
    }

    fn put(&self, prefix: String, k: Arc<CachedKey>) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prefix, k);
    }

    /// Caches a key this replica has just committed, so its first use costs no query.
    pub(crate) fn remember(&self, key: &ApiKey, hash: String) {
        self.put(key.prefix.clone(), Arc::new(cached_from_key(key, hash)));
    }

    pub(crate) fn mark_revoked(&self, prefix: &str, at: i64) {
        if let Some(k) = self.get(prefix) {
            k.revoked_at.store(at, Ordering::Relaxed);
        }
    }
}

const KEY_COLS: &str = "id, prefix, key_hash, name, role, vps_id, created_by, created_at, \
                        last_used_at, expires_at, revoked_at";

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|_| Error::Corrupt(format!("{col} {s:?}")))
}

fn opt_uuid_col(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|_| Error::Corrupt(format!("{col} {s:?}"))))
        .transpose()
}

fn role_col(row: &AnyRow) -> Result<Role> {
    let s: String = row.try_get("role")?;
    Role::parse(&s).ok_or_else(|| Error::Corrupt(format!("role {s:?}")))
}

fn cached_from_key(k: &ApiKey, hash: String) -> CachedKey {
    CachedKey {
        id: k.id,
        hash,
        role: k.role,
        vps_id: k.vps_id,
        expires_at: k.expires_at.map(crate::db::to_ms),
        revoked_at: AtomicI64::new(k.revoked_at.map_or(0, crate::db::to_ms)),
        last_used_at: AtomicI64::new(k.last_used_at.map_or(0, crate::db::to_ms)),
    }
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: uuid_col(row, "id")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        role: role_col(row)?,
        vps_id: opt_uuid_col(row, "vps_id")?,
        created_by: row.try_get("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms),
    })
}

/// An enrollment token with its provider reference resolved to the provider's current name.
/// `presets` is the snapshot taken at creation; `provider_id`, `purpose` and `vps_id` are the
/// live references enrollment uses.
const TOKEN_SELECT: &str = "SELECT t.id, t.prefix, t.token_hash, t.name, t.presets, t.max_uses, \
     t.uses, t.created_by, t.created_at, t.expires_at, t.revoked_at, t.provider_id, \
     t.purpose AS purpose_ref, t.vps_id, pr.name AS provider_name \
     FROM enrollment_tokens t LEFT JOIN providers pr ON pr.id = t.provider_id";

/// A reference column of `enrollment_tokens` that a deletion clears.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenRef {
    /// `provider_id`.
    Provider,
    /// `purpose`.
    Purpose,
}

impl TokenRef {
    fn column(self) -> &'static str {
        match self {
            TokenRef::Provider => "provider_id",
            TokenRef::Purpose => "purpose",
        }
    }
}

/// What enrollment needs of a token beyond what is listed.
#[derive(Debug, Clone)]
pub(crate) struct TokenRefs {
    /// The provider preset, by id.
    pub provider_id: Option<String>,
    /// The purpose preset.
    pub purpose: Option<String>,
    /// The VPS a reinstall token is bound to.
    pub vps_id: Option<Uuid>,
    /// A preset whose target no longer exists (the name it had), if any.
    pub stale: Option<String>,
}

fn token_refs(row: &AnyRow, snapshot: &EnrollmentPresets) -> Result<TokenRefs> {
    let provider_id: Option<String> = row.try_get("provider_id")?;
    let purpose: Option<String> = row.try_get("purpose_ref")?;
    let stale = match (
        &snapshot.provider,
        &provider_id,
        &snapshot.purpose,
        &purpose,
    ) {
        (Some(p), None, _, _) => Some(format!("provider preset {p:?}")),
        (_, _, Some(p), None) => Some(format!("purpose preset {p:?}")),
        _ => None,
    };
    Ok(TokenRefs {
        provider_id,
        purpose,
        vps_id: opt_uuid_col(row, "vps_id")?,
        stale,
    })
}

fn token_from_row(row: &AnyRow) -> Result<EnrollmentToken> {
    Ok(token_and_refs(row)?.0)
}

fn token_and_refs(row: &AnyRow) -> Result<(EnrollmentToken, TokenRefs)> {
    let presets: String = row.try_get("presets")?;
    let snapshot: EnrollmentPresets = serde_json::from_str(&presets)
        .map_err(|e| Error::Corrupt(format!("token presets: {e}")))?;
    let refs = token_refs(row, &snapshot)?;
    // A live reference shows what it designates now (a renamed provider under its new name);
    // a preset whose target was deleted keeps the name it had.
    let current_provider: Option<String> = row.try_get("provider_name")?;
    let presets = EnrollmentPresets {
        provider: current_provider.or(snapshot.provider),
        purpose: refs.purpose.clone().or(snapshot.purpose),
        ..snapshot
    };
    let token = EnrollmentToken {
        id: uuid_col(row, "id")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        presets,
        vps_id: refs.vps_id,
        max_uses: row.try_get("max_uses")?,
        uses: row.try_get("uses")?,
        created_by: row.try_get("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: from_ms(row.try_get("expires_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms),
    };
    Ok((token, refs))
}

/// Whether the bootstrap admin key came from the environment or was generated now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// `SIGMA_ADMIN_KEY` was given and is stored.
    FromEnvironment {
        /// Its prefix.
        prefix: String,
    },
    /// First run: a key was generated; print it once.
    Generated {
        /// The key.
        key: String,
    },
    /// Not the first run and no key given: nothing to do.
    AlreadyInitialised,
}

impl Store {
    /// Authenticates a bearer secret as an API key.
    pub async fn authenticate(&self, secret_text: &str) -> Result<Principal> {
        let prefix = secret::prefix_of(secret_text);
        let key = match self.keys.get(&prefix) {
            Some(k) => k,
            None => {
                let row = sqlx::query(dynsql!("SELECT {KEY_COLS} FROM api_keys WHERE prefix = $1"))
                    .bind(prefix.clone())
                    .fetch_optional(&self.pools.read)
                    .await?
                    .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?;
                let k = Arc::new(cached_from_key(
                    &api_key_from_row(&row)?,
                    row.try_get("key_hash")?,
                ));
                self.keys.put(prefix.clone(), k.clone());
                k
            }
        };
        if !secret::matches(secret_text, &key.hash) {
            return Err(Error::Unauthorized("unknown API key".into()));
        }
        let now = now_ms();
        let revoked = key.revoked_at.load(Ordering::Relaxed);
        if revoked != 0 {
            return Err(Error::Unauthorized(format!(
                "API key {prefix} was revoked at {}",
                from_ms(revoked)
            )));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::Unauthorized(format!("API key {prefix} has expired")));
        }
        let last = key.last_used_at.load(Ordering::Relaxed);
        if now - last >= LAST_USED_RESOLUTION_MS
            && key
                .last_used_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.fleet.queue_key_use(key.id, now);
        }
        Ok(Principal {
            key_id: key.id,
            prefix,
            role: key.role,
            vps_id: key.vps_id,
        })
    }

    /// Makes sure an admin can log in: stores `SIGMA_ADMIN_KEY` if given, otherwise generates
    /// one key on the very first run only.
    pub async fn bootstrap_admin(&self, chosen: Option<&str>) -> Result<AdminBootstrap> {
        let now = now_ms();
        if let Some(key) = chosen {
            secret::check_chosen(key).map_err(|r| Error::Config(format!("SIGMA_ADMIN_KEY {r}")))?;
            let prefix = secret::prefix_of(key);
            let existing =
                sqlx::query("SELECT key_hash, revoked_at FROM api_keys WHERE prefix = $1")
                    .bind(prefix.clone())
                    .fetch_optional(&self.pools.write)
                    .await?;
            if let Some(row) = existing {
                let hash: String = row.try_get("key_hash")?;
                if !secret::matches(key, &hash) {
                    return Err(Error::Config(format!(
                        "SIGMA_ADMIN_KEY has the prefix of another stored key ({prefix})"
                    )));
                }
                if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                    tracing::warn!(%prefix, "SIGMA_ADMIN_KEY is stored but revoked; it will not log in");
                }
            } else {
                let mut tx = self.pools.write.begin().await?;
                let id = Uuid::new_v4();
                let inserted = sqlx::query(
                    "INSERT INTO api_keys (id, prefix, key_hash, name, role, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, 'admin', 'system', $5)",
                )
                .bind(id.to_string())
                .bind(prefix.clone())
                .bind(secret::hash(key))
                .bind("admin (SIGMA_ADMIN_KEY)")
                .bind(now)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {
                        record(
                            &mut *tx,
                            Record {
                                actor: "system",
                                action: "api_key.create",
                                resource_type: "api_key",
                                resource_id: id.to_string(),
                            },
                            None::<&()>,
                            Some(&serde_json::json!({"prefix": prefix, "role": "admin"})),
                        )
                        .await?;
                        tx.commit().await?;
                    }
                    // Another replica stored it at the same moment.
                    Err(e) if is_unique_violation(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(AdminBootstrap::FromEnvironment { prefix });
        }
        // The marker row makes "first run" a single decision even with several replicas
        // starting against one empty database.
        let mut tx = self.pools.write.begin().await?;
        let marker =
            sqlx::query("INSERT INTO settings (name, value) VALUES ('initial_admin_key', $1)")
                .bind(now.to_string())
                .execute(&mut *tx)
                .await;
        match marker {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(AdminBootstrap::AlreadyInitialised),
            Err(e) => return Err(e.into()),
        }
        let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_keys WHERE role = 'admin'")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if admins > 0 {
            tx.commit().await?;
            return Ok(AdminBootstrap::AlreadyInitialised);
        }
        let s = secret::generate(secret::API_KEY_KIND)?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, key_hash, name, role, created_by, created_at) \
             VALUES ($1, $2, $3, 'initial admin', 'admin', 'system', $4)",
        )
        .bind(id.to_string())
        .bind(s.prefix.clone())
        .bind(s.hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        record(
            &mut *tx,
            Record {
                actor: "system",
                action: "api_key.create",
                resource_type: "api_key",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&serde_json::json!({"prefix": s.prefix, "role": "admin"})),
        )
        .await?;
        tx.commit().await?;
        Ok(AdminBootstrap::Generated { key: s.plaintext })
    }

    /// Issues an API key.
    pub async fn create_api_key(&self, actor: &str, c: &ApiKeyCreate) -> Result<ApiKeyCreated> {
        let mut tx = self.pools.write.begin().await?;
        if let Some(vps) = c.vps_id {
            let found = sqlx::query("SELECT deleted_at FROM vps WHERE id = $1")
                .bind(vps.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            match found {
                None => return Err(Error::invalid("vps_id", format!("no VPS with id {vps}"))),
                Some(r) if r.try_get::<Option<i64>, _>("deleted_at")?.is_some() => {
                    return Err(Error::Conflict(format!("VPS {vps} is deleted")));
                }
                Some(_) => {}
            }
        }
        let (key, s) = self
            .insert_key(&mut tx, actor, &c.name, c.role, c.vps_id, c.ttl_seconds)
            .await?;
        tx.commit().await?;
        self.keys.remember(&key, s.hash);
        Ok(ApiKeyCreated {
            key: s.plaintext,
            api_key: key,
        })
    }

    pub(crate) async fn insert_key(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        actor: &str,
        name: &str,
        role: Role,
        vps_id: Option<Uuid>,
        ttl_seconds: Option<i64>,
    ) -> Result<(ApiKey, secret::NewSecret)> {
        let s = secret::generate(secret::API_KEY_KIND)?;
        let id = Uuid::new_v4();
        let now = now_ms();
        let expires = ttl_seconds.map(|t| now + t * 1000);
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, key_hash, name, role, vps_id, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.to_string())
        .bind(s.prefix.clone())
        .bind(s.hash.clone())
        .bind(name.to_string())
        .bind(role.as_str())
        .bind(vps_id.map(|v| v.to_string()))
        .bind(actor.to_string())
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
        let key = ApiKey {
            id,
            prefix: s.prefix.clone(),
            name: name.to_string(),
            role,
            vps_id,
            created_by: actor.to_string(),
            created_at: from_ms(now),
            last_used_at: None,
            expires_at: expires.map(from_ms),
            revoked_at: None,
        };
        record(
            &mut **tx,
            Record {
                actor,
                action: "api_key.create",
                resource_type: "api_key",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&key),
        )
        .await?;
        Ok((key, s))
    }

    /// Loads every usable key and every live VPS into memory, so that after a restart the
    /// agent hot path does not fall back to one query per agent.
    pub async fn warm_caches(&self) -> Result<(usize, usize)> {
        use futures_util::TryStreamExt;
        let now = now_ms();
        let mut keys = 0;
        let mut rows = sqlx::query(dynsql!(
            "SELECT {KEY_COLS} FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
        ))
        .bind(now)
        .fetch(&self.pools.read);
        while let Some(row) = rows.try_next().await? {
            let k = api_key_from_row(&row)?;
            self.keys.remember(&k, row.try_get("key_hash")?);
            keys += 1;
        }
        drop(rows);
        let mut vps = 0;
        let mut rows = sqlx::query(dynsql!(
            "SELECT {} FROM vps WHERE deleted_at IS NULL",
            crate::fleet::HOT_COLS
        ))
        .fetch(&self.pools.read);
        while let Some(row) = rows.try_next().await? {
            let (id, hot, _) = crate::fleet::hot_from_row(&row)?;
            self.fleet.put(id, hot);
            vps += 1;
        }
        Ok((keys, vps))
    }

    /// Lists API keys, newest first.
    pub async fn list_api_keys(&self, limit: i64, offset: i64) -> Result<List<ApiKey>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(dynsql!(
            "SELECT {KEY_COLS} FROM api_keys ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.read)
        .await?;
        let items = rows.iter().map(api_key_from_row).collect::<Result<_>>()?;
        Ok(List { items, total })
    }

    /// Revokes an API key (idempotent). A key cannot revoke itself, so an admin cannot lock
    /// the last door by accident.
    pub async fn revoke_api_key(&self, actor: &Principal, id: Uuid) -> Result<ApiKey> {
        if actor.key_id == id {
            return Err(Error::Conflict(
                "a key cannot revoke itself; use another admin key".into(),
            ));
        }
        let mut tx = self.pools.write.begin().await?;
        let row = sqlx::query(dynsql!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no API key with id {id}")))?;
        let before = api_key_from_row(&row)?;
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let now = now_ms();
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let after = ApiKey {
            revoked_at: Some(from_ms(now)),
            ..before.clone()
        };
        record(
            &mut *tx,
            Record {
                actor: &actor.actor(),
                action: "api_key.revoke",
                resource_type: "api_key",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        self.keys.mark_revoked(&after.prefix, now);
        Ok(after)
    }

    /// Resolves what an enrollment token's presets and binding name: the provider's id, the
    /// purpose, the bound VPS (which must be live and not retired).
    async fn resolve_token_refs(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        c: &EnrollmentTokenCreate,
    ) -> Result<(Option<String>, Option<(Uuid, String)>)> {
        if let Some(purpose) = &c.purpose
            && !self.purpose_exists(&mut **tx, purpose).await?
        {
            return Err(Error::invalid(
                "purpose",
                format!("no purpose named {purpose:?}"),
            ));
        }
        let provider_id = match &c.provider {
            None => None,
            Some(provider) => Some(
                self.provider_id_by_name(&mut **tx, provider)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid("provider", format!("no provider named {provider:?}"))
                    })?,
            ),
        };
        let bound = match c.vps_id {
            None => None,
            Some(id) => {
                let row = sqlx::query("SELECT hostname, status, deleted_at FROM vps WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| Error::invalid("vps_id", format!("no VPS with id {id}")))?;
                let hostname: String = row.try_get("hostname")?;
                let status: String = row.try_get("status")?;
                if row.try_get::<Option<i64>, _>("deleted_at")?.is_some() {
                    return Err(Error::Conflict(format!(
                        "VPS {hostname} ({id}) is deleted; restore it before re-enrolling it"
                    )));
                }
                if status == sigma_types::VpsStatus::Retired.as_str() {
                    return Err(Error::Conflict(format!(
                        "VPS {hostname} ({id}) is retired; re-commission it (status provisioning) \
                         before re-enrolling it"
                    )));
                }
                Some((id, hostname))
            }
        };
        Ok((provider_id, bound))
    }

    /// Issues an enrollment token. Presets are stored as references (a provider by id), so
    /// renaming a provider keeps its tokens working.
    pub async fn create_enrollment_token(
        &self,
        actor: &str,
        c: &EnrollmentTokenCreate,
    ) -> Result<EnrollmentTokenCreated> {
        self.create_enrollment_token_with(actor, c, None).await
    }

    /// [`Store::create_enrollment_token`] with a contract preset (checked by the caller) for
    /// the VPS that enroll with it.
    pub async fn create_enrollment_token_with(
        &self,
        actor: &str,
        c: &EnrollmentTokenCreate,
        contract: Option<&sigma_types::VpsContract>,
    ) -> Result<EnrollmentTokenCreated> {
        let presets = EnrollmentPresets {
            purpose: c.purpose.clone(),
            provider: c.provider.clone(),
            country: c.country.clone(),
            tags: c.tags.clone(),
            contract: contract.cloned(),
        };
        let mut tx = self.pools.write.begin().await?;
        let (provider_id, bound) = self.resolve_token_refs(&mut tx, c).await?;
        let s = secret::generate(secret::ENROLLMENT_KIND)?;
        let id = Uuid::new_v4();
        let now = now_ms();
        let name = match (&c.name, &bound) {
            // A reinstall token says what it is for when listed.
            (None, Some((_, host))) => format!("reinstall {host}"),
            (n, _) => n.clone().unwrap_or_default(),
        };
        let token = EnrollmentToken {
            id,
            prefix: s.prefix.clone(),
            name,
            presets,
            vps_id: c.vps_id,
            max_uses: c.max_uses,
            uses: 0,
            created_by: actor.to_string(),
            created_at: from_ms(now),
            expires_at: from_ms(now + c.ttl_seconds * 1000),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, prefix, token_hash, name, presets, max_uses, created_by, \
             created_at, expires_at, provider_id, purpose, vps_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(id.to_string())
        .bind(s.prefix)
        .bind(s.hash)
        .bind(token.name.clone())
        .bind(serde_json::to_string(&token.presets).unwrap_or_else(|_| "{}".into()))
        .bind(c.max_uses)
        .bind(actor.to_string())
        .bind(now)
        .bind(now + c.ttl_seconds * 1000)
        .bind(provider_id)
        .bind(c.purpose.clone())
        .bind(c.vps_id.map(|v| v.to_string()))
        .execute(&mut *tx)
        .await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "enrollment_token.create",
                resource_type: "enrollment_token",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&token),
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollmentTokenCreated {
            token: s.plaintext,
            enrollment_token: token,
        })
    }

    /// Lists enrollment tokens, newest first.
    pub async fn list_enrollment_tokens(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<List<EnrollmentToken>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM enrollment_tokens")
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(dynsql!(
            "{TOKEN_SELECT} ORDER BY t.created_at DESC, t.id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.read)
        .await?;
        let items = rows.iter().map(token_from_row).collect::<Result<_>>()?;
        Ok(List { items, total })
    }

    /// Revokes an enrollment token (idempotent).
    pub async fn revoke_enrollment_token(&self, actor: &str, id: Uuid) -> Result<EnrollmentToken> {
        let mut tx = self.pools.write.begin().await?;
        let row = sqlx::query(dynsql!("{TOKEN_SELECT} WHERE t.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no enrollment token with id {id}")))?;
        let before = token_from_row(&row)?;
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let now = now_ms();
        sqlx::query("UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let after = EnrollmentToken {
            revoked_at: Some(from_ms(now)),
            ..before.clone()
        };
        record(
            &mut *tx,
            Record {
                actor,
                action: "enrollment_token.revoke",
                resource_type: "enrollment_token",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Before a provider or purpose is deleted: revokes the live tokens whose preset refers to
    /// it (matched exactly, by reference — the same on both databases) and drops the
    /// reference, so the row can go. Their presets snapshot keeps the name it had.
    pub(crate) async fn revoke_tokens_referring(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        actor: &str,
        column: TokenRef,
        value: &str,
    ) -> Result<()> {
        let col = column.column();
        let rows = sqlx::query(dynsql!(
            "{TOKEN_SELECT} WHERE t.{col} = $1 AND t.revoked_at IS NULL"
        ))
        .bind(value.to_string())
        .fetch_all(&mut **tx)
        .await?;
        let now = now_ms();
        for row in &rows {
            let before = token_from_row(row)?;
            sqlx::query("UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2")
                .bind(now)
                .bind(before.id.to_string())
                .execute(&mut **tx)
                .await?;
            let after = EnrollmentToken {
                revoked_at: Some(from_ms(now)),
                ..before.clone()
            };
            record(
                &mut **tx,
                Record {
                    actor,
                    action: "enrollment_token.revoke",
                    resource_type: "enrollment_token",
                    resource_id: before.id.to_string(),
                },
                Some(&before),
                Some(&after),
            )
            .await?;
        }
        sqlx::query(dynsql!(
            "UPDATE enrollment_tokens SET {col} = NULL WHERE {col} = $1"
        ))
        .bind(value.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Checks, without taking a use, that `secret_text` is a live enrollment token with a use
    /// left. `POST /api/agent/register` calls it before reading the body, so a caller without a
    /// usable token learns nothing about the body's schema (a 401 whatever it sent). The use
    /// itself is taken, and every check repeated, inside the enrollment's transaction.
    pub async fn check_enrollment_token(&self, secret_text: &str) -> Result<()> {
        let prefix = secret::prefix_of(secret_text);
        let row = sqlx::query(dynsql!("{TOKEN_SELECT} WHERE t.prefix = $1"))
            .bind(prefix)
            .fetch_optional(&self.pools.read)
            .await?;
        let (token, _) = usable_token(row, secret_text)?;
        if token.uses >= token.max_uses {
            return Err(used_up(&token));
        }
        Ok(())
    }

    /// Takes one use of an enrollment token inside `tx`, returning the token and what its
    /// presets refer to.
    pub(crate) async fn consume_enrollment_token(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        secret_text: &str,
    ) -> Result<(EnrollmentToken, TokenRefs)> {
        let prefix = secret::prefix_of(secret_text);
        let row = sqlx::query(dynsql!("{TOKEN_SELECT} WHERE t.prefix = $1"))
            .bind(prefix.clone())
            .fetch_optional(&mut **tx)
            .await?;
        let (token, refs) = usable_token(row, secret_text)?;
        let taken = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = $1 AND uses < max_uses AND revoked_at IS NULL",
        )
        .bind(token.id.to_string())
        .execute(&mut **tx)
        .await?;
        if taken.rows_affected() != 1 {
            return Err(used_up(&token));
        }
        if let Some(stale) = &refs.stale {
            // The token's own preset is at fault, not anything the agent sent.
            return Err(Error::Conflict(format!(
                "enrollment token {prefix}'s {stale} designates nothing any more (deleted); \
                 an operator must issue a new token"
            )));
        }
        Ok((token, refs))
    }
}

/// The token a row holds, if `secret_text` matches it and it is neither revoked nor expired.
fn usable_token(row: Option<AnyRow>, secret_text: &str) -> Result<(EnrollmentToken, TokenRefs)> {
    let row = row.ok_or_else(|| Error::Unauthorized("unknown enrollment token".into()))?;
    let hash: String = row.try_get("token_hash")?;
    if !secret::matches(secret_text, &hash) {
        return Err(Error::Unauthorized("unknown enrollment token".into()));
    }
    let (token, refs) = token_and_refs(&row)?;
    if token.revoked_at.is_some() {
        return Err(Error::Unauthorized(format!(
            "enrollment token {} was revoked",
            token.prefix
        )));
    }
    if crate::db::to_ms(token.expires_at) <= now_ms() {
        return Err(Error::Unauthorized(format!(
            "enrollment token {} has expired",
            token.prefix
        )));
    }
    Ok((token, refs))
}

/// The refusal of a token with no use left.
fn used_up(token: &EnrollmentToken) -> Error {
    Error::Unauthorized(format!(
        "enrollment token {} has been used {} of {} times",
        token.prefix, token.max_uses, token.max_uses
    ))
}

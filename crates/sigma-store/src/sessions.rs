//! Console sessions: an API key exchanged for a server-side session (sigma-web's sign-in).
//!
//! The browser holds only a random session id in an HttpOnly cookie; the database holds its
//! SHA-256, the key it was opened with, a per-session CSRF token, and the idle and absolute
//! expiry. Every request re-reads the row joined with its API key, so revoking the key, signing
//! out, or an expiry takes effect at once on every replica. Sign-ins and sign-outs are written to
//! the audit log.

use std::time::Duration;

use sigma_types::Role;
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit::{Record, record};
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::{Principal, Store, secret};

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
        }
    }
}

/// A session just opened: the only time its id is known outside the browser.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session id for the cookie (64 hex digits).
    pub id: String,
    /// Who signed in.
    pub principal: Principal,
    /// When the session ends at the latest (Unix ms).
    pub expires_at: i64,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who it acts for (the role is the API key's current role).
    pub principal: Principal,
    /// The token every mutating form of this session carries.
    pub csrf_token: String,
    /// When it ends at the latest (Unix ms).
    pub expires_at: i64,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(self.csrf_token.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// `last_seen_at` is written at most this often per session: every page view would otherwise be
/// a write, and SQLite has one writer.
const TOUCH_RESOLUTION_MS: i64 = 60_000;

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

/// The short, non-secret name of a session in the audit log: the start of its id's hash.
fn audit_id(id_hash: &str) -> String {
    format!("session:{}", &id_hash[..12.min(id_hash.len())])
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens a session for an API key. Agent keys cannot sign in to the console.
    pub async fn create_session(
        &self,
        secret_text: &str,
        limits: SessionLimits,
    ) -> Result<NewSession> {
        let principal = self.authenticate(secret_text).await?;
        if principal.role == Role::Agent {
            return Err(Error::Forbidden(
                "an agent key cannot sign in to the console".into(),
            ));
        }
        let id = random_hex(32)?;
        let id_hash = secret::hash(&id);
        let csrf = random_hex(32)?;
        let now = now_ms();
        let expires_at = now.saturating_add(ms(limits.absolute));
        let mut tx = self.pools.write.begin().await?;
        // Expired rows are of no use to anyone; dropping them here keeps the table small
        // without a background task.
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, key_id, csrf_token, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(id_hash.clone())
        .bind(principal.key_id.to_string())
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        record(
            &mut *tx,
            Record {
                actor: &principal.actor(),
                action: "session.create",
                resource_type: "session",
                resource_id: audit_id(&id_hash),
            },
            None::<&()>,
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        Ok(NewSession {
            id,
            principal,
            expires_at,
        })
    }

    /// The live session with this id, or `Unauthorized` saying why there is none.
    pub async fn session(&self, id: &str, limits: SessionLimits) -> Result<Session> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Unauthorized("not signed in".into()));
        }
        let id_hash = secret::hash(id);
        let row = sqlx::query(
            "SELECT s.csrf_token, s.last_seen_at, s.expires_at, s.revoked_at, \
             k.id AS key_id, k.prefix, k.role, k.vps_id, k.expires_at AS key_expires_at, \
             k.revoked_at AS key_revoked_at \
             FROM web_sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.id_hash = $1",
        )
        .bind(id_hash.clone())
        .fetch_optional(&self.pools.read)
        .await?
        .ok_or_else(|| Error::Unauthorized("not signed in".into()))?;
        let now = now_ms();
        let last_seen: i64 = row.try_get("last_seen_at")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(Error::Unauthorized("signed out".into()));
        }
        if expires_at <= now || last_seen.saturating_add(ms(limits.idle)) <= now {
            return Err(Error::Unauthorized("the session has expired".into()));
        }
        if row.try_get::<Option<i64>, _>("key_revoked_at")?.is_some()
            || row
                .try_get::<Option<i64>, _>("key_expires_at")?
                .is_some_and(|e| e <= now)
        {
            return Err(Error::Unauthorized(
                "the API key of this session was revoked or has expired".into(),
            ));
        }
        let role: String = row.try_get("role")?;
        let key_id: String = row.try_get("key_id")?;
        let vps_id: Option<String> = row.try_get("vps_id")?;
        let principal = Principal {
            key_id: Uuid::parse_str(&key_id)
                .map_err(|_| Error::Corrupt(format!("key id {key_id:?}")))?,
            prefix: row.try_get("prefix")?,
            role: Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("role {role:?}")))?,
            vps_id: vps_id.and_then(|v| Uuid::parse_str(&v).ok()),
        };
        if now - last_seen >= TOUCH_RESOLUTION_MS {
            sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE id_hash = $2")
                .bind(now)
                .bind(id_hash)
                .execute(&self.pools.write)
                .await?;
        }
        Ok(Session {
            principal,
            csrf_token: row.try_get("csrf_token")?,
            expires_at,
        })
    }

    /// Ends a session (sign-out). Ending one that is already over is not an error.
    pub async fn end_session(&self, id: &str) -> Result<()> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        let id_hash = secret::hash(id);
        let mut tx = self.pools.write.begin().await?;
        let row = sqlx::query(
            "SELECT k.prefix FROM web_sessions s JOIN api_keys k ON k.id = s.key_id \
             WHERE s.id_hash = $1 AND s.revoked_at IS NULL",
        )
        .bind(id_hash.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let prefix: String = row.try_get("prefix")?;
        sqlx::query("UPDATE web_sessions SET revoked_at = $1 WHERE id_hash = $2")
            .bind(now_ms())
            .bind(id_hash.clone())
            .execute(&mut *tx)
            .await?;
        record(
            &mut *tx,
            Record {
                actor: &format!("key:{prefix}"),
                action: "session.delete",
                resource_type: "session",
                resource_id: audit_id(&id_hash),
            },
            None::<&()>,
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

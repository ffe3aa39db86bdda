//! API keys and enrollment tokens.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MAX_NAME_LEN, Role, normalize_tags, opt};
use crate::validate::{self as v, FieldErrors, Normalize};

/// An API key as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Stable id.
    pub id: Uuid,
    /// First characters of the key: enough to recognise it, not to use it.
    pub prefix: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The one VPS an agent key acts for.
    pub vps_id: Option<Uuid>,
    /// Who created it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    /// Last used at (updated at most once a minute).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// Expires at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Revoked at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Longest lifetime of a key or an enrollment token: ten years.
pub const MAX_TTL_SECONDS: i64 = 10 * 366 * 24 * 3600;

/// Creates an API key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For `agent` keys: the VPS it acts for (required for them, refused for other roles).
    #[serde(default)]
    pub vps_id: Option<Uuid>,
    /// Lifetime in seconds; none means it does not expire.
    #[serde(default)]
    #[schema(minimum = 60, maximum = 316_224_000)]
    pub ttl_seconds: Option<i64>,
}

impl Normalize for ApiKeyCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = e.check("name", v::name(&self.name, MAX_NAME_LEN));
        match (self.role, self.vps_id) {
            (Role::Agent, None) => e.add("vps_id", "an agent key must be bound to a VPS"),
            (r, Some(_)) if r != Role::Agent => {
                e.add("vps_id", "only agent keys are bound to a VPS")
            }
            _ => {}
        }
        if let Some(t) = self.ttl_seconds
            && !(60..=MAX_TTL_SECONDS).contains(&t)
        {
            e.add("ttl_seconds", format!("must be 60-{MAX_TTL_SECONDS}"));
        }
        e.into_result()?;
        Ok(ApiKeyCreate {
            name: name.unwrap_or_default(),
            ..self
        })
    }
}

/// A new API key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key itself; send it as `Authorization: Bearer <key>`.
    pub key: String,
    /// The key as it will be listed.
    pub api_key: ApiKey,
}

/// Values applied to VPS that enroll with a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentPresets {
    /// Purpose of new VPS.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Provider (name) of new VPS.
    #[serde(default)]
    pub provider: Option<String>,
    /// Country of new VPS.
    #[serde(default)]
    pub country: Option<String>,
    /// Tags of new VPS.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Contract terms and specs of new VPS (a batch bought on one offer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<crate::VpsContract>,
}

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    /// Stable id.
    pub id: Uuid,
    /// First characters of the token.
    pub prefix: String,
    /// What it is for.
    pub name: String,
    /// Presets applied to VPS that enroll with it. A provider preset follows its provider
    /// (shown under its current name); the names of a deleted provider or purpose stay as they
    /// were, on tokens that deleting it revoked.
    pub presets: EnrollmentPresets,
    /// The one VPS this token may re-enroll (a reinstall token; see `docs/security.md`).
    /// Such a token has no presets, serves one enrollment, and enrolls no other hostname.
    #[serde(default)]
    pub vps_id: Option<Uuid>,
    /// How many enrollments it allows.
    pub max_uses: i64,
    /// How many it has served.
    pub uses: i64,
    /// Who created it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Expires at.
    pub expires_at: OffsetDateTime,
    /// Revoked at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

fn default_token_ttl() -> i64 {
    24 * 3600
}

fn default_max_uses() -> i64 {
    1
}

/// Most enrollments one token may serve.
pub const MAX_TOKEN_USES: i64 = 1_000_000;

/// Creates an enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenCreate {
    /// What it is for.
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds (default one day; a token bound to a VPS lives at most one day).
    #[serde(default = "default_token_ttl")]
    #[schema(minimum = 60, maximum = 316_224_000)]
    pub ttl_seconds: i64,
    /// How many VPS may enroll with it (default 1).
    #[serde(default = "default_max_uses")]
    pub max_uses: i64,
    /// Presets for VPS that enroll with it.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Provider preset (name; must exist).
    #[serde(default)]
    pub provider: Option<String>,
    /// Country preset.
    #[serde(default)]
    pub country: Option<String>,
    /// Tags preset.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Binds the token to this VPS: it may only re-enroll that VPS (a reinstall of its
    /// agent), which revokes the VPS's agent key. Single use (`max_uses` 1), at most
    /// [`MAX_BOUND_TOKEN_TTL_SECONDS`], and without presets.
    #[serde(default)]
    pub vps_id: Option<Uuid>,
}

/// Longest lifetime of a token bound to a VPS: one day.
pub const MAX_BOUND_TOKEN_TTL_SECONDS: i64 = 24 * 3600;

impl Normalize for EnrollmentTokenCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = opt(self.name, "name", &mut e, |s| v::name(s, MAX_NAME_LEN));
        if !(60..=MAX_TTL_SECONDS).contains(&self.ttl_seconds) {
            e.add("ttl_seconds", format!("must be 60-{MAX_TTL_SECONDS}"));
        }
        if !(1..=MAX_TOKEN_USES).contains(&self.max_uses) {
            e.add("max_uses", format!("must be 1-{MAX_TOKEN_USES}"));
        }
        let purpose = opt(self.purpose, "purpose", &mut e, v::dns_label);
        let provider = opt(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let country = opt(self.country, "country", &mut e, v::country);
        let tags = normalize_tags(self.tags, "tags", &mut e);
        if self.vps_id.is_some() {
            // A bound token re-enrolls an existing VPS as it is: presets would not apply, and
            // a reinstall credential must be single-use and short-lived.
            let why = "a token bound to a VPS (vps_id) re-enrolls that VPS as it is; presets do not apply";
            if purpose.is_some() {
                e.add("purpose", why);
            }
            if provider.is_some() {
                e.add("provider", why);
            }
            if country.is_some() {
                e.add("country", why);
            }
            if !tags.is_empty() {
                e.add("tags", why);
            }
            if self.max_uses != 1 {
                e.add(
                    "max_uses",
                    "a token bound to a VPS (vps_id) serves one enrollment",
                );
            }
            if self.ttl_seconds > MAX_BOUND_TOKEN_TTL_SECONDS {
                e.add(
                    "ttl_seconds",
                    format!(
                        "a token bound to a VPS (vps_id) lives at most {MAX_BOUND_TOKEN_TTL_SECONDS} seconds"
                    ),
                );
            }
        }
        e.into_result()?;
        Ok(EnrollmentTokenCreate {
            name: Some(name.unwrap_or_else(|| "enrollment".into())),
            purpose,
            provider,
            country,
            tags,
            ..self
        })
    }
}

/// A new enrollment token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenCreated {
    /// The token; give it to the agent as `SIGMA_ENROLLMENT_TOKEN`.
    pub token: String,
    /// The token as it will be listed.
    pub enrollment_token: EnrollmentToken,
}

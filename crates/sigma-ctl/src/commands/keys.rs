//! `sigmactl keys …` and `sigmactl enroll …`

use serde_json::json;
use sigma_types::{
    ApiKey, ApiKeyCreate, ApiKeyCreated, EnrollmentToken, EnrollmentTokenCreate,
    EnrollmentTokenCreated,
};
use time::OffsetDateTime;

use super::Ctx;
use super::resolve::{self, Among};
use crate::cli::{EnrollCommand, EnrollCreateArgs, KeyCommand};
use crate::error::{Error, Result};
use crate::install;
use crate::output::{self, Cell, Details, Paint};

fn state(
    revoked: Option<OffsetDateTime>,
    expires: Option<OffsetDateTime>,
    used_up: bool,
    now: OffsetDateTime,
) -> Cell {
    if revoked.is_some() {
        Cell::painted("revoked", Paint::Red)
    } else if expires.is_some_and(|e| e <= now) {
        Cell::painted("expired", Paint::Dim)
    } else if used_up {
        Cell::painted("used up", Paint::Dim)
    } else {
        Cell::painted("active", Paint::Green)
    }
}

fn opt_time(t: Option<OffsetDateTime>, now: OffsetDateTime, none: &str) -> Cell {
    match t {
        Some(t) => Cell::new(output::ago(t, now)),
        None => Cell::painted(none, Paint::Dim),
    }
}

fn key_row(k: &ApiKey, now: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(k.prefix.clone()),
        Cell::new(k.name.clone()),
        Cell::new(k.role.as_str()),
        state(k.revoked_at, k.expires_at, false, now),
        Cell::opt(k.vps_id.map(|v| v.to_string())),
        Cell::new(output::ago(k.created_at, now)),
        opt_time(k.last_used_at, now, "never"),
        opt_time(k.expires_at, now, "never"),
    ]
}

fn key_details(k: &ApiKey, now: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("ID", k.id.to_string())
        .field("Prefix", k.prefix.clone())
        .field("Name", k.name.clone())
        .field("Role", k.role.as_str())
        .field("State", state(k.revoked_at, k.expires_at, false, now))
        .field("VPS", Cell::opt(k.vps_id.map(|v| v.to_string())))
        .field("Created by", k.created_by.clone())
        .field("Created", output::time(k.created_at))
        .field(
            "Last used",
            Cell::opt(k.last_used_at.map(|t| output::time_ago(t, now))),
        )
        .field(
            "Expires",
            Cell::opt(k.expires_at.map(|t| output::time_ago(t, now))),
        );
    if let Some(t) = k.revoked_at {
        d.field("Revoked", output::time(t));
    }
    d
}

/// Runs `sigmactl keys …`.
pub async fn keys(ctx: &mut Ctx<'_>, cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create {
            name,
            role,
            vps,
            ttl,
        } => {
            let vps_id = match vps {
                Some(v) => Some(resolve::vps(&ctx.client, &v, Among::Live).await?),
                None => None,
            };
            let body = ApiKeyCreate {
                name,
                role,
                vps_id,
                ttl_seconds: ttl,
            };
            let ans = ctx.client.post(&["api", "api-keys"], &body).await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let c: ApiKeyCreated = ans.parse()?;
            let head = ctx.out.paint(
                "API key (shown once; store it now, e.g. in a file for SIGMA_API_KEY_FILE):",
                Paint::Bold,
            );
            ctx.out.line(&head)?;
            ctx.out.line(&c.key)?;
            ctx.out.line("")?;
            let d = key_details(&c.api_key, ctx.now);
            ctx.out.details(&d)
        }
        KeyCommand::List(page) => {
            let ans = ctx.fetch_list(&["api", "api-keys"], vec![], &page).await?;
            ctx.list(
                &ans,
                "API keys",
                &page,
                &[
                    "PREFIX",
                    "NAME",
                    "ROLE",
                    "STATE",
                    "VPS",
                    "CREATED",
                    "LAST USED",
                    "EXPIRES",
                ],
                key_row,
            )
        }
        KeyCommand::Revoke { key } => {
            let id =
                resolve::by_prefix::<ApiKey>(&ctx.client, &["api", "api-keys"], &key, "API key")
                    .await?;
            let ans = ctx
                .client
                .post_empty(&["api", "api-keys", &id.to_string(), "revoke"], &[])
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let k: ApiKey = ans.parse()?;
            ctx.out
                .line(&format!("API key {} ({}) revoked", k.prefix, k.name))
        }
    }
}

fn presets(t: &EnrollmentToken) -> String {
    let p = &t.presets;
    let mut parts = Vec::new();
    for (k, v) in [
        ("purpose", &p.purpose),
        ("provider", &p.provider),
        ("country", &p.country),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    if !p.tags.is_empty() {
        parts.push(format!("tags={}", p.tags.join(",")));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn token_row(t: &EnrollmentToken, now: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(t.prefix.clone()),
        Cell::new(t.name.clone()),
        state(t.revoked_at, Some(t.expires_at), t.uses >= t.max_uses, now),
        Cell::new(format!("{}/{}", t.uses, t.max_uses)),
        Cell::new(presets(t)),
        Cell::new(output::ago(t.expires_at, now)),
    ]
}

/// The details of an enrollment token, as `enroll create` and `vps reenroll` print them.
pub(crate) fn token_details(t: &EnrollmentToken, now: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("ID", t.id.to_string())
        .field("Prefix", t.prefix.clone())
        .field("Name", t.name.clone())
        .field(
            "State",
            state(t.revoked_at, Some(t.expires_at), t.uses >= t.max_uses, now),
        )
        .field("Uses", format!("{} of {}", t.uses, t.max_uses))
        .field("Presets", presets(t));
    if let Some(v) = t.vps_id {
        d.field("Bound to VPS", v.to_string());
    }
    d.field("Created by", t.created_by.clone())
        .field("Created", output::time(t.created_at))
        .field("Expires", output::time_ago(t.expires_at, now));
    if let Some(r) = t.revoked_at {
        d.field("Revoked", output::time(r));
    }
    d
}

fn token_body(a: EnrollCreateArgs) -> Result<EnrollmentTokenCreate> {
    // Start from the type's own defaults (one use, one day) and set what was given.
    let mut c: EnrollmentTokenCreate =
        serde_json::from_value(json!({})).map_err(|e| Error::Usage(e.to_string()))?;
    c.name = a.name;
    if let Some(t) = a.ttl {
        c.ttl_seconds = t;
    }
    if let Some(m) = a.max_uses {
        c.max_uses = m;
    }
    c.purpose = a.purpose;
    c.provider = a.provider;
    c.country = a.country;
    c.tags = a.tags;
    Ok(c)
}

/// The token's contract preset from the contract flags (none given: no preset). Values go as
/// typed, so sigma-api's checks and field names (`contract.<field>`) apply.
fn enroll_contract(a: &crate::cli::ContractEditArgs) -> Result<Option<serde_json::Value>> {
    if let Some(f) = a.clear_contract.first() {
        return Err(Error::Usage(format!(
            "--clear-contract {f}: a new token has no contract to clear"
        )));
    }
    crate::commands::contract::patch(a)
}

/// Runs `sigmactl enroll …`.
pub async fn enroll(ctx: &mut Ctx<'_>, cmd: EnrollCommand) -> Result<()> {
    match cmd {
        EnrollCommand::Create(a) => {
            let agent_url = a
                .agent_api_url
                .clone()
                .unwrap_or_else(|| ctx.settings.api_url.clone());
            let contract = enroll_contract(&a.contract)?;
            let body = crate::commands::contract::with_patch(
                serde_json::to_value(token_body(a)?).map_err(|e| Error::Usage(e.to_string()))?,
                contract,
            );
            let ans = ctx
                .client
                .post(&["api", "enrollment-tokens"], &body)
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let c: EnrollmentTokenCreated = ans.parse()?;
            let head = ctx.out.paint("Enrollment token (shown once):", Paint::Bold);
            ctx.out.line(&head)?;
            ctx.out.line(&c.token)?;
            ctx.out.line("")?;
            let head = ctx.out.paint("Install sigma-agent on a VPS:", Paint::Bold);
            ctx.out.line(&head)?;
            ctx.out
                .line(&install::install_command(&agent_url, &c.token))?;
            ctx.out.line("")?;
            let d = token_details(&c.enrollment_token, ctx.now);
            ctx.out.details(&d)
        }
        EnrollCommand::List(page) => {
            let ans = ctx
                .fetch_list(&["api", "enrollment-tokens"], vec![], &page)
                .await?;
            ctx.list(
                &ans,
                "enrollment tokens",
                &page,
                &["PREFIX", "NAME", "STATE", "USES", "PRESETS", "EXPIRES"],
                token_row,
            )
        }
        EnrollCommand::Revoke { token } => {
            let id = resolve::by_prefix::<EnrollmentToken>(
                &ctx.client,
                &["api", "enrollment-tokens"],
                &token,
                "enrollment token",
            )
            .await?;
            let ans = ctx
                .client
                .post_empty(
                    &["api", "enrollment-tokens", &id.to_string(), "revoke"],
                    &[],
                )
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let t: EnrollmentToken = ans.parse()?;
            ctx.out.line(&format!(
                "enrollment token {} ({}) revoked",
                t.prefix, t.name
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_in_order_of_precedence() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let past = Some(now - time::Duration::hours(1));
        let future = Some(now + time::Duration::hours(1));
        assert_eq!(state(past, future, false, now).text, "revoked");
        assert_eq!(state(None, past, false, now).text, "expired");
        assert_eq!(state(None, future, true, now).text, "used up");
        assert_eq!(state(None, None, false, now).text, "active");
    }

    #[test]
    fn token_bodies_keep_the_api_defaults() {
        let a = EnrollCreateArgs {
            name: None,
            ttl: None,
            max_uses: Some(5),
            purpose: Some("xrayr".into()),
            provider: None,
            country: None,
            tags: vec![],
            agent_api_url: None,
            contract: Box::default(),
        };
        let b = token_body(a).unwrap();
        assert_eq!(b.ttl_seconds, 86_400);
        assert_eq!(b.max_uses, 5);
        assert_eq!(b.purpose.as_deref(), Some("xrayr"));
    }

    #[test]
    fn contract_flags_become_the_tokens_preset() {
        let none = crate::cli::ContractEditArgs::default();
        assert_eq!(enroll_contract(&none).unwrap(), None);
        let some = crate::cli::ContractEditArgs {
            cost: Some("4.99".into()),
            currency: Some("EUR".into()),
            auto_renew: Some(true),
            ..Default::default()
        };
        assert_eq!(
            enroll_contract(&some).unwrap(),
            Some(json!({"cost": "4.99", "currency": "EUR", "auto_renew": true}))
        );
        let clear = crate::cli::ContractEditArgs {
            clear_contract: vec!["cost".into()],
            ..Default::default()
        };
        assert!(enroll_contract(&clear).is_err());
    }
}

//! The audit log and its query.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::{opt, page};
use crate::validate::{self as v, FieldErrors};

/// One recorded mutation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// When.
    pub at: OffsetDateTime,
    /// Who: `key:<prefix>` for a person's key, `agent:<hostname>` for an agent,
    /// `enroll:<prefix>` for an enrollment, `system` for sigma itself.
    pub actor: String,
    /// What (`vps.create`, `vps.retire`, `api_key.revoke`, …).
    pub action: String,
    /// Kind of resource (`vps`, `provider`, …).
    pub resource_type: String,
    /// Its id or name.
    pub resource_id: String,
    /// The resource before.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The resource after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Filters and page of `GET /api/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this kind of resource.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only entries before this time (RFC 3339).
    pub until: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// A checked [`AuditQuery`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this kind of resource.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// At or after.
    pub since: Option<OffsetDateTime>,
    /// Before.
    pub until: Option<OffsetDateTime>,
    /// Page size.
    pub limit: i64,
    /// Items to skip.
    pub offset: i64,
}

fn rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{s:?} is not an RFC 3339 time"))
}

impl AuditQuery {
    /// Checks the query.
    pub fn filter(self) -> Result<AuditFilter, FieldErrors> {
        let mut e = FieldErrors::new();
        let mut short = |f: &str, v: Option<String>| v.and_then(|s| e.check(f, v::name(&s, 256)));
        let actor = short("actor", self.actor);
        let action = short("action", self.action);
        let resource_type = short("resource_type", self.resource_type);
        let resource_id = short("resource_id", self.resource_id);
        let since = opt(self.since, "since", &mut e, rfc3339);
        let until = opt(self.until, "until", &mut e, rfc3339);
        let (limit, offset) = page(self.limit, self.offset, &mut e);
        e.into_result()?;
        Ok(AuditFilter {
            actor,
            action,
            resource_type,
            resource_id,
            since,
            until,
            limit,
            offset,
        })
    }
}

//! `sigmactl audit`: the audit log, newest first.

use sigma_types::AuditEntry;
use time::OffsetDateTime;

use super::Ctx;
use crate::cli::AuditArgs;
use crate::error::Result;
use crate::output::{self, Cell};

fn row(e: &AuditEntry, now: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(e.id.to_string()),
        Cell::new(format!(
            "{} ({})",
            output::time(e.at),
            output::ago(e.at, now)
        )),
        Cell::new(e.actor.clone()),
        Cell::new(e.action.clone()),
        Cell::new(format!("{}/{}", e.resource_type, e.resource_id)),
    ]
}

/// The query of `GET /api/audit` for these filters.
pub fn query(a: &AuditArgs) -> Vec<(&'static str, String)> {
    [
        ("actor", &a.actor),
        ("action", &a.action),
        ("resource_type", &a.resource_type),
        ("resource_id", &a.resource_id),
        ("since", &a.since),
        ("until", &a.until),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

/// Runs `sigmactl audit`.
pub async fn run(ctx: &mut Ctx<'_>, a: AuditArgs) -> Result<()> {
    let ans = ctx
        .fetch_list(&["api", "audit"], query(&a), &a.page)
        .await?;
    ctx.list(
        &ans,
        "audit entries",
        &a.page,
        &["ID", "AT", "ACTOR", "ACTION", "RESOURCE"],
        row,
    )
}

//! The audit log: every mutation, with who made it and the resource before and after.

use serde::Serialize;
use sigma_types::{AuditEntry, AuditFilter, List};
use sqlx::{Any, Row};

use crate::Store;
use crate::db::{Sql, from_ms, now_ms};
use crate::error::{Error, Result};

/// One mutation to record, written in the same transaction as the mutation itself.
pub(crate) struct Record<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: String,
}

fn json<T: Serialize>(v: Option<&T>) -> Option<String> {
    v.and_then(|v| serde_json::to_string(v).ok())
}

pub(crate) async fn record<'c, E, B, A>(
    exec: E,
    r: Record<'_>,
    before: Option<&B>,
    after: Option<&A>,
) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Any>,
    B: Serialize,
    A: Serialize,
{
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, resource_type, resource_id, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(r.actor.to_string())
    .bind(r.action.to_string())
    .bind(r.resource_type.to_string())
    .bind(r.resource_id)
    .bind(json(before))
    .bind(json(after))
    .execute(exec)
    .await?;
    Ok(())
}

fn parse_json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

impl Store {
    /// Lists audit entries, newest first.
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<List<AuditEntry>> {
        let mut filter = Sql::new(" WHERE 1 = 1");
        for (col, v) in [
            ("actor", &f.actor),
            ("action", &f.action),
            ("resource_type", &f.resource_type),
            ("resource_id", &f.resource_id),
        ] {
            if let Some(v) = v {
                filter.push(&format!(" AND {col} = ")).bind(v.as_str());
            }
        }
        if let Some(t) = f.since {
            filter.push(" AND at >= ").bind(crate::db::to_ms(t));
        }
        if let Some(t) = f.until {
            filter.push(" AND at < ").bind(crate::db::to_ms(t));
        }
        let mut count = Sql::new("SELECT COUNT(*) AS n FROM audit_log");
        count.push_sql(&filter);
        let total: i64 = count
            .query()
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        let mut q = Sql::new(
            "SELECT id, at, actor, action, resource_type, resource_id, before, after FROM audit_log",
        );
        q.push_sql(&filter);
        q.push(" ORDER BY id DESC LIMIT ")
            .bind(f.limit)
            .push(" OFFSET ")
            .bind(f.offset);
        let rows = q.query().fetch_all(&self.pools.read).await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: from_ms(r.try_get("at")?),
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    resource_type: r.try_get("resource_type")?,
                    resource_id: r.try_get("resource_id")?,
                    before: parse_json(r.try_get("before")?),
                    after: parse_json(r.try_get("after")?),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(List { items, total })
    }
}

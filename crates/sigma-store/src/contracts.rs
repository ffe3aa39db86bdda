//! Contract terms and rented specs of a VPS (issue 20): how they are stored and read back.

use sigma_types::{Amount, BillingCycle, Day, VpsContract};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::db::Sql;
use crate::error::{Error, Result};

fn day(r: &AnyRow, col: &str) -> Result<Option<Day>> {
    r.try_get::<Option<String>, _>(col)?
        .map(|s| Day::parse(&s).map_err(|e| Error::Corrupt(format!("vps {col}: {e}"))))
        .transpose()
}

/// The contract of a VPS row.
pub(crate) fn contract_from_row(r: &AnyRow) -> Result<VpsContract> {
    let cost = r
        .try_get::<Option<i64>, _>("cost_e4")?
        .map(|raw| {
            Amount::from_raw(raw).ok_or_else(|| Error::Corrupt(format!("vps cost_e4 {raw}")))
        })
        .transpose()?;
    let billing_cycle = r
        .try_get::<Option<String>, _>("billing_cycle")?
        .map(|s| {
            BillingCycle::parse(&s)
                .ok_or_else(|| Error::Corrupt(format!("vps billing_cycle {s:?}")))
        })
        .transpose()?;
    Ok(VpsContract {
        cost,
        currency: r.try_get("currency")?,
        billing_cycle,
        purchased_on: day(r, "purchased_on")?,
        expires_on: day(r, "expires_on")?,
        auto_renew: r.try_get::<i64, _>("auto_renew")? != 0,
        cpu_cores: r.try_get("cpu_cores")?,
        ram_mb: r.try_get("ram_mb")?,
        disk_gb: r.try_get("disk_gb")?,
        traffic_gb: r.try_get("traffic_gb")?,
        ssh_port: r.try_get("ssh_port")?,
        data_center: r.try_get("data_center")?,
    })
}

/// Writes the contract of VPS `id` inside `tx` (it must have been checked).
pub(crate) async fn write_contract(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
    c: &VpsContract,
) -> Result<()> {
    sqlx::query(
        "UPDATE vps SET cost_e4 = $1, currency = $2, billing_cycle = $3, purchased_on = $4, \
         expires_on = $5, auto_renew = $6, cpu_cores = $7, ram_mb = $8, disk_gb = $9, \
         traffic_gb = $10, ssh_port = $11, data_center = $12 WHERE id = $13",
    )
    .bind(c.cost.map(Amount::raw))
    .bind(c.currency.clone())
    .bind(c.billing_cycle.map(|b| b.as_str().to_string()))
    .bind(c.purchased_on.map(|d| d.to_string()))
    .bind(c.expires_on.map(|d| d.to_string()))
    .bind(i64::from(c.auto_renew))
    .bind(c.cpu_cores)
    .bind(c.ram_mb)
    .bind(c.disk_gb)
    .bind(c.traffic_gb)
    .bind(c.ssh_port)
    .bind(c.data_center.clone())
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The list filters on contract fields, appended to a `WHERE` clause.
pub(crate) fn filter(w: &mut Sql, q: &sigma_types::ContractFilter) {
    if let Some(days) = q.expires_within_days {
        let until = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
        w.push(" AND v.expires_on IS NOT NULL AND v.expires_on <= ")
            .bind(Day(until).to_string());
    }
    if let Some(c) = &q.currency {
        w.push(" AND v.currency = ").bind(c.as_str());
    }
    if let Some(a) = q.cost_min {
        w.push(" AND v.cost_e4 >= ").bind(a.raw());
    }
    if let Some(a) = q.cost_max {
        w.push(" AND v.cost_e4 <= ").bind(a.raw());
    }
}

//! Contract terms and rented specs of a VPS (issue 20): how they are stored and read back.

use sigma_types::costs::{CostRow, ExchangeRate};
use sigma_types::{Amount, BillingCycle, Day, Rate, VpsContract};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::db::{Sql, from_ms, now_ms};
use crate::error::{Error, Result, is_unique_violation};

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

fn rate_from_row(r: &AnyRow) -> Result<ExchangeRate> {
    let raw: i64 = r.try_get("rate_e8")?;
    Ok(ExchangeRate {
        from: r.try_get("from_currency")?,
        to: r.try_get("to_currency")?,
        rate: Rate::from_raw(raw).ok_or_else(|| Error::Corrupt(format!("rate_e8 {raw}")))?,
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

impl Store {
    async fn rate_in<'c, E>(&self, exec: E, from: &str, to: &str) -> Result<Option<ExchangeRate>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        sqlx::query(
            "SELECT from_currency, to_currency, rate_e8, updated_at FROM exchange_rates \
             WHERE from_currency = $1 AND to_currency = $2",
        )
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_optional(exec)
        .await?
        .as_ref()
        .map(rate_from_row)
        .transpose()
    }

    /// Every exchange rate, by pair.
    pub async fn list_exchange_rates(&self) -> Result<Vec<ExchangeRate>> {
        sqlx::query(
            "SELECT from_currency, to_currency, rate_e8, updated_at FROM exchange_rates \
             ORDER BY from_currency, to_currency",
        )
        .fetch_all(&self.pools.read)
        .await?
        .iter()
        .map(rate_from_row)
        .collect()
    }

    /// Sets the rate of a checked pair (creates or replaces it), audited.
    pub async fn set_exchange_rate(
        &self,
        actor: &str,
        from: &str,
        to: &str,
        rate: Rate,
    ) -> Result<ExchangeRate> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.rate_in(&mut *tx, from, to).await?;
        let now = now_ms();
        if before.is_some() {
            sqlx::query(
                "UPDATE exchange_rates SET rate_e8 = $1, updated_at = $2 \
                 WHERE from_currency = $3 AND to_currency = $4",
            )
            .bind(rate.raw())
            .bind(now)
            .bind(from.to_string())
            .bind(to.to_string())
            .execute(&mut *tx)
            .await?;
        } else {
            let res = sqlx::query(
                "INSERT INTO exchange_rates (from_currency, to_currency, rate_e8, updated_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(from.to_string())
            .bind(to.to_string())
            .bind(rate.raw())
            .bind(now)
            .execute(&mut *tx)
            .await;
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::Conflict(format!(
                        "the rate {from}→{to} was set concurrently; retry"
                    )));
                }
                r => r?,
            };
        }
        let after = self
            .rate_in(&mut *tx, from, to)
            .await?
            .ok_or_else(|| Error::Corrupt("exchange rate vanished".into()))?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "exchange_rate.set",
                resource_type: "exchange_rate",
                resource_id: format!("{from}/{to}"),
            },
            before.as_ref(),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Removes the rate of a pair, audited.
    pub async fn delete_exchange_rate(&self, actor: &str, from: &str, to: &str) -> Result<()> {
        let mut tx = self.pools.write.begin().await?;
        let before = self
            .rate_in(&mut *tx, from, to)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no exchange rate {from}→{to}")))?;
        sqlx::query("DELETE FROM exchange_rates WHERE from_currency = $1 AND to_currency = $2")
            .bind(from.to_string())
            .bind(to.to_string())
            .execute(&mut *tx)
            .await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "exchange_rate.delete",
                resource_type: "exchange_rate",
                resource_id: format!("{from}/{to}"),
            },
            Some(&before),
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cost facts of every priced VPS that is paid for (provisioning, active, retiring),
    /// and how many such VPS have no cost recorded.
    pub async fn cost_rows(&self) -> Result<(Vec<CostRow>, i64)> {
        let live = "v.deleted_at IS NULL AND v.status IN ('provisioning', 'active', 'retiring')";
        let rows = sqlx::query(dynsql!(
            "SELECT v.id, v.hostname, pr.name AS provider, v.purpose, v.country, v.cost_e4, \
             v.currency, v.billing_cycle FROM vps v LEFT JOIN providers pr ON pr.id = v.provider_id \
             WHERE {live} AND v.cost_e4 IS NOT NULL AND v.currency IS NOT NULL ORDER BY v.hostname"
        ))
        .fetch_all(&self.pools.read)
        .await?;
        let without: i64 = sqlx::query(dynsql!(
            "SELECT COUNT(*) AS n FROM vps v WHERE {live} AND (v.cost_e4 IS NULL OR v.currency IS NULL)"
        ))
        .fetch_one(&self.pools.read)
        .await?
        .try_get("n")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let c = contract_cost(r)?;
            out.push(CostRow {
                id: Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?,
                hostname: r.try_get("hostname")?,
                provider: r.try_get("provider")?,
                purpose: r.try_get("purpose")?,
                country: r.try_get("country")?,
                cost: c.0,
                currency: r.try_get("currency")?,
                billing_cycle: c.1,
            });
        }
        Ok((out, without))
    }
}

fn contract_cost(r: &AnyRow) -> Result<(Amount, Option<BillingCycle>)> {
    let raw: i64 = r.try_get("cost_e4")?;
    let cost = Amount::from_raw(raw).ok_or_else(|| Error::Corrupt(format!("vps cost_e4 {raw}")))?;
    let cycle = r
        .try_get::<Option<String>, _>("billing_cycle")?
        .map(|s| {
            BillingCycle::parse(&s).ok_or_else(|| Error::Corrupt(format!("billing_cycle {s:?}")))
        })
        .transpose()?;
    Ok((cost, cycle))
}

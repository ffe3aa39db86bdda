//! Contract terms of a VPS in sigmactl: `vps edit` flags, `vps list` columns, `vps expiring`.

use serde_json::{Map, Value};
use sigma_types::{Vps, VpsContract};
use time::OffsetDateTime;

use crate::cli::ContractEditArgs;
use crate::error::{Error, Result};
use crate::output::{Cell, Paint};

/// Contract fields `--clear-contract` accepts, with their JSON names.
const CLEARABLE: [(&str, &str); 12] = [
    ("cost", "cost"),
    ("currency", "currency"),
    ("billing-cycle", "billing_cycle"),
    ("purchased-on", "purchased_on"),
    ("expires-on", "expires_on"),
    ("auto-renew", "auto_renew"),
    ("cpu-cores", "cpu_cores"),
    ("ram-mb", "ram_mb"),
    ("disk-gb", "disk_gb"),
    ("traffic-gb", "traffic_gb"),
    ("ssh-port", "ssh_port"),
    ("data-center", "data_center"),
];

/// The `contract` member of a `PATCH /api/vps/{id}` body: the flags given, `null` for each
/// `--clear-contract`; `None` when no contract flag was given. Values go as typed, so
/// sigma-api's checks (and its field names) apply.
pub fn patch(a: &ContractEditArgs) -> Result<Option<Value>> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("cost", a.cost.clone().map(Value::from));
    put("currency", a.currency.clone().map(Value::from));
    put("billing_cycle", a.billing_cycle.clone().map(Value::from));
    put("purchased_on", a.purchased_on.clone().map(Value::from));
    put("expires_on", a.expires_on.clone().map(Value::from));
    put("auto_renew", a.auto_renew.map(Value::from));
    put("cpu_cores", a.cpu_cores.map(Value::from));
    put("ram_mb", a.ram_mb.map(Value::from));
    put("disk_gb", a.disk_gb.map(Value::from));
    put("traffic_gb", a.traffic_gb.map(Value::from));
    put("ssh_port", a.ssh_port.map(Value::from));
    put("data_center", a.data_center.clone().map(Value::from));
    for f in &a.clear_contract {
        let Some((_, key)) = CLEARABLE.iter().find(|(flag, key)| flag == f || key == f) else {
            return Err(Error::Usage(format!(
                "--clear-contract {f:?}: not a contract field (one of {})",
                CLEARABLE.map(|(f, _)| f).join(", ")
            )));
        };
        if m.contains_key(*key) {
            return Err(Error::Usage(format!(
                "--clear-contract {f} and a value for it were both given"
            )));
        }
        m.insert((*key).to_string(), Value::Null);
    }
    Ok((!m.is_empty()).then_some(Value::Object(m)))
}

/// Adds `contract` to a patch body.
pub fn with_patch(mut body: Value, contract: Option<Value>) -> Value {
    if let Some(c) = contract {
        body["contract"] = c;
    }
    body
}

/// `4.99 EUR/mo`, `120 USD/yr`; empty without a cost.
pub fn cost_text(c: &VpsContract) -> Option<String> {
    let cost = c.cost?;
    let per = match c.billing_cycle {
        Some(sigma_types::BillingCycle::Monthly) => "/mo",
        Some(sigma_types::BillingCycle::Quarterly) => "/qtr",
        Some(sigma_types::BillingCycle::Yearly) => "/yr",
        _ => "",
    };
    Some(format!(
        "{cost} {}{per}",
        c.currency.as_deref().unwrap_or("?")
    ))
}

/// Days from `now`'s date to the expiry date (negative once expired).
pub fn days_left(c: &VpsContract, now: OffsetDateTime) -> Option<i64> {
    c.expires_on.map(|d| (d.0 - now.date()).whole_days())
}

/// The expiry cell: the date, red when past or within 7 days and not auto-renewed.
pub fn expires_cell(c: &VpsContract, now: OffsetDateTime) -> Cell {
    let (Some(d), Some(left)) = (c.expires_on, days_left(c, now)) else {
        return Cell::opt(None::<String>);
    };
    let text = match left {
        l if l < 0 => format!("{d} (expired {}d ago)", -l),
        0 => format!("{d} (today)"),
        l => format!("{d} (in {l}d)"),
    };
    if c.auto_renew {
        Cell::new(format!("{text}, auto"))
    } else if left <= 7 {
        Cell::painted(text, Paint::Red)
    } else if left <= 30 {
        Cell::painted(text, Paint::Yellow)
    } else {
        Cell::new(text)
    }
}

/// One line of the specs: `2 vCPU, 4096 MiB, 40 GB disk, 20000 GB/mo`.
pub fn specs_text(c: &VpsContract) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(n) = c.cpu_cores {
        parts.push(format!("{n} vCPU"));
    }
    if let Some(n) = c.ram_mb {
        parts.push(format!("{n} MiB RAM"));
    }
    if let Some(n) = c.disk_gb {
        parts.push(format!("{n} GB disk"));
    }
    if let Some(n) = c.traffic_gb {
        parts.push(format!("{n} GB/mo traffic"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Columns of `vps expiring`.
pub const EXPIRING_HEADERS: [&str; 6] = [
    "HOSTNAME",
    "STATUS",
    "PROVIDER",
    "EXPIRES",
    "AUTO-RENEW",
    "COST",
];

/// A row of `vps expiring`.
pub fn expiring_row(v: &Vps, now: OffsetDateTime) -> Vec<crate::output::Cell> {
    vec![
        Cell::new(v.hostname.clone()),
        crate::output::status_cell(v.status),
        Cell::opt(v.provider.clone()),
        expires_cell(&v.contract, now),
        Cell::new(if v.contract.auto_renew { "yes" } else { "no" }),
        Cell::opt(cost_text(&v.contract)),
    ]
}

/// Soonest expiry first, then hostname.
pub fn sort_expiring(items: &mut [Value]) {
    items.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["contract"]["expires_on"]
                    .as_str()
                    .unwrap_or("9999")
                    .to_string(),
                v["hostname"].as_str().unwrap_or("").to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// The query of `vps expiring --days N`.
pub fn expiring_query(days: i64) -> Vec<(&'static str, String)> {
    vec![("expires_within_days", days.to_string())]
}

/// The report of `vps import`: one line per row that is not unchanged, then the counts.
pub fn print_import(
    ctx: &mut super::Ctx<'_>,
    r: &sigma_types::records::ImportReport,
) -> Result<()> {
    use sigma_types::records::ImportOutcome as O;
    let rows: Vec<Vec<Cell>> = r
        .rows
        .iter()
        .filter(|x| x.outcome != O::Unchanged)
        .map(|x| {
            let detail = x
                .fields
                .iter()
                .map(|(f, why)| format!("{f}: {why}"))
                .chain(x.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let outcome = match x.outcome {
                O::Created => Cell::painted("created", Paint::Green),
                O::Updated => Cell::painted("updated", Paint::Cyan),
                O::Unchanged => Cell::new("unchanged"),
                O::Error => Cell::painted("error", Paint::Red),
            };
            vec![
                Cell::new(x.row.to_string()),
                Cell::opt(x.hostname.clone()),
                outcome,
                Cell::opt((!detail.is_empty()).then_some(detail)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let mut t = crate::output::Table::new(&["ROW", "HOSTNAME", "OUTCOME", "DETAIL"]);
        for row in rows {
            t.row(row);
        }
        ctx.out.table(&t)?;
    }
    let how = if r.dry_run {
        "dry run, nothing written"
    } else if r.applied {
        "written"
    } else {
        "nothing written"
    };
    ctx.out.line(&format!(
        "{} created, {} updated, {} unchanged, {} errors ({how})",
        r.created, r.updated, r.unchanged, r.errors
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clear_and_set_flags_make_the_contract_patch() {
        let a = ContractEditArgs {
            cost: Some("4.99".into()),
            auto_renew: Some(true),
            clear_contract: vec!["data-center".into(), "ssh_port".into()],
            ..Default::default()
        };
        assert_eq!(
            patch(&a).unwrap(),
            Some(
                json!({"cost": "4.99", "auto_renew": true, "data_center": null, "ssh_port": null})
            )
        );
        assert_eq!(patch(&ContractEditArgs::default()).unwrap(), None);
        let bad = ContractEditArgs {
            clear_contract: vec!["colour".into()],
            ..Default::default()
        };
        assert!(patch(&bad).is_err());
        let both = ContractEditArgs {
            cost: Some("1".into()),
            clear_contract: vec!["cost".into()],
            ..Default::default()
        };
        assert!(patch(&both).is_err());
    }

    #[test]
    fn expiring_sorts_soonest_first_and_undated_last() {
        let mut v = vec![
            json!({"hostname": "b", "contract": {"expires_on": "2027-01-02"}}),
            json!({"hostname": "z", "contract": {}}),
            json!({"hostname": "a", "contract": {"expires_on": "2027-01-02"}}),
            json!({"hostname": "c", "contract": {"expires_on": "2026-12-31"}}),
        ];
        sort_expiring(&mut v);
        let order: Vec<&str> = v.iter().map(|x| x["hostname"].as_str().unwrap()).collect();
        assert_eq!(order, ["c", "a", "b", "z"]);
    }
}

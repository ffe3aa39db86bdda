//! `sigmactl import sigma-v1`: brings an inventory kept by the earlier sigma (lai3d/sigma, on
//! PostgreSQL) over, through sigma-api's HTTP API so its validation and audit log apply.
//!
//! What is read (the earlier schema, from its public migrations): `providers`, `vps_purposes`
//! (when present), `vps`, `exchange_rates`, and `envoy_routes` with their `envoy_nodes`.
//! Mapping, stated once here and in the report:
//! - providers by name (an existing provider of that name is reused);
//! - purposes: every purpose a VPS names that does not exist here is created (the empty
//!   purpose becomes `unassigned`);
//! - VPS through `POST /api/vps/import` (idempotent by hostname): status `provisioning` and
//!   `active` kept, `retiring` → `active`, `suspended` → `provisioning` (both reported),
//!   `retired` and `deleted` not carried; duplicates by hostname: the most recently updated
//!   row wins, the others are reported; an address label that is empty or not valid here
//!   becomes `public` (reported); `cost_monthly` → cost with the cycle `monthly`;
//!   `bandwidth_tb` → `traffic_gb` (× 1000); `dc_name` → `data_center`;
//! - exchange rates as they are (`PUT /api/exchange-rates/{from}/{to}`);
//! - Envoy routes of the carried VPS, by name (`PUT /api/vps/{id}/envoy-routes`); a placeholder
//!   route (no backend) is not carried.
//!
//! Not carried (no place for them here): provider panel URL, rating, API flag; VPS notes,
//! `extra`, `vpn_protocol`; IP checks, users, tickets, DNS and cloud accounts, audit logs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use super::Ctx;
use crate::error::{Error, Result};

/// One line of the report.
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn say(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }
}

fn db_err(e: sqlx::Error) -> Error {
    Error::Config(format!("reading the sigma-v1 database: {e}"))
}

/// The status here of a v1 status, and whether the change is worth a line in the report;
/// `None`: not carried.
pub fn map_status(v1: &str) -> Option<(&'static str, bool)> {
    match v1 {
        "provisioning" => Some(("provisioning", false)),
        "active" => Some(("active", false)),
        "retiring" => Some(("active", true)),
        "suspended" => Some(("provisioning", true)),
        _ => None,
    }
}

/// An address label here for a v1 label (`""` and labels this sigma refuses become `public`).
pub fn map_label(v1: &str) -> (String, bool) {
    match sigma_types::validate::ip_label(v1) {
        Ok(l) => (l, false),
        Err(_) => ("public".into(), !v1.is_empty()),
    }
}

/// `bandwidth_tb` (NUMERIC(10,2) as text) in whole GB.
pub fn tb_to_gb(tb: &str) -> Option<i64> {
    let a = sigma_types::Amount::parse(tb).ok()?;
    // 1 TB = 1000 GB; an Amount counts 1/10,000: GB = raw / 10.
    Some(a.raw() / 10)
}

/// Runs the import.
pub async fn run(ctx: &mut Ctx<'_>, database_url: &str, dry_run: bool) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await
        .map_err(db_err)?;
    let mut r = Report { lines: Vec::new() };
    let c = &ctx.client;

    // Providers.
    let providers =
        sqlx::query("SELECT name, country, website, notes FROM providers ORDER BY name")
            .fetch_all(&pool)
            .await
            .map_err(db_err)?;
    let existing: BTreeSet<String> = c.get_all(&["api", "providers"], &[]).await?.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_lowercase))
        .collect();
    for p in &providers {
        let name: String = p.get("name");
        if existing.contains(&name.to_lowercase()) {
            r.say(format!("provider {name:?}: exists, reused"));
            continue;
        }
        let country: String = p.get("country");
        let website: String = p.get("website");
        let notes: String = p.get("notes");
        let mut body = json!({"name": name});
        if sigma_types::validate::country(&country).is_ok() {
            body["country"] = json!(country);
        }
        if !website.is_empty() {
            body["website"] = json!(website);
        }
        if !notes.is_empty() {
            body["notes"] = json!(notes);
        }
        if dry_run {
            r.say(format!("provider {name:?}: would be created"));
        } else {
            c.post(&["api", "providers"], &body).await?;
            r.say(format!("provider {name:?}: created"));
        }
    }

    // VPS rows, newest first so the first of a hostname is the one kept.
    let rows = sqlx::query(
        "SELECT v.hostname, v.alias, p.name AS provider, v.ip_addresses::text AS ips, v.ssh_port, \
         v.country, v.city, v.dc_name, v.cpu_cores::int8 AS cpu_cores, v.ram_mb::int8 AS ram_mb, \
         v.disk_gb::int8 AS disk_gb, v.bandwidth_tb::text AS bandwidth_tb, \
         v.cost_monthly::text AS cost, v.currency, v.status, v.purchase_date::text AS purchased, \
         v.expire_date::text AS expires, v.purpose, array_to_json(v.tags)::text AS tags, \
         v.monitoring_enabled, v.node_exporter_port::int8 AS node_exporter_port \
         FROM vps v LEFT JOIN providers p ON p.id = v.provider_id \
         ORDER BY lower(v.hostname), v.updated_at DESC",
    )
    .fetch_all(&pool)
    .await
    .map_err(db_err)?;
    let mut items = Vec::new();
    let mut seen = BTreeSet::new();
    let mut purposes_needed = BTreeSet::new();
    for v in &rows {
        let hostname: String = v.get("hostname");
        let key = hostname.to_lowercase();
        let status: String = v.get("status");
        if !seen.insert(key.clone()) {
            r.say(format!(
                "vps {hostname:?}: an older duplicate row of this hostname ({status}) not carried; the most recently updated one is"
            ));
            continue;
        }
        let Some((status_here, changed)) = map_status(&status) else {
            r.say(format!(
                "vps {hostname:?}: {status} in sigma-v1, not carried"
            ));
            continue;
        };
        if changed {
            r.say(format!("vps {hostname:?}: status {status} → {status_here}"));
        }
        let purpose: String = v.get("purpose");
        let purpose = if purpose.is_empty() {
            "unassigned".to_string()
        } else {
            purpose
        };
        purposes_needed.insert(purpose.clone());
        let ips: Vec<Value> = serde_json::from_str(&v.get::<String, _>("ips")).unwrap_or_default();
        let ip_addresses: Vec<Value> = ips
            .iter()
            .filter_map(|a| {
                let ip = a["ip"].as_str()?;
                let old = a["label"].as_str().unwrap_or("");
                let (label, changed) = map_label(old);
                if changed {
                    r.say(format!(
                        "vps {hostname:?}: address {ip} label {old:?} → public"
                    ));
                }
                Some(json!({"ip": ip, "label": label}))
            })
            .collect();
        let tags: Vec<String> =
            serde_json::from_str(&v.get::<String, _>("tags")).unwrap_or_default();
        let text = |col: &str| -> Option<String> {
            v.get::<Option<String>, _>(col).filter(|s| !s.is_empty())
        };
        let cost = text("cost");
        let mut contract = json!({
            "ssh_port": v.get::<i32, _>("ssh_port"),
            "auto_renew": false,
        });
        if let Some(cost) = &cost {
            contract["cost"] = json!(cost);
            contract["currency"] = json!(v.get::<String, _>("currency"));
            contract["billing_cycle"] = json!("monthly");
        }
        for (col, field) in [
            ("purchased", "purchased_on"),
            ("expires", "expires_on"),
            ("dc_name", "data_center"),
        ] {
            if let Some(s) = text(col) {
                contract[field] = json!(s);
            }
        }
        for col in ["cpu_cores", "ram_mb", "disk_gb"] {
            if let Some(n) = v.get::<Option<i64>, _>(col) {
                contract[col] = json!(n);
            }
        }
        if let Some(gb) = text("bandwidth_tb")
            .as_deref()
            .and_then(tb_to_gb)
            .filter(|g| *g > 0)
        {
            contract["traffic_gb"] = json!(gb);
        }
        let mut item = json!({
            "hostname": hostname,
            "purpose": purpose,
            "status": status_here,
            "ip_addresses": ip_addresses,
            "tags": tags,
            "monitoring": v.get::<bool, _>("monitoring_enabled"),
            "node_exporter_port": v.get::<i64, _>("node_exporter_port"),
            "contract": contract,
        });
        for (col, field) in [
            ("alias", "alias"),
            ("provider", "provider"),
            ("country", "country"),
            ("city", "city"),
        ] {
            if let Some(s) = text(col) {
                item[field] = json!(s);
            }
        }
        items.push(item);
    }

    // Purposes the VPS name that do not exist here.
    let known: BTreeSet<String> = c.get_all(&["api", "purposes"], &[]).await?.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let labels: BTreeMap<String, String> = match sqlx::query("SELECT name, label FROM vps_purposes")
        .fetch_all(&pool)
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|p| (p.get("name"), p.get("label")))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    for p in purposes_needed.difference(&known) {
        let display = labels.get(p).cloned().unwrap_or_else(|| p.clone());
        if dry_run {
            r.say(format!("purpose {p:?}: would be created"));
        } else {
            c.post(
                &["api", "purposes"],
                &json!({"name": p, "display_name": display}),
            )
            .await?;
            r.say(format!("purpose {p:?}: created"));
        }
    }

    // Exchange rates.
    let rates =
        sqlx::query("SELECT from_currency, to_currency, rate::text AS rate FROM exchange_rates")
            .fetch_all(&pool)
            .await
            .map_err(db_err)?;
    for x in &rates {
        let (from, to, rate): (String, String, String) =
            (x.get("from_currency"), x.get("to_currency"), x.get("rate"));
        if dry_run {
            r.say(format!("exchange rate {from}→{to} = {rate}: would be set"));
            continue;
        }
        match c
            .put(
                &["api", "exchange-rates", &from, &to],
                &json!({"rate": rate.trim_end_matches('0').trim_end_matches('.')}),
            )
            .await
        {
            Ok(_) => r.say(format!("exchange rate {from}→{to} = {rate}: set")),
            Err(e) => r.say(format!("exchange rate {from}→{to}: not carried ({e})")),
        }
    }

    // The VPS, in one import (all or nothing unless the operator wants otherwise later).
    let mut q = vec![("mode", "partial".to_string())];
    if dry_run {
        q.push(("dry_run", "true".to_string()));
    }
    let body =
        serde_json::to_vec(&json!({"items": items})).map_err(|e| Error::Usage(e.to_string()))?;
    let ans = c
        .post_bytes(&["api", "vps", "import"], &q, "application/json", body)
        .await?;
    let report: sigma_types::records::ImportReport = ans.parse()?;
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for row in &report.rows {
        let host = row.hostname.clone().unwrap_or_default();
        let detail: Vec<String> = row
            .fields
            .iter()
            .map(|(f, w)| format!("{f}: {w}"))
            .chain(row.message.clone())
            .collect();
        let outcome = serde_json::to_value(row.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        // A dry run creates no provider or purpose, so the rows that need one it would create
        // are refused for that reason alone: say what the real run does with them.
        let pending = dry_run
            && !row.fields.is_empty()
            && row.fields.keys().all(|f| f == "provider" || f == "purpose");
        if pending {
            r.say(format!(
                "vps {host:?}: would be imported once its provider/purpose is created"
            ));
        } else if detail.is_empty() {
            r.say(format!("vps {host:?}: {outcome}"));
        } else {
            r.say(format!("vps {host:?}: {outcome}: {}", detail.join("; ")));
        }
        if let Some(id) = row.id {
            ids.insert(host.to_lowercase(), id.to_string());
        }
    }

    // Envoy routes of the carried VPS.
    let routes = sqlx::query(
        "SELECT v.hostname, r.name, r.listen_port::int8 AS listen_port, r.backend_host, \
         r.backend_port::int8 AS backend_port, r.proxy_protocol::int8 AS proxy_protocol, r.status \
         FROM envoy_routes r JOIN envoy_nodes n ON n.id = r.envoy_node_id JOIN vps v ON v.id = n.vps_id \
         ORDER BY v.hostname, r.name",
    )
    .fetch_all(&pool)
    .await
    .map_err(db_err)?;
    let mut by_vps: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for x in &routes {
        let host: String = x.get::<String, _>("hostname").to_lowercase();
        let name: String = x.get("name");
        let (Some(bh), Some(bp)) = (
            x.get::<Option<String>, _>("backend_host"),
            x.get::<Option<i64>, _>("backend_port"),
        ) else {
            r.say(format!(
                "route {name:?} of {host:?}: a placeholder without backend, not carried"
            ));
            continue;
        };
        let pp = match x.get::<i64, _>("proxy_protocol") {
            1 => "v1",
            2 => "v2",
            _ => "none",
        };
        let status = if x.get::<String, _>("status") == "active" {
            "active"
        } else {
            "disabled"
        };
        by_vps.entry(host).or_default().push(json!({
            "name": name, "listen_port": x.get::<i64, _>("listen_port"), "backend_host": bh,
            "backend_port": bp, "proxy_protocol": pp, "status": status,
        }));
    }
    for (host, list) in by_vps {
        let Some(id) = ids.get(&host) else {
            r.say(format!(
                "{} route(s) of {host:?}: its VPS was not carried",
                list.len()
            ));
            continue;
        };
        if dry_run {
            r.say(format!("{} route(s) of {host:?}: would be set", list.len()));
            continue;
        }
        match c
            .put(
                &["api", "vps", id, "envoy-routes"],
                &json!({"routes": list}),
            )
            .await
        {
            Ok(_) => r.say(format!("{} route(s) of {host:?}: set", list.len())),
            Err(e) => r.say(format!("route(s) of {host:?}: not carried ({e})")),
        }
    }
    pool.close().await;
    r.say(format!(
        "{}: {} VPS created, {} updated, {} unchanged, {} refused",
        if dry_run {
            "dry run, nothing written"
        } else {
            "done"
        },
        report.created,
        report.updated,
        report.unchanged,
        report.errors
    ));
    r.say("not carried by design: provider panel URL/rating/API flag, VPS notes/extra/vpn_protocol, IP checks, users, tickets, DNS and cloud accounts, audit logs");
    for l in &r.lines {
        ctx.out.line(l)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_labels_and_bandwidth_map_as_stated() {
        assert_eq!(map_status("active"), Some(("active", false)));
        assert_eq!(map_status("suspended"), Some(("provisioning", true)));
        assert_eq!(map_status("retiring"), Some(("active", true)));
        assert_eq!(map_status("retired"), None);
        assert_eq!(map_status("deleted"), None);
        assert_eq!(map_label(""), ("public".into(), false));
        assert_eq!(map_label("china-telecom"), ("china-telecom".into(), false));
        assert_eq!(map_label("电信"), ("public".into(), true));
        assert_eq!(tb_to_gb("1.50"), Some(1500));
        assert_eq!(tb_to_gb("x"), None);
    }
}

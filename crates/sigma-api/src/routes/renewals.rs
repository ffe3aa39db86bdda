//! Renewals in Prometheus: one `sigma_vps_expiry_timestamp_seconds` series per VPS whose paid
//! period is known, labelled like the VPS's scrape targets (so rules and dashboards join it to
//! the other series of that VPS by `vps_id`), for the alerts of `sigma.contracts` in
//! k8s/monitoring/sigma-rules.yaml.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sigma_types::{ContractFilter, Vps, VpsQuery, VpsStatus};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Reader;
use crate::routes::prometheus::{TargetKind, labels};

/// The exposition content type Prometheus expects.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// When a VPS paid until `expires_on` stops being paid: the end of that day, UTC.
pub fn expiry_timestamp(v: &Vps) -> Option<i64> {
    let d = v.contract.expires_on?.0.next_day()?;
    Some(d.midnight().assume_utc().unix_timestamp())
}

/// A label value escaped for the text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the series of `vps` (those without an expiry date are left out).
pub fn render(vps: &[Vps]) -> String {
    let mut out = String::from(
        "# HELP sigma_vps_expiry_timestamp_seconds End of the VPS's paid period (the end of its expires_on day, UTC), Unix seconds.\n\
         # TYPE sigma_vps_expiry_timestamp_seconds gauge\n",
    );
    for v in vps {
        let Some(ts) = expiry_timestamp(v) else {
            continue;
        };
        let mut l = labels(&v.into(), TargetKind::Node);
        l.remove("sigma_target_kind");
        l.insert("auto_renew".into(), v.contract.auto_renew.to_string());
        let body = l
            .iter()
            .map(|(k, val)| format!("{k}=\"{}\"", escape(val)))
            .collect::<Vec<_>>()
            .join(",");
        let _ = writeln!(out, "sigma_vps_expiry_timestamp_seconds{{{body}}} {ts}");
    }
    out
}

/// The expiry of every VPS that is not deleted and has an `expires_on`, in the Prometheus
/// text format, labelled like its scrape targets plus `auto_renew` (`true|false`).
#[utoipa::path(get, path = "/api/prometheus/contracts", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = [])))]
pub async fn contracts(State(s): State<AppState>, Reader(_): Reader) -> ApiResult<Response> {
    let mut all = Vec::new();
    for status in [
        VpsStatus::Provisioning,
        VpsStatus::Active,
        VpsStatus::Retiring,
        VpsStatus::Retired,
    ] {
        let mut offset = 0;
        loop {
            let page = s
                .store
                .list_vps_filtered(
                    &VpsQuery {
                        status: Some(status),
                        limit: Some(sigma_types::MAX_LIMIT),
                        offset: Some(offset),
                        ..Default::default()
                    },
                    // 100 years ahead: every stored date (they are 2000-2100).
                    &ContractFilter {
                        expires_within_days: Some(36_600),
                        ..Default::default()
                    },
                )
                .await?;
            offset += page.items.len() as i64;
            all.extend(page.items);
            if offset >= page.total || offset == 0 {
                break;
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], render(&all)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vps(expires: Option<&str>, auto: bool) -> Vps {
        let mut v: Vps = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-4000-8000-000000000001", "hostname": "a.example",
            "alias": "say \"hi\"", "provider": null, "ip_addresses": [], "country": "DE",
            "city": null, "purpose": "xrayr", "status": "active", "tags": ["x", "y"],
            "monitoring": true, "node_exporter_port": 9100, "system_info": null,
            "agent_state": null, "last_heartbeat_at": null, "desired_version": 1,
            "envoy_version": 0, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "deleted_at": null
        }))
        .unwrap();
        v.contract.expires_on = expires.map(|d| sigma_types::Day::parse(d).unwrap());
        v.contract.auto_renew = auto;
        v
    }

    #[test]
    fn one_series_per_dated_vps_at_the_end_of_its_day() {
        let text = render(&[vps(Some("2027-01-15"), false), vps(None, true)]);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), 1, "{text}");
        // 2027-01-16T00:00:00Z
        assert!(series[0].ends_with(" 1800057600"), "{text}");
        assert!(series[0].contains(r#"alias="say \"hi\"""#), "{text}");
        assert!(series[0].contains(r#"auto_renew="false""#), "{text}");
        assert!(series[0].contains(r#"tags="x,y""#), "{text}");
        assert!(!series[0].contains("sigma_target_kind"), "{text}");
    }
}

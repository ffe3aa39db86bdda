//! The Prometheus links of `mesh doctor` (`prometheus-scrape`, `xboard-requests`, asked only
//! with `--prometheus`): the queries the command sends and how their answers are read.

use serde_json::Value;

use super::{
    Inputs, Link, LinkKind, PromAnswers, XBOARD_WINDOW, failed, ok, warning, workload_entry_name,
};

/// A PromQL string literal (double-quoted, escaped) of `s`.
fn promql_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The query for the VPS's Envoy targets: the `sigma-envoy` job keeps `sigma_target_kind` and
/// the `hostname` label from sigma-api's service discovery
/// (k8s/monitoring/prometheus-scrape.yaml).
pub fn up_query(hostname: &str) -> String {
    format!(
        "up{{sigma_target_kind=\"envoy\", hostname={}}}",
        promql_string(hostname)
    )
}

/// The query for the request rate from the VPS (Istio's `source_workload`, its WorkloadEntry
/// name) to Xboard over [`XBOARD_WINDOW`].
pub fn xboard_query(workload_entry: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{source_workload={}, destination_service_name=~\"xboard.*\"}}[{XBOARD_WINDOW}]))",
        promql_string(workload_entry)
    )
}

/// The sample values of an instant-query answer of Prometheus' HTTP API
/// (`{"status": "success", "data": {"resultType": "vector", "result": [...]}}`).
pub fn prom_vector(body: &Value) -> Result<Vec<f64>, String> {
    if body["status"] != "success" {
        let e = body["error"].as_str().unwrap_or("no error given");
        let t = body["errorType"].as_str().unwrap_or("error");
        return Err(format!("Prometheus answered {t}: {e}"));
    }
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("vector") => {}
        Some("scalar") => {
            return sample(&data["result"]).map(|v| vec![v]);
        }
        other => {
            return Err(format!(
                "Prometheus answered a result of type {}, not a vector",
                other.unwrap_or("(none)")
            ));
        }
    }
    let Some(items) = data["result"].as_array() else {
        return Err("Prometheus' answer has no result list".into());
    };
    items.iter().map(|i| sample(&i["value"])).collect()
}

fn sample(v: &Value) -> Result<f64, String> {
    // A sample is `[unix time, "value"]`; values are strings so NaN and ±Inf fit.
    let s = v
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Prometheus' answer holds a malformed sample: {v}"))?;
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        s => s
            .parse::<f64>()
            .map_err(|_| format!("Prometheus' answer holds a sample that is no number: {s:?}")),
    }
}

pub(super) fn prometheus_scrape(i: &Inputs<'_>, p: &PromAnswers) -> Link {
    let k = LinkKind::PrometheusScrape;
    let h = &i.vps.hostname;
    let q = up_query(h);
    match &p.up {
        Err(e) => failed(
            k,
            format!("could not ask Prometheus at {}: {e}", p.url),
            "check --prometheus (Prometheus' base URL, e.g. http://prometheus:9090) and that it is reachable from here",
        ),
        Ok(v) if v.is_empty() => failed(
            k,
            format!("Prometheus has no Envoy target of {h} (`{q}` is empty)"),
            "Prometheus needs the sigma-envoy job of k8s/monitoring/prometheus-scrape.yaml; sigma-api lists a VPS there (GET /api/prometheus/targets?kind=envoy) once it is active and has a WorkloadEntry",
        ),
        Ok(v) if v.iter().any(|x| *x >= 1.0) => ok(
            k,
            format!(
                "Prometheus scrapes its Envoy ({} of {} target(s) up)",
                v.iter().filter(|x| **x >= 1.0).count(),
                v.len()
            ),
        ),
        Ok(_) => failed(
            k,
            format!("Prometheus cannot scrape its Envoy (`{q}` is 0)"),
            format!(
                "open pilot-agent's metrics port (15020, or 15090 with --prometheus-envoy-metrics direct) on {h} to Prometheus, and check the proxy link; Prometheus' targets page names the scrape error"
            ),
        ),
    }
}

pub(super) fn xboard_requests(i: &Inputs<'_>, p: &PromAnswers) -> Link {
    let k = LinkKind::XboardRequests;
    match &p.xboard_rate {
        None => warning(
            k,
            "not checked: no WorkloadEntry name to look its requests up by",
            "see the WorkloadEntry link",
        ),
        Some(Err(e)) => failed(
            k,
            format!("could not ask Prometheus at {}: {e}", p.url),
            "check --prometheus and that Prometheus is reachable from here",
        ),
        Some(Ok(r)) if *r > 0.0 => ok(
            k,
            format!("Prometheus sees {r:.3} requests/s from it to Xboard (last {XBOARD_WINDOW})"),
        ),
        Some(Ok(_)) => {
            let we = workload_entry_name(i.vps, i.report).unwrap_or_default();
            warning(
                k,
                format!(
                    "Prometheus sees no requests from it to Xboard in the last {XBOARD_WINDOW} (source_workload {we})"
                ),
                "if it should call Xboard: check that its service uses the loopback egress listener of its purpose's Sidecar (`sigmactl mesh export`), and the links above",
            )
        }
    }
}

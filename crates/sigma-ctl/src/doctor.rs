//! `mesh doctor`: the links of one VPS's mesh chain, judged from what sigma-api (and
//! optionally Prometheus) report.
//!
//! Everything here is pure: [`evaluate`] takes the VPS, its purpose's mesh settings, the mesh
//! report of `GET /api/vps/{id}/mesh` (or the fact that sigma-api has no such endpoint), the
//! time, and Prometheus' answers, and returns the links in chain order. Fetching is the
//! command's business (`commands::mesh`), so every verdict can be tested without a server.

use serde::Serialize;
use serde_json::Value;
use sigma_types::mesh::{MeshAgentState, MeshPhase, VpsMeshReport};
use sigma_types::{
    AgentMode, MeshSyncStatus, RouteListener, RoutePlan, RoutePlanEntry, RouteRuns, Vps, VpsStatus,
};
use time::{Duration, OffsetDateTime};

use crate::output;

pub mod dataplane;

/// A heartbeat older than this is stale: three intervals of the agent's default 30 s, the
/// same threshold as the `SigmaAgentHeartbeatStale` alert.
pub const DEFAULT_STALE_AFTER: Duration = Duration::seconds(90);

/// An istio-token with less life left than this is a warning. The agent refreshes it at
/// 50–70 % of its life (sigma-api issues 10 min to 24 h, 1 h by default), so a healthy one
/// keeps at least 30 % of its life: a token this close to expiry means refreshes fail.
pub const TOKEN_WARN_BEFORE: Duration = Duration::minutes(15);

/// A workload certificate with less life left than this is a warning. pilot-agent renews it at
/// half its life (24 h by default), so one this close to expiry means renewals fail.
pub const CERT_WARN_BEFORE: Duration = Duration::hours(1);

/// Window of the Xboard request rate query.
pub const XBOARD_WINDOW: &str = "10m";

/// The verdict on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Works.
    Ok,
    /// Works for now, is in transition, or could not be verified.
    Warning,
    /// Broken: the chain does not work here.
    Failed,
}

impl Outcome {
    /// Its name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warning => "warning",
            Outcome::Failed => "failed",
        }
    }
}

/// The links, in the order the chain is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// The VPS is active.
    VpsActive,
    /// Its purpose has the mesh on and it is not opted out.
    MeshEnabled,
    /// Its WorkloadEntry is in the cluster as sigma wants it.
    WorkloadEntry,
    /// Its WorkloadGroup makes it a workload of its own in Kiali.
    KialiWorkload,
    /// Its agent heartbeats.
    AgentHeartbeat,
    /// Its agent runs in mesh mode.
    AgentMeshMode,
    /// pilot-agent runs and Envoy is ready.
    Proxy,
    /// The workload certificate is valid.
    Certificate,
    /// The istio-token is valid.
    Token,
    /// istiod's health verdict on the WorkloadEntry.
    WorkloadHealth,
    /// Envoy's xDS stream (through pilot-agent and the east-west gateway) to istiod is up.
    XdsConnected,
    /// `/etc/hosts` maps each egress host to its loopback listener.
    HostsBlock,
    /// Envoy's loopback listener of each egress host is bound.
    EgressListener,
    /// Envoy holds healthy endpoints for each egress host.
    EgressEndpoints,
    /// The share of 5xx responses and failed connections of each egress host.
    EgressResponses,
    /// Each active Envoy route (relay hop) forwards: carried in the VPS's mode, its listener
    /// live.
    RouteListeners,
    /// Prometheus scrapes its Envoy.
    PrometheusScrape,
    /// Prometheus sees requests from it to Xboard.
    XboardRequests,
}

impl LinkKind {
    /// The stable name scripts see (`-o json`).
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::VpsActive => "vps-active",
            LinkKind::MeshEnabled => "mesh-enabled",
            LinkKind::WorkloadEntry => "workload-entry",
            LinkKind::KialiWorkload => "kiali-workload",
            LinkKind::AgentHeartbeat => "agent-heartbeat",
            LinkKind::AgentMeshMode => "agent-mesh-mode",
            LinkKind::Proxy => "proxy",
            LinkKind::Certificate => "certificate",
            LinkKind::Token => "token",
            LinkKind::WorkloadHealth => "workload-health",
            LinkKind::XdsConnected => "xds-connected",
            LinkKind::HostsBlock => "hosts-block",
            LinkKind::EgressListener => "egress-listener",
            LinkKind::EgressEndpoints => "egress-endpoints",
            LinkKind::EgressResponses => "egress-responses",
            LinkKind::RouteListeners => "route-listeners",
            LinkKind::PrometheusScrape => "prometheus-scrape",
            LinkKind::XboardRequests => "xboard-requests",
        }
    }

    /// The name people see.
    pub fn title(self) -> &'static str {
        match self {
            LinkKind::VpsActive => "VPS active",
            LinkKind::MeshEnabled => "mesh enabled",
            LinkKind::WorkloadEntry => "WorkloadEntry",
            LinkKind::KialiWorkload => "Kiali workload",
            LinkKind::AgentHeartbeat => "agent heartbeat",
            LinkKind::AgentMeshMode => "agent in mesh mode",
            LinkKind::Proxy => "pilot-agent and Envoy",
            LinkKind::Certificate => "workload certificate",
            LinkKind::Token => "istio-token",
            LinkKind::WorkloadHealth => "WorkloadEntry health",
            LinkKind::XdsConnected => "Envoy connected to istiod",
            LinkKind::HostsBlock => "hosts block",
            LinkKind::EgressListener => "egress listeners",
            LinkKind::EgressEndpoints => "egress endpoints",
            LinkKind::EgressResponses => "egress responses",
            LinkKind::RouteListeners => "route listeners",
            LinkKind::PrometheusScrape => "Prometheus scrapes Envoy",
            LinkKind::XboardRequests => "requests to Xboard",
        }
    }
}

/// One link of the chain with its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Which link.
    pub link: LinkKind,
    /// The verdict.
    pub result: Outcome,
    /// What was found.
    pub reason: String,
    /// What to do about it (none when it is ok).
    pub fix: Option<String>,
}

fn link(link: LinkKind, result: Outcome, reason: impl Into<String>, fix: Option<String>) -> Link {
    Link {
        link,
        result,
        reason: reason.into(),
        fix,
    }
}

fn ok(kind: LinkKind, reason: impl Into<String>) -> Link {
    link(kind, Outcome::Ok, reason, None)
}

fn warning(kind: LinkKind, reason: impl Into<String>, fix: impl Into<String>) -> Link {
    link(kind, Outcome::Warning, reason, Some(fix.into()))
}

fn failed(kind: LinkKind, reason: impl Into<String>, fix: impl Into<String>) -> Link {
    link(kind, Outcome::Failed, reason, Some(fix.into()))
}

/// What sigma-api said about the VPS's place in the mesh.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshReport {
    /// `GET /api/vps/{id}/mesh` answered.
    Reported(Box<VpsMeshReport>),
    /// sigma-api has no such endpoint (older than this sigmactl): only the VPS's recorded
    /// `mesh` status is known.
    Unsupported,
}

/// What Prometheus answered, per query; `Err` holds why it could not be asked.
#[derive(Debug, Clone, PartialEq)]
pub struct PromAnswers {
    /// Prometheus' base URL, for messages.
    pub url: String,
    /// Values of `up` of the VPS's Envoy targets (one per target; none when unknown to it).
    pub up: Result<Vec<f64>, String>,
    /// The request rate from the VPS to Xboard; `None` when no WorkloadEntry name was known
    /// to ask by.
    pub xboard_rate: Option<Result<f64, String>>,
}

/// Everything a verdict is made from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The VPS as sigma-api has it.
    pub vps: &'a Vps,
    /// Its purpose's mesh settings (`None` when they could not be read).
    pub purpose_mesh: Option<&'a Value>,
    /// The mesh report.
    pub report: &'a MeshReport,
    /// Now.
    pub now: OffsetDateTime,
    /// When a heartbeat is stale.
    pub stale_after: Duration,
    /// Prometheus' answers, with `--prometheus`.
    pub prometheus: Option<&'a PromAnswers>,
    /// Where the VPS's routes run today and whether they are live; the route link is left
    /// out without it (a sigma-api that does not answer the plan, the console).
    pub routes: Option<&'a RoutePlan>,
}

/// The name of the VPS's WorkloadEntry: what the cluster holds, else what sigma wants, else
/// what the reconciler last recorded.
pub fn workload_entry_name(vps: &Vps, report: &MeshReport) -> Option<String> {
    let from = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let MeshReport::Reported(r) = report
        && let Some(n) = from(&r.actual).or_else(|| from(&r.desired))
    {
        return Some(n);
    }
    vps.mesh.workload_entry.clone()
}

fn workload_entry_namespace(report: &MeshReport) -> Option<String> {
    match report {
        MeshReport::Reported(r) => r
            .actual
            .as_ref()
            .or(r.desired.as_ref())
            .and_then(|o| o.pointer("/metadata/namespace"))
            .and_then(Value::as_str)
            .map(str::to_string),
        MeshReport::Unsupported => None,
    }
}

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

fn until(t: OffsetDateTime, now: OffsetDateTime) -> String {
    format!("{} ({})", output::time(t), output::ago(t, now))
}

fn vps_active(v: &Vps) -> Link {
    let k = LinkKind::VpsActive;
    let h = &v.hostname;
    match v.status {
        VpsStatus::Active => ok(k, "active"),
        VpsStatus::Provisioning => failed(
            k,
            "provisioning: its agent has not registered or heartbeated yet",
            format!(
                "install and start sigma-agent on {h} (`sigmactl enroll create` prints the install command); its first heartbeat makes it active"
            ),
        ),
        VpsStatus::Retiring | VpsStatus::Retired => failed(
            k,
            format!(
                "{}: it is leaving or has left the fleet, and the mesh with it",
                v.status.as_str()
            ),
            format!(
                "if it should serve, re-commission it: `sigmactl vps edit {h} --status provisioning`"
            ),
        ),
        VpsStatus::Deleted => failed(
            k,
            "deleted",
            format!("restore it: `sigmactl vps restore {}`", v.id),
        ),
    }
}

fn mesh_enabled(i: &Inputs<'_>) -> Link {
    let k = LinkKind::MeshEnabled;
    let v = i.vps;
    let (h, p) = (&v.hostname, &v.purpose);
    if v.mesh_opt_out {
        return failed(
            k,
            "opted out of the mesh (mesh_opt_out)",
            format!("let it join: `sigmactl vps edit {h} --mesh-opt-out false`"),
        );
    }
    let enabled = match i.purpose_mesh {
        Some(m) => m.get("enabled").and_then(Value::as_bool).unwrap_or(false),
        None => {
            return warning(
                k,
                format!("not opted out, but purpose {p}'s mesh settings could not be read"),
                format!("check `sigmactl purposes show {p}`"),
            );
        }
    };
    if !enabled {
        return failed(
            k,
            format!("purpose {p} has the mesh off (its mesh settings lack \"enabled\": true)"),
            format!(
                "turn it on for the purpose: `sigmactl purposes edit {p} --mesh-file FILE` with \"enabled\": true and its ports and egress (see `sigmactl purposes show {p}`)"
            ),
        );
    }
    if let MeshReport::Reported(r) = i.report
        && !r.meshed
        && v.status == VpsStatus::Active
    {
        let why = r.reason.as_deref().unwrap_or("no reason given");
        return failed(
            k,
            format!("purpose {p} has the mesh on, yet sigma-api keeps it out: {why}"),
            format!(
                "fix what the reason names (a VPS without an address joins once it has one: `sigmactl vps edit {h} --ip IP`)"
            ),
        );
    }
    ok(k, format!("purpose {p} has the mesh on; not opted out"))
}

fn sync_text(s: &sigma_types::VpsMeshStatus, now: OffsetDateTime) -> String {
    let mut t = format!("recorded sync status {}", s.status.as_str());
    if let Some(m) = &s.message {
        t.push_str(&format!(": {m}"));
    }
    if let Some(a) = s.last_attempt_at {
        t.push_str(&format!(" (last attempt {})", output::ago(a, now)));
    }
    t
}

fn kubectl_get(ns: Option<&str>, name: &str) -> String {
    format!(
        "kubectl -n {} get workloadentry {name} -o yaml",
        ns.unwrap_or("sigma")
    )
}

fn workload_entry(i: &Inputs<'_>) -> Link {
    let k = LinkKind::WorkloadEntry;
    let v = i.vps;
    let name = workload_entry_name(v, i.report);
    let ns = workload_entry_namespace(i.report);
    let r = match i.report {
        MeshReport::Unsupported => {
            let what = sync_text(&v.mesh, i.now);
            let entry = v
                .mesh
                .workload_entry
                .as_deref()
                .map(|n| format!(", WorkloadEntry {n}"))
                .unwrap_or_default();
            let reason =
                format!("sigma-api too old to report the cluster's WorkloadEntry; {what}{entry}");
            let fix = match &v.mesh.workload_entry {
                Some(n) => format!(
                    "upgrade sigma-api (GET /api/vps/{{id}}/mesh); meanwhile look yourself: `{}`",
                    kubectl_get(None, n)
                ),
                None => "upgrade sigma-api (GET /api/vps/{id}/mesh) to have the cluster's WorkloadEntry checked".to_string(),
            };
            // An error the reconciler recorded is a failure whatever the cluster holds now.
            return if v.mesh.status == MeshSyncStatus::Error {
                failed(k, reason, fix)
            } else {
                warning(k, reason, fix)
            };
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return failed(
            k,
            format!(
                "none: the VPS has no place in the mesh ({})",
                r.reason.as_deref().unwrap_or("no reason given")
            ),
            "fix the links above first; the WorkloadEntry follows",
        );
    }
    let name_txt = name.clone().unwrap_or_else(|| "(unnamed)".into());
    let sync = sync_text(&r.sync, i.now);
    match r.mode.as_str() {
        "off" => {
            return failed(
                k,
                "sigma-api runs with --mesh off: nothing applies WorkloadEntries",
                "run sigma-api with --mesh kubernetes, or with --mesh export and apply `sigmactl mesh export -o DIR` through GitOps",
            );
        }
        "export" if r.actual.is_none() => {
            return warning(
                k,
                format!(
                    "sigma-api runs with --mesh export: your GitOps pipeline applies WorkloadEntry {name_txt}, which sigma-api cannot see"
                ),
                format!(
                    "make sure the output of `sigmactl mesh export -o DIR` is committed and applied; check: `{}`",
                    kubectl_get(ns.as_deref(), &name_txt)
                ),
            );
        }
        _ => {}
    }
    if let Some(e) = &r.cluster_error {
        return failed(
            k,
            format!("the cluster could not be read: {e}"),
            "check sigma-api's access to Kubernetes (kubeconfig, the Role in k8s/base/rbac.yaml) and its log",
        );
    }
    match (&r.actual, r.in_sync) {
        (None, _) => {
            let fix = match r.sync.status {
                MeshSyncStatus::Error => {
                    "fix the cause the sync status names; the reconciler retries at its next pass"
                        .to_string()
                }
                _ => "the reconciler has not applied it yet: check that a sigma-api replica holds the mesh Lease (--mesh-lease-name) and its log".to_string(),
            };
            failed(
                k,
                format!("WorkloadEntry {name_txt} is not in the cluster; {sync}"),
                fix,
            )
        }
        (Some(_), Some(false)) => {
            let reason =
                format!("the cluster's WorkloadEntry {name_txt} differs from sigma's; {sync}");
            let fix = format!(
                "the reconciler restores it at its next pass (--mesh-resync-interval); if it stays different, another controller edits it: `{} --show-managed-fields`",
                kubectl_get(ns.as_deref(), &name_txt)
            );
            if r.sync.status == MeshSyncStatus::Pending {
                warning(k, reason, fix)
            } else {
                failed(k, reason, fix)
            }
        }
        (Some(_), _) if r.sync.status == MeshSyncStatus::Error => warning(
            k,
            format!("WorkloadEntry {name_txt} is in the cluster as desired, but {sync}"),
            "see sigma-api's log for the reconciler's error",
        ),
        (Some(_), _) => ok(
            k,
            format!("WorkloadEntry {name_txt} is in the cluster as sigma wants it"),
        ),
    }
}

/// The labels a VPS's WorkloadGroup selects its entry by (`spec.metadata.labels`), with the
/// values the entry must carry: the purpose as `app` and canonical service, the version as
/// canonical revision, and the VPS's id. Kiali attaches an entry to a group when the entry's
/// `spec.labels` hold all of them.
fn group_labels(vps: &Vps, entry_labels: &Value) -> Vec<(&'static str, Option<String>)> {
    let version = entry_labels.get("version").and_then(Value::as_str);
    vec![
        ("app", Some(vps.purpose.clone())),
        ("version", version.map(str::to_string)),
        ("service.istio.io/canonical-name", Some(vps.purpose.clone())),
        (
            "service.istio.io/canonical-revision",
            version.map(str::to_string),
        ),
        ("sigma.io/vps-id", Some(vps.id.to_string())),
    ]
}

fn kubectl_group(ns: Option<&str>, name: &str) -> String {
    format!(
        "kubectl -n {} get workloadgroup {name} -o yaml",
        ns.unwrap_or("sigma")
    )
}

/// Whether Kiali lists the VPS as a workload of its own: its WorkloadGroup, named like its
/// WorkloadEntry (and like the workload its proxy reports, `ISTIO_META_WORKLOAD_NAME`), selects
/// exactly that entry. Judged from the entry's labels (what the group selects by) and from the
/// reconciler's record, which is `synced` only when the group was applied too.
fn kiali_workload(i: &Inputs<'_>) -> Link {
    let k = LinkKind::KialiWorkload;
    let r = match i.report {
        MeshReport::Unsupported => {
            return warning(
                k,
                "unknown: sigma-api too old to report the WorkloadEntry its WorkloadGroup selects",
                match &i.vps.mesh.workload_entry {
                    Some(n) => format!("look yourself: `{}`", kubectl_group(None, n)),
                    None => "upgrade sigma-api (GET /api/vps/{id}/mesh)".to_string(),
                },
            );
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return warning(
            k,
            "not checked: the VPS has no place in the mesh",
            "fix the links above first",
        );
    }
    let ns = workload_entry_namespace(i.report);
    let Some(entry) = r.actual.as_ref().or(r.desired.as_ref()) else {
        return warning(
            k,
            "not checked: no WorkloadEntry reported",
            "see the WorkloadEntry link",
        );
    };
    let name = entry
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let labels = entry.pointer("/spec/labels").unwrap_or(&Value::Null);
    let wrong: Vec<String> = group_labels(i.vps, labels)
        .into_iter()
        .filter(|(key, want)| {
            let have = labels.get(*key).and_then(Value::as_str);
            have.is_none() || want.as_deref().is_some_and(|w| have != Some(w))
        })
        .map(|(key, want)| match want {
            Some(w) => format!("{key}={w}"),
            None => key.to_string(),
        })
        .collect();
    if !wrong.is_empty() {
        let which = if r.actual.is_some() {
            "the cluster's"
        } else {
            "sigma's"
        };
        return failed(
            k,
            format!(
                "{which} WorkloadEntry {name} lacks {}: Kiali would not attach it to its workload (WorkloadGroup {name})",
                wrong.join(", ")
            ),
            format!(
                "the reconciler restores sigma's labels at its next pass; compare `{}` with `{}`",
                kubectl_get(ns.as_deref(), name),
                kubectl_group(ns.as_deref(), name)
            ),
        );
    }
    let what = format!(
        "Kiali workload {name}: WorkloadGroup {name} (app {}, sigma.io/vps-id {}) holding WorkloadEntry {name}, the name its proxy reports",
        i.vps.purpose, i.vps.id
    );
    match r.mode.as_str() {
        "off" => {
            return warning(
                k,
                format!("{what}; but sigma-api runs with --mesh off and applies neither"),
                "see the WorkloadEntry link",
            );
        }
        "export" => {
            return warning(
                k,
                format!("{what}, applied by your GitOps pipeline, which sigma-api cannot see"),
                format!("check: `{}`", kubectl_group(ns.as_deref(), name)),
            );
        }
        _ => {}
    }
    let group_problem = r
        .sync
        .message
        .as_deref()
        .filter(|m| m.contains("WorkloadGroup"));
    match (r.sync.status, group_problem) {
        (MeshSyncStatus::Error, Some(m)) => failed(
            k,
            format!("WorkloadGroup {name}: {m}"),
            format!(
                "fix the cause; the reconciler retries at its next pass. Look: `{}`",
                kubectl_group(ns.as_deref(), name)
            ),
        ),
        (MeshSyncStatus::Synced, _) => ok(k, format!("{what}; applied at the last pass")),
        _ => warning(
            k,
            format!("{what}; {}", sync_text(&r.sync, i.now)),
            "see the WorkloadEntry link",
        ),
    }
}

fn heartbeat_stale(i: &Inputs<'_>) -> Option<String> {
    match i.vps.last_heartbeat_at {
        Some(t) if i.now - t > i.stale_after => Some(output::ago(t, i.now)),
        _ => None,
    }
}

fn agent_heartbeat(i: &Inputs<'_>) -> Link {
    let k = LinkKind::AgentHeartbeat;
    let h = &i.vps.hostname;
    match i.vps.last_heartbeat_at {
        None => failed(
            k,
            "its agent has never heartbeated",
            format!(
                "install and start sigma-agent on {h} (`sigmactl enroll create` prints the install command)"
            ),
        ),
        Some(t) if i.now - t > i.stale_after => failed(
            k,
            format!(
                "last heartbeat {} ({}), older than {}s",
                output::time(t),
                output::ago(t, i.now),
                i.stale_after.whole_seconds()
            ),
            format!(
                "on {h}: `systemctl status sigma-agent` and `journalctl -u sigma-agent`; check that it reaches sigma-api and that its key is not revoked"
            ),
        ),
        Some(t) => ok(k, format!("last heartbeat {}", output::ago(t, i.now))),
    }
}

fn agent_mesh_mode(i: &Inputs<'_>) -> Link {
    let k = LinkKind::AgentMeshMode;
    let h = &i.vps.hostname;
    let restart =
        format!("restart sigma-agent on {h} with --istio-enabled (AGENT_ISTIO_ENABLED=true)");
    match i.vps.agent_state.as_ref().and_then(|a| a.mode) {
        Some(AgentMode::Mesh) => ok(k, "mesh mode (pilot-agent runs Envoy under istiod)"),
        Some(AgentMode::Classic) => failed(
            k,
            "classic mode: the agent serves Envoy routes itself, no pilot-agent",
            restart,
        ),
        None if i.vps.agent_state.is_none() => failed(
            k,
            "its agent has reported no state",
            format!("run sigma-agent on {h} with --istio-enabled (AGENT_ISTIO_ENABLED=true)"),
        ),
        None => failed(
            k,
            "its agent reports no mode (an agent older than mesh mode)",
            format!("upgrade sigma-agent on {h}, then {restart}"),
        ),
    }
}

fn mesh_state<'a>(i: &Inputs<'a>) -> Option<&'a MeshAgentState> {
    i.vps
        .agent_state
        .as_ref()
        .and_then(|a| a.mesh_state.as_ref())
}

fn proxy(i: &Inputs<'_>) -> Link {
    let k = LinkKind::Proxy;
    let h = &i.vps.hostname;
    let Some(m) = mesh_state(i) else {
        return failed(
            k,
            "its agent reports no pilot-agent state",
            "see the agent links above: only an agent in mesh mode runs pilot-agent",
        );
    };
    let mut facts = Vec::new();
    if let Some(b) = &m.bundle_version {
        facts.push(format!("bundle {b}"));
    }
    facts.push(format!("{} restart(s) of pilot-agent", m.restarts));
    let mut detail = facts.join(", ");
    if let Some(age) = heartbeat_stale(i) {
        detail.push_str(&format!("; reported {age}, may be out of date"));
    }
    let reason = |what: &str| match &m.reason {
        Some(r) => format!("{what}: {r} ({detail})"),
        None => format!("{what} ({detail})"),
    };
    let logs = format!("on {h}: `journalctl -u sigma-agent` (pilot-agent's output is in it)");
    match m.state {
        MeshPhase::Ready => ok(k, reason("ready: Envoy answers /healthz/ready")),
        MeshPhase::Installing | MeshPhase::Starting => warning(
            k,
            reason(m.state.as_str()),
            format!("give it a minute; if it stays {}, {logs}", m.state.as_str()),
        ),
        MeshPhase::Degraded => failed(
            k,
            reason("degraded"),
            format!(
                "{logs}; check that it reaches istiod through the east-west gateway (port 15012) and that its istio-token is valid"
            ),
        ),
        MeshPhase::Stopped => failed(
            k,
            reason("stopped"),
            "the agent stops pilot-agent when the VPS retires or leaves the mesh; fix the links above, then restart sigma-agent",
        ),
    }
}

fn expiry(
    i: &Inputs<'_>,
    k: LinkKind,
    at: Option<OffsetDateTime>,
    warn_before: Duration,
    what: &str,
    fix_expired: String,
    fix_soon: String,
) -> Link {
    let Some(m) = mesh_state(i) else {
        return warning(
            k,
            format!("unknown: the agent reports no {what}"),
            "see the pilot-agent link",
        );
    };
    let Some(t) = at else {
        let why = if m.state == MeshPhase::Ready {
            format!("the agent does not report the {what}'s expiry (an older agent?)")
        } else {
            format!(
                "no {what} reported yet (pilot-agent is {})",
                m.state.as_str()
            )
        };
        return warning(k, why, "see the pilot-agent link");
    };
    if t <= i.now {
        failed(k, format!("expired {}", until(t, i.now)), fix_expired)
    } else if t - i.now < warn_before {
        warning(k, format!("expires soon: {}", until(t, i.now)), fix_soon)
    } else {
        ok(k, format!("valid until {}", until(t, i.now)))
    }
}

fn certificate(i: &Inputs<'_>) -> Link {
    let h = &i.vps.hostname;
    expiry(
        i,
        LinkKind::Certificate,
        mesh_state(i).and_then(|m| m.cert_expires_at),
        CERT_WARN_BEFORE,
        "workload certificate",
        format!(
            "the agent reinstalls the bundle when it finds the certificate expired; if it stays expired, pilot-agent on {h} cannot reach istiod to renew it: check the east-west gateway (port 15012) and the istio-token link"
        ),
        format!(
            "pilot-agent renews it at half its life, so renewals are failing: on {h}, `journalctl -u sigma-agent` for pilot-agent's errors"
        ),
    )
}

fn token(i: &Inputs<'_>) -> Link {
    let h = &i.vps.hostname;
    expiry(
        i,
        LinkKind::Token,
        mesh_state(i).and_then(|m| m.token_expires_at),
        TOKEN_WARN_BEFORE,
        "istio-token",
        format!(
            "the agent refreshes it from GET /api/agent/istio-bootstrap at 50-70 % of its life, so those fetches fail: see `journalctl -u sigma-agent` on {h}, and `sigmactl mesh bootstrap {h} -o DIR` shows the error sigma-api gives"
        ),
        format!(
            "refreshes are failing: see `journalctl -u sigma-agent` on {h}, and `sigmactl mesh bootstrap {h} -o DIR` shows the error sigma-api gives"
        ),
    )
}

fn workload_health(i: &Inputs<'_>) -> Link {
    let k = LinkKind::WorkloadHealth;
    let r = match i.report {
        MeshReport::Unsupported => {
            return warning(
                k,
                "unknown: sigma-api too old to report istiod's health verdict",
                "upgrade sigma-api (GET /api/vps/{id}/mesh), or read the WorkloadEntry's Healthy condition with kubectl",
            );
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return warning(
            k,
            "not checked: the VPS has no place in the mesh",
            "fix the links above first",
        );
    }
    match &r.health {
        Some(h) if h.healthy => ok(k, "istiod reports the WorkloadEntry Healthy"),
        Some(h) => {
            let mut why = String::from("istiod reports the WorkloadEntry not healthy");
            for part in [&h.reason, &h.message].into_iter().flatten() {
                why.push_str(&format!(": {part}"));
            }
            if let Some(t) = &h.last_transition_time {
                why.push_str(&format!(" (since {t})"));
            }
            failed(
                k,
                why,
                format!(
                    "the WorkloadGroup's readiness probe fails on the VPS: check that purpose {}'s service runs and answers the probe's port and path (see `sigmactl mesh export`), and the pilot-agent link",
                    i.vps.purpose
                ),
            )
        }
        None if r.actual.is_some() => warning(
            k,
            "istiod has given no health verdict yet",
            "istiod sets the Healthy condition once pilot-agent is connected and the WorkloadGroup's probe has run; see the pilot-agent link",
        ),
        None => warning(
            k,
            "unknown: sigma-api cannot see a WorkloadEntry in the cluster",
            "see the WorkloadEntry link",
        ),
    }
}

fn prometheus_scrape(i: &Inputs<'_>, p: &PromAnswers) -> Link {
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

fn xboard_requests(i: &Inputs<'_>, p: &PromAnswers) -> Link {
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

/// Whether every active route of the VPS forwards now, each named `name:port`.
fn route_listeners(i: &Inputs<'_>, plan: &RoutePlan) -> Link {
    let k = LinkKind::RouteListeners;
    let h = &i.vps.hostname;
    if plan.routes.is_empty() {
        return ok(k, "no active routes");
    }
    let named = |rs: &[&RoutePlanEntry]| {
        rs.iter()
            .map(|r| format!("{}:{}", r.name, r.listen_port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let not_carried: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| r.runs == RouteRuns::NotCarried)
        .collect();
    if !not_carried.is_empty() {
        return failed(
            k,
            format!(
                "not carried in mesh mode, so not forwarding: {} ({})",
                named(&not_carried),
                not_carried
                    .iter()
                    .flat_map(|r| r.issues.iter().map(|x| x.message.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "`sigmactl routes plan {h} --mode mesh` says what each needs; fix the route or its target, or run {h} in classic mode"
            ),
        );
    }
    let not_live: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| matches!(r.listener, Some(RouteListener::NotLive { .. })))
        .collect();
    if !not_live.is_empty() {
        let why = not_live
            .iter()
            .filter_map(|r| match &r.listener {
                Some(RouteListener::NotLive { reason }) => Some(format!("{}: {reason}", r.name)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ");
        let fix = match plan.agent_mode {
            AgentMode::Mesh => format!(
                "istiod builds each from the VPS's Sidecar (`sigmactl mesh export`, `kubectl -n sigma get sidecar -o yaml`); on {h} `ss -ltnp` shows what holds a port"
            ),
            AgentMode::Classic => format!(
                "check the Envoy of {h} is running and connected to sigma-agent's xDS (the VPS's agent_state: xds_clients, last_nack)"
            ),
        };
        return failed(k, format!("not live: {why}"), fix);
    }
    let unknown: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| !matches!(r.listener, Some(RouteListener::Live)))
        .collect();
    if let Some(first) = unknown.first() {
        let why = match &first.listener {
            Some(RouteListener::Unknown { reason }) => reason.clone(),
            _ => "the plan does not say".to_string(),
        };
        return warning(
            k,
            format!("unknown for {}: {why}", named(&unknown)),
            "see the agent heartbeat and proxy links",
        );
    }
    let all: Vec<_> = plan.routes.iter().collect();
    ok(
        k,
        format!(
            "{} route(s) live in {} mode: {}",
            all.len(),
            match plan.agent_mode {
                AgentMode::Mesh => "mesh",
                AgentMode::Classic => "classic",
            },
            named(&all)
        ),
    )
}

/// Every link of the VPS's chain, in order.
pub fn evaluate(i: &Inputs<'_>) -> Vec<Link> {
    let mut links = vec![
        vps_active(i.vps),
        mesh_enabled(i),
        workload_entry(i),
        kiali_workload(i),
        agent_heartbeat(i),
        agent_mesh_mode(i),
        proxy(i),
        certificate(i),
        token(i),
        workload_health(i),
    ];
    links.extend(dataplane::links(
        &i.vps.hostname,
        &i.vps.purpose,
        mesh_state(i),
        i.now,
        i.stale_after,
    ));
    if let Some(plan) = i.routes {
        links.push(route_listeners(i, plan));
    }
    if let Some(p) = i.prometheus {
        links.push(prometheus_scrape(i, p));
        links.push(xboard_requests(i, p));
    }
    links
}

/// How many links have each outcome: (ok, warning, failed).
pub fn tally(links: &[Link]) -> (usize, usize, usize) {
    let n = |o| links.iter().filter(|l| l.result == o).count();
    (n(Outcome::Ok), n(Outcome::Warning), n(Outcome::Failed))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sigma_types::mesh::WorkloadHealth;
    use sigma_types::{AgentState, VpsMeshStatus};

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// A VPS whose whole chain works (as far as the VPS object tells).
    fn healthy_vps() -> Vps {
        let v = json!({
            "id": "6f1c1d0e-0000-4000-8000-000000000001",
            "hostname": "edge-1.example.net",
            "alias": null, "provider": null, "country": null, "city": null,
            "ip_addresses": [{"ip": "203.0.113.7", "label": "public"}],
            "purpose": "xrayr", "status": "active", "tags": [],
            "monitoring": true, "node_exporter_port": 9100,
            "system_info": null,
            "agent_state": null,
            "last_heartbeat_at": "2027-01-15T07:59:50Z",
            "desired_version": 3, "envoy_version": 0,
            "created_at": "2027-01-01T00:00:00Z", "updated_at": "2027-01-01T00:00:00Z",
            "deleted_at": null,
            "mesh_opt_out": false,
            "mesh": {"status": "synced", "message": null, "last_attempt_at": null,
                     "workload_entry": "vps-edge-1-example-net"}
        });
        let mut v: Vps = serde_json::from_value(v).unwrap();
        v.agent_state = Some(AgentState {
            mode: Some(AgentMode::Mesh),
            mesh_state: Some(MeshAgentState {
                state: MeshPhase::Ready,
                reason: None,
                bundle_version: Some("b1".into()),
                token_expires_at: Some(now() + Duration::minutes(40)),
                cert_expires_at: Some(now() + Duration::hours(20)),
                restarts: 0,
                dataplane: dataplane::tests::good().dataplane,
            }),
            ..AgentState::default()
        });
        v
    }

    fn entry() -> Value {
        json!({"metadata": {"name": "vps-edge-1-example-net", "namespace": "sigma"},
               "spec": {"labels": {
                   "app": "xrayr", "version": "v1",
                   "service.istio.io/canonical-name": "xrayr",
                   "service.istio.io/canonical-revision": "v1",
                   "sigma.io/vps-id": "6f1c1d0e-0000-4000-8000-000000000001",
                   "app.kubernetes.io/managed-by": "sigma"}}})
    }

    fn report() -> MeshReport {
        MeshReport::Reported(Box::new(VpsMeshReport {
            vps_id: healthy_vps().id,
            hostname: "edge-1.example.net".into(),
            mode: "kubernetes".into(),
            meshed: true,
            reason: None,
            sync: VpsMeshStatus {
                status: MeshSyncStatus::Synced,
                message: None,
                last_attempt_at: None,
                workload_entry: Some("vps-edge-1-example-net".into()),
            },
            desired: Some(entry()),
            actual: Some(entry()),
            in_sync: Some(true),
            health: Some(WorkloadHealth {
                healthy: true,
                reason: None,
                message: None,
                last_transition_time: None,
            }),
            cluster_error: None,
        }))
    }

    /// A VPS without routes.
    const NO_ROUTES: RoutePlan = RoutePlan {
        vps_id: uuid::Uuid::nil(),
        hostname: String::new(),
        mode: sigma_types::PlanMode::Current,
        agent_mode: AgentMode::Mesh,
        mesh_registrar: String::new(),
        routes: Vec::new(),
    };

    fn planned(
        name: &str,
        port: u16,
        runs: RouteRuns,
        listener: Option<RouteListener>,
    ) -> RoutePlanEntry {
        RoutePlanEntry {
            route_id: uuid::Uuid::nil(),
            name: name.into(),
            listen_port: port,
            upstream: "pool vpn-exit:vpn".into(),
            runs,
            mesh_host: None,
            listen_address: None,
            listener,
            issues: Vec::new(),
        }
    }

    #[test]
    fn route_listeners_verdicts() {
        let v = healthy_vps();
        let r = report();
        let link = |plan: Option<&RoutePlan>| {
            let links = evaluate(&Inputs {
                vps: &v,
                purpose_mesh: Some(&mesh_on()),
                report: &r,
                now: now(),
                stale_after: DEFAULT_STALE_AFTER,
                prometheus: None,
                routes: plan,
            });
            links
                .into_iter()
                .find(|l| l.link == LinkKind::RouteListeners)
        };
        assert!(link(None).is_none(), "no plan, no route link");
        let link = |plan: Option<&RoutePlan>| link(plan).expect("the route link");
        let l = link(Some(&NO_ROUTES));
        assert_eq!(
            (l.result, l.reason.as_str()),
            (Outcome::Ok, "no active routes")
        );

        let mut p = NO_ROUTES;
        p.routes = vec![
            planned("exits", 443, RouteRuns::Mesh, Some(RouteListener::Live)),
            planned("one", 993, RouteRuns::Mesh, Some(RouteListener::Live)),
        ];
        let l = link(Some(&p));
        assert_eq!(l.result, Outcome::Ok, "{l:?}");
        assert!(l.reason.contains("exits:443, one:993"), "{l:?}");
        p.routes[1].listener = Some(RouteListener::Unknown {
            reason: "its agent has not reported".into(),
        });
        let l = link(Some(&p));
        assert_eq!(l.result, Outcome::Warning, "{l:?}");
        assert!(
            l.reason.contains("one:993") && l.reason.contains("has not reported"),
            "{l:?}"
        );
        p.routes[0].listener = Some(RouteListener::NotLive {
            reason: "Envoy has no listener bound at 192.0.2.1:443".into(),
        });
        let l = link(Some(&p));
        assert_eq!(l.result, Outcome::Failed, "{l:?}");
        assert!(l.reason.contains("exits: Envoy has no listener"), "{l:?}");
        assert!(
            l.fix.as_deref().unwrap_or_default().contains("ss -ltnp"),
            "{l:?}"
        );
        p.routes[1] = planned("pp", 8444, RouteRuns::NotCarried, None);
        p.routes[1].issues = vec![sigma_types::RouteIssueReport {
            code: "proxy_protocol_to_fleet".into(),
            message: "a PROXY header toward a fleet target".into(),
        }];
        let l = link(Some(&p));
        assert_eq!(l.result, Outcome::Failed, "{l:?}");
        assert!(
            l.reason.contains("pp:8444") && l.reason.contains("PROXY header"),
            "{l:?}"
        );
    }

    fn mesh_on() -> Value {
        json!({"enabled": true})
    }

    fn run(v: &Vps, mesh: &Value, r: &MeshReport, p: Option<&PromAnswers>) -> Vec<Link> {
        evaluate(&Inputs {
            vps: v,
            purpose_mesh: Some(mesh),
            report: r,
            now: now(),
            stale_after: DEFAULT_STALE_AFTER,
            prometheus: p,
            routes: Some(&NO_ROUTES),
        })
    }

    fn get(links: &[Link], k: LinkKind) -> &Link {
        links.iter().find(|l| l.link == k).unwrap()
    }

    fn edit_report(f: impl FnOnce(&mut VpsMeshReport)) -> MeshReport {
        let MeshReport::Reported(mut r) = report() else {
            unreachable!()
        };
        f(&mut r);
        MeshReport::Reported(r)
    }

    #[test]
    fn a_healthy_chain_is_all_ok_and_fixes_are_only_for_problems() {
        let prom = PromAnswers {
            url: "http://prom".into(),
            up: Ok(vec![1.0]),
            xboard_rate: Some(Ok(0.5)),
        };
        let links = run(&healthy_vps(), &mesh_on(), &report(), Some(&prom));
        assert_eq!(links.len(), 18);
        for l in &links {
            assert_eq!(l.result, Outcome::Ok, "{l:?}");
            assert!(l.fix.is_none());
        }
        assert_eq!(tally(&links), (18, 0, 0));
        let links = run(&healthy_vps(), &mesh_on(), &report(), None);
        assert_eq!(links.len(), 16, "Prometheus links only with --prometheus");
    }

    #[test]
    fn not_mesh_enabled_fails_with_the_fix() {
        let links = run(&healthy_vps(), &json!({}), &report(), None);
        let l = get(&links, LinkKind::MeshEnabled);
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("purpose xrayr has the mesh off"), "{l:?}");
        assert!(
            l.fix
                .as_deref()
                .unwrap()
                .contains("sigmactl purposes edit xrayr"),
            "{l:?}"
        );

        let mut v = healthy_vps();
        v.mesh_opt_out = true;
        let links = run(&v, &mesh_on(), &report(), None);
        let l = get(&links, LinkKind::MeshEnabled);
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.fix.as_deref().unwrap().contains("--mesh-opt-out false"));

        // sigma-api's own verdict counts too (no address, …).
        let r = edit_report(|r| {
            r.meshed = false;
            r.reason = Some("it has no IP address".into());
            r.actual = None;
            r.health = None;
        });
        let links = run(&healthy_vps(), &mesh_on(), &r, None);
        assert_eq!(get(&links, LinkKind::MeshEnabled).result, Outcome::Failed);
        assert!(
            get(&links, LinkKind::MeshEnabled)
                .reason
                .contains("no IP address")
        );
        assert_eq!(get(&links, LinkKind::WorkloadEntry).result, Outcome::Failed);
        assert_eq!(
            get(&links, LinkKind::WorkloadHealth).result,
            Outcome::Warning
        );
    }

    #[test]
    fn lifecycle_states_other_than_active_fail() {
        for (s, needle) in [
            (VpsStatus::Provisioning, "sigmactl enroll create"),
            (VpsStatus::Retired, "--status provisioning"),
            (VpsStatus::Deleted, "sigmactl vps restore"),
        ] {
            let mut v = healthy_vps();
            v.status = s;
            let l = vps_active(&v);
            assert_eq!(l.result, Outcome::Failed);
            assert!(l.fix.unwrap().contains(needle));
        }
    }

    #[test]
    fn workload_entry_verdicts() {
        let v = healthy_vps();
        let we =
            |r: &MeshReport| get(&run(&v, &mesh_on(), r, None), LinkKind::WorkloadEntry).clone();

        let l = we(&edit_report(|r| r.mode = "off".into()));
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("--mesh off"));

        let l = we(&edit_report(|r| {
            r.mode = "export".into();
            r.actual = None;
            r.in_sync = None;
        }));
        assert_eq!(l.result, Outcome::Warning);
        assert!(
            l.fix
                .unwrap()
                .contains("kubectl -n sigma get workloadentry vps-edge-1-example-net")
        );

        let l = we(&edit_report(|r| {
            r.cluster_error = Some("connection refused".into())
        }));
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("connection refused"));

        let l = we(&edit_report(|r| {
            r.actual = None;
            r.in_sync = None;
            r.sync.status = MeshSyncStatus::Error;
            r.sync.message = Some("admission webhook denied".into());
        }));
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason.contains("not in the cluster")
                && l.reason.contains("admission webhook denied")
        );

        let l = we(&edit_report(|r| r.in_sync = Some(false)));
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.fix.unwrap().contains("--show-managed-fields"));
        let l = we(&edit_report(|r| {
            r.in_sync = Some(false);
            r.sync.status = MeshSyncStatus::Pending;
        }));
        assert_eq!(l.result, Outcome::Warning, "a change not yet applied");
    }

    #[test]
    fn kiali_workload_verdicts() {
        let v = healthy_vps();
        let kw =
            |r: &MeshReport| get(&run(&v, &mesh_on(), r, None), LinkKind::KialiWorkload).clone();

        let l = kw(&report());
        assert_eq!(l.result, Outcome::Ok, "{l:?}");
        assert!(
            l.reason.contains(
                "Kiali workload vps-edge-1-example-net: WorkloadGroup vps-edge-1-example-net"
            ),
            "{l:?}"
        );

        // The entry lost the id its group selects by: Kiali would not attach it.
        let l = kw(&edit_report(|r| {
            r.actual.as_mut().unwrap()["spec"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove("sigma.io/vps-id");
        }));
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason
                .contains("sigma.io/vps-id=6f1c1d0e-0000-4000-8000-000000000001"),
            "{l:?}"
        );
        assert!(
            l.fix
                .unwrap()
                .contains("kubectl -n sigma get workloadgroup vps-edge-1-example-net")
        );
        // A canonical revision that differs from the version.
        let l = kw(&edit_report(|r| {
            r.actual.as_mut().unwrap()["spec"]["labels"]["service.istio.io/canonical-revision"] =
                json!("v2");
        }));
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason.contains("service.istio.io/canonical-revision=v1"),
            "{l:?}"
        );
        // Another purpose's labels.
        let l = kw(&edit_report(|r| {
            r.actual.as_mut().unwrap()["spec"]["labels"]["app"] = json!("vpn-exit");
        }));
        assert_eq!(l.result, Outcome::Failed);

        // The reconciler could not apply the group.
        let l = kw(&edit_report(|r| {
            r.sync.status = MeshSyncStatus::Error;
            r.sync.message = Some(
                "a WorkloadGroup named vps-edge-1-example-net exists in namespace sigma and is not managed by sigma; sigma leaves it alone".into(),
            );
        }));
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("not managed by sigma"), "{l:?}");

        let l = kw(&edit_report(|r| r.sync.status = MeshSyncStatus::Pending));
        assert_eq!(l.result, Outcome::Warning);
        let l = kw(&edit_report(|r| r.mode = "export".into()));
        assert_eq!(l.result, Outcome::Warning);
        assert!(l.fix.unwrap().contains("get workloadgroup"));
        let l = kw(&edit_report(|r| r.mode = "off".into()));
        assert_eq!(l.result, Outcome::Warning);
        let l = kw(&edit_report(|r| {
            r.meshed = false;
            r.reason = Some("opted out of the mesh".into());
        }));
        assert_eq!(l.result, Outcome::Warning);
        let l = kw(&MeshReport::Unsupported);
        assert_eq!(l.result, Outcome::Warning);
        assert!(
            l.fix
                .unwrap()
                .contains("get workloadgroup vps-edge-1-example-net")
        );
    }

    #[test]
    fn an_old_sigma_api_falls_back_to_the_recorded_status() {
        let v = healthy_vps();
        let links = run(&v, &mesh_on(), &MeshReport::Unsupported, None);
        let l = get(&links, LinkKind::WorkloadEntry);
        assert_eq!(l.result, Outcome::Warning);
        assert!(
            l.reason
                .contains("sigma-api too old to report the cluster's WorkloadEntry")
        );
        assert!(l.reason.contains("recorded sync status synced"));
        assert_eq!(
            get(&links, LinkKind::WorkloadHealth).result,
            Outcome::Warning
        );

        let mut v = healthy_vps();
        v.mesh.status = MeshSyncStatus::Error;
        v.mesh.message = Some("forbidden".into());
        let l = get(
            &run(&v, &mesh_on(), &MeshReport::Unsupported, None),
            LinkKind::WorkloadEntry,
        )
        .clone();
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("forbidden"));
    }

    #[test]
    fn heartbeats_and_agent_mode() {
        let mut v = healthy_vps();
        v.last_heartbeat_at = None;
        let l = agent_heartbeat(&Inputs {
            vps: &v,
            purpose_mesh: None,
            report: &report(),
            now: now(),
            stale_after: DEFAULT_STALE_AFTER,
            prometheus: None,
            routes: None,
        });
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("never"));

        let mut v = healthy_vps();
        v.last_heartbeat_at = Some(now() - Duration::minutes(5));
        let links = run(&v, &mesh_on(), &report(), None);
        let l = get(&links, LinkKind::AgentHeartbeat);
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason.contains("5m ago") && l.reason.contains("90s"),
            "{l:?}"
        );
        assert!(
            get(&links, LinkKind::Proxy)
                .reason
                .contains("may be out of date"),
            "a stale report is flagged"
        );

        let mut v = healthy_vps();
        v.agent_state.as_mut().unwrap().mode = Some(AgentMode::Classic);
        v.agent_state.as_mut().unwrap().mesh_state = None;
        let links = run(&v, &mesh_on(), &report(), None);
        let l = get(&links, LinkKind::AgentMeshMode);
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.fix.as_deref().unwrap().contains("--istio-enabled"));
        assert_eq!(get(&links, LinkKind::Proxy).result, Outcome::Failed);
        assert_eq!(get(&links, LinkKind::Token).result, Outcome::Warning);
    }

    #[test]
    fn proxy_phases() {
        for (phase, want) in [
            (MeshPhase::Ready, Outcome::Ok),
            (MeshPhase::Installing, Outcome::Warning),
            (MeshPhase::Starting, Outcome::Warning),
            (MeshPhase::Degraded, Outcome::Failed),
            (MeshPhase::Stopped, Outcome::Failed),
        ] {
            let mut v = healthy_vps();
            let m = v.agent_state.as_mut().unwrap().mesh_state.as_mut().unwrap();
            m.state = phase;
            m.reason = Some("Envoy not ready for 3m".into());
            m.restarts = 4;
            let l = get(&run(&v, &mesh_on(), &report(), None), LinkKind::Proxy).clone();
            assert_eq!(l.result, want, "{phase:?}");
            assert!(l.reason.contains("Envoy not ready for 3m") && l.reason.contains("4 restart"));
        }
    }

    #[test]
    fn expiries() {
        let with = |token: Duration, cert: Duration| {
            let mut v = healthy_vps();
            let m = v.agent_state.as_mut().unwrap().mesh_state.as_mut().unwrap();
            m.token_expires_at = Some(now() + token);
            m.cert_expires_at = Some(now() + cert);
            let links = run(&v, &mesh_on(), &report(), None);
            (
                get(&links, LinkKind::Token).clone(),
                get(&links, LinkKind::Certificate).clone(),
            )
        };
        let (t, c) = with(Duration::minutes(-3), Duration::hours(-1));
        assert_eq!((t.result, c.result), (Outcome::Failed, Outcome::Failed));
        assert!(
            t.reason.contains("expired") && t.reason.contains("3m ago"),
            "{t:?}"
        );
        assert!(
            t.fix
                .unwrap()
                .contains("sigmactl mesh bootstrap edge-1.example.net")
        );
        let (t, c) = with(Duration::minutes(10), Duration::minutes(30));
        assert_eq!((t.result, c.result), (Outcome::Warning, Outcome::Warning));
        assert!(t.reason.contains("in 10m"));
        let (t, c) = with(Duration::minutes(20), Duration::hours(2));
        assert_eq!((t.result, c.result), (Outcome::Ok, Outcome::Ok));

        let mut v = healthy_vps();
        let m = v.agent_state.as_mut().unwrap().mesh_state.as_mut().unwrap();
        m.token_expires_at = None;
        m.state = MeshPhase::Installing;
        let l = get(&run(&v, &mesh_on(), &report(), None), LinkKind::Token).clone();
        assert_eq!(l.result, Outcome::Warning);
        assert!(l.reason.contains("installing"));
    }

    #[test]
    fn health_verdicts() {
        let l = |r: &MeshReport| {
            get(
                &run(&healthy_vps(), &mesh_on(), r, None),
                LinkKind::WorkloadHealth,
            )
            .clone()
        };
        let bad = l(&edit_report(|r| {
            r.health = Some(WorkloadHealth {
                healthy: false,
                reason: Some("HTTPGetFailed".into()),
                message: Some("connection refused".into()),
                last_transition_time: Some("2027-01-15T07:00:00Z".into()),
            })
        }));
        assert_eq!(bad.result, Outcome::Failed);
        assert!(
            bad.reason
                .contains("HTTPGetFailed: connection refused (since 2027-01-15T07:00:00Z)")
        );
        assert_eq!(
            l(&edit_report(|r| r.health = None)).result,
            Outcome::Warning
        );
    }

    #[test]
    fn prometheus_verdicts() {
        let v = healthy_vps();
        let p = |up: Result<Vec<f64>, String>, x: Option<Result<f64, String>>| {
            let a = PromAnswers {
                url: "http://prom:9090".into(),
                up,
                xboard_rate: x,
            };
            let links = run(&v, &mesh_on(), &report(), Some(&a));
            (
                get(&links, LinkKind::PrometheusScrape).clone(),
                get(&links, LinkKind::XboardRequests).clone(),
            )
        };
        let (s, x) = p(Ok(vec![]), Some(Ok(0.0)));
        assert_eq!((s.result, x.result), (Outcome::Failed, Outcome::Warning));
        assert!(s.reason.contains("no Envoy target"));
        assert!(x.reason.contains("source_workload vps-edge-1-example-net"));
        let (s, _) = p(Ok(vec![0.0]), Some(Ok(0.1)));
        assert_eq!(s.result, Outcome::Failed);
        assert!(s.fix.unwrap().contains("15020"));
        let (s, x) = p(
            Err("connection refused".into()),
            Some(Err("connection refused".into())),
        );
        assert_eq!((s.result, x.result), (Outcome::Failed, Outcome::Failed));
        assert!(s.reason.contains("http://prom:9090"));
        let (_, x) = p(Ok(vec![1.0]), None);
        assert_eq!(x.result, Outcome::Warning);
    }

    #[test]
    fn queries_and_answers() {
        assert_eq!(
            up_query("edge-1.example.net"),
            r#"up{sigma_target_kind="envoy", hostname="edge-1.example.net"}"#
        );
        assert_eq!(
            xboard_query("a\"b"),
            r#"sum(rate(istio_requests_total{source_workload="a\"b", destination_service_name=~"xboard.*"}[10m]))"#
        );
        let a = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"hostname": "h"}, "value": [1.0, "1"]},
            {"metric": {"hostname": "h"}, "value": [1.0, "NaN"]}
        ]}});
        let v = prom_vector(&a).unwrap();
        assert_eq!(v[0], 1.0);
        assert!(v[1].is_nan());
        let e = prom_vector(
            &json!({"status": "error", "errorType": "bad_data", "error": "parse error"}),
        )
        .unwrap_err();
        assert!(e.contains("bad_data: parse error"));
        assert!(
            prom_vector(
                &json!({"status": "success", "data": {"resultType": "matrix", "result": []}})
            )
            .is_err()
        );
        assert!(prom_vector(&json!({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, 2]}]}})).is_err());
    }

    #[test]
    fn links_serialize_for_scripts() {
        let l = failed(LinkKind::WorkloadEntry, "r", "f");
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"link": "workload-entry", "result": "failed", "reason": "r", "fix": "f"})
        );
    }
}

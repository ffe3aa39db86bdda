//! `mesh doctor`: the links of one VPS's mesh chain, judged from what sigma-api (and
//! optionally Prometheus) report.
//!
//! Everything here is pure: [`evaluate`] takes the VPS, its purpose's mesh settings, the mesh
//! report of `GET /api/vps/{id}/mesh` (or the fact that sigma-api has no such endpoint), the
//! time, and Prometheus' answers, and returns the links in chain order. Fetching is the
//! command's business (`commands::mesh`), so every verdict can be tested without a server.
//!
//! This module holds the link types, the inputs and [`evaluate`]; the links themselves are
//! judged in submodules along the chain: `control_plane` (sigma-api and the cluster),
//! `agent` (the VPS's agent and proxy), [`dataplane`] (Envoy's reading), `routes` and
//! `prometheus` (whose queries are public here, as before the split).

use serde::Serialize;
use serde_json::Value;
use sigma_types::mesh::VpsMeshReport;
use sigma_types::{RoutePlan, Vps};
use time::{Duration, OffsetDateTime};

use crate::output;

mod agent;
mod control_plane;
pub mod dataplane;
mod prometheus;
mod routes;

use agent::*;
use control_plane::*;
pub use prometheus::*;
use routes::*;

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

fn until(t: OffsetDateTime, now: OffsetDateTime) -> String {
    format!("{} ({})", output::time(t), output::ago(t, now))
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
    use sigma_types::mesh::{MeshAgentState, MeshPhase, WorkloadHealth};
    use sigma_types::{
        AgentMode, AgentState, MeshSyncStatus, RouteListener, RoutePlanEntry, RouteRuns,
        VpsMeshStatus, VpsStatus,
    };

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

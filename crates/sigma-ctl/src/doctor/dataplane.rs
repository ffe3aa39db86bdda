//! The data-plane links of `mesh doctor`, judged from the reading the agent reports in
//! `mesh_state.dataplane` (Envoy's admin API and `/etc/hosts` on the VPS):
//!
//! | link | failed when | warning when |
//! |---|---|---|
//! | `xds-connected` | Envoy lost its xDS stream to istiod | not readable |
//! | `hosts-block` | an egress host is missing from `/etc/hosts` or resolves elsewhere | not readable |
//! | `egress-listener` | an egress entry's loopback listener is not bound | not readable |
//! | `egress-endpoints` | Envoy holds no cluster, or 0 healthy endpoints, for an egress host | not readable |
//! | `egress-responses` | — | 5xx or connect-failure share above [`FAILURE_WARN_SHARE`] |
//!
//! Each reason lists every egress host concerned, as `host:port`, in the bundle's order, so
//! scripts can match on the link name and the host.

use sigma_types::mesh::dataplane::{
    EgressDataPlane, EgressEndpoints, EgressResponses, HostsEntry, ListenerState, MeshDataPlane,
    XdsConnection,
};
use sigma_types::mesh::{MeshAgentState, MeshPhase};
use time::{Duration, OffsetDateTime};

use super::{Link, LinkKind, failed, ok, output, warning};

/// Share of 5xx responses (of all responses), or of failed connection attempts (of all
/// attempts), above which `egress-responses` warns.
pub const FAILURE_WARN_SHARE: f64 = 0.05;

/// Fewest responses (or connection attempts) before a share is judged: a single 503 of the
/// first request says little.
pub const MIN_SAMPLE: u64 = 20;

/// What the stats-matcher hint in an `unknown` reason looks like (the agent's wording).
const MATCHER: &str = "proxyStatsMatcher";

/// The five links, in chain order.
pub(super) fn links(
    hostname: &str,
    purpose: &str,
    m: Option<&MeshAgentState>,
    now: OffsetDateTime,
    stale_after: Duration,
) -> Vec<Link> {
    let kinds = [
        LinkKind::XdsConnected,
        LinkKind::HostsBlock,
        LinkKind::EgressListener,
        LinkKind::EgressEndpoints,
        LinkKind::EgressResponses,
    ];
    let Some(m) = m else {
        return kinds
            .map(|k| {
                warning(
                    k,
                    "unknown: its agent reports no pilot-agent state",
                    "see the pilot-agent link",
                )
            })
            .to_vec();
    };
    let Some(d) = &m.dataplane else {
        let why = if matches!(m.state, MeshPhase::Installing | MeshPhase::Stopped) {
            format!(
                "unknown: no data-plane reading while pilot-agent is {}",
                m.state.as_str()
            )
        } else {
            "unknown: its agent reports no data-plane reading (older than this sigmactl, or no reading yet)".to_string()
        };
        return kinds
            .map(|k| {
                warning(
                    k,
                    why.clone(),
                    format!(
                        "see the pilot-agent link; an agent that reports none while ready needs an upgrade (sigma-agent on {hostname})"
                    ),
                )
            })
            .to_vec();
    };
    let age = if now - d.read_at > stale_after {
        format!(
            " (read {}, may be out of date)",
            output::ago(d.read_at, now)
        )
    } else {
        String::new()
    };
    let c = Ctx {
        hostname,
        purpose,
        d,
        age,
    };
    vec![
        c.xds(),
        c.hosts_block(),
        c.listener(),
        c.endpoints(),
        c.responses(),
    ]
}

struct Ctx<'a> {
    hostname: &'a str,
    purpose: &'a str,
    d: &'a MeshDataPlane,
    /// Appended to every reason when the reading is old.
    age: String,
}

fn name(e: &EgressDataPlane) -> String {
    format!("{}:{}", e.host, e.port)
}

fn joined(items: &[String]) -> String {
    items.join("; ")
}

/// `service.namespace` of a cluster-local host name, for kubectl hints.
fn service_of(host: &str) -> Option<(&str, &str)> {
    let mut parts = host.split('.');
    let (svc, ns, kind) = (parts.next()?, parts.next()?, parts.next()?);
    (kind == "svc").then_some((svc, ns))
}

impl Ctx<'_> {
    fn omitted(&self) -> String {
        if self.d.omitted > 0 {
            format!(
                "; {} more egress host(s) not reported (the report is bounded)",
                self.d.omitted
            )
        } else {
            String::new()
        }
    }

    /// The ok link when the purpose has no egress hosts.
    fn no_egress(&self, k: LinkKind) -> Option<Link> {
        (self.d.egress.is_empty() && self.d.omitted == 0).then(|| {
            ok(
                k,
                format!(
                    "purpose {} declares no egress host: nothing to check{}",
                    self.purpose, self.age
                ),
            )
        })
    }

    /// A warning listing the hosts whose fact could not be read.
    fn unknown(&self, k: LinkKind, what: &str, unknown: &[String], fix: &str) -> Link {
        let stats = unknown.iter().any(|u| u.contains(MATCHER));
        warning(
            k,
            format!("unknown {what}: {}{}", joined(unknown), self.age),
            if stats {
                "add the prefix the reason names to defaultConfig.proxyStatsMatcher.inclusionPrefixes of Istio's mesh config (Istio's bootstrap drops those stats by default): sigma-api copies defaultConfig into each VPS's bundle (mesh.yaml), and the agent restarts pilot-agent on the new bundle version".to_string()
            } else {
                format!(
                    "{fix} (sigma-agent on {} reads Envoy's admin API on 127.0.0.1:15000 and /etc/hosts)",
                    self.hostname
                )
            },
        )
    }

    fn xds(&self) -> Link {
        let k = LinkKind::XdsConnected;
        let h = self.hostname;
        match &self.d.xds {
            XdsConnection::Connected => ok(
                k,
                format!(
                    "Envoy's xDS stream through pilot-agent to istiod is up{}",
                    self.age
                ),
            ),
            XdsConnection::Disconnected => failed(
                k,
                format!(
                    "Envoy has lost istiod: its xDS stream (relayed by pilot-agent) is down{}",
                    self.age
                ),
                format!(
                    "pilot-agent reaches istiod through the east-west gateway on port 15012 at the address the bundle's hosts file gives istiod.istio-system.svc (`sigmactl mesh bootstrap {h} -o DIR` shows it; it must be the EXTERNAL-IP of `kubectl -n istio-system get service istio-eastwestgateway`): on {h}, `getent hosts istiod.istio-system.svc` and `nc -vz ADDRESS 15012`; check that the gateway's pods run and that its Gateway exposes 15012 (k8s/istio/)"
                ),
            ),
            XdsConnection::Unknown { reason } => self.unknown(
                k,
                "xDS state",
                std::slice::from_ref(reason),
                "see the pilot-agent link",
            ),
        }
    }

    fn hosts_block(&self) -> Link {
        let k = LinkKind::HostsBlock;
        if let Some(l) = self.no_egress(k) {
            return l;
        }
        let (mut bad, mut unknown) = (Vec::new(), Vec::new());
        for e in &self.d.egress {
            match &e.hosts_entry {
                HostsEntry::Present => {}
                HostsEntry::Missing => bad.push(format!(
                    "{} is missing (want {} {})",
                    e.host, e.bind, e.host
                )),
                HostsEntry::Wrong { address } => bad.push(format!(
                    "{} resolves to {address}, not its listener's {}",
                    e.host, e.bind
                )),
                HostsEntry::Unknown { reason } => unknown.push(format!("{}: {reason}", e.host)),
            }
        }
        let h = self.hostname;
        if !bad.is_empty() {
            return failed(
                k,
                format!("/etc/hosts: {}{}", joined(&bad), self.age),
                format!(
                    "the agent writes these lines between `# BEGIN sigma-istio` and `# END sigma-istio` when it installs the bundle: restart sigma-agent on {h} (`systemctl restart sigma-agent`); if they go missing again, something else manages /etc/hosts (cloud-init manage_etc_hosts, a container runtime): stop it rewriting the file, and remove any line above the block that names the host"
                ),
            );
        }
        if !unknown.is_empty() {
            return self.unknown(
                k,
                "hosts entries",
                &unknown,
                "check that sigma-agent may read /etc/hosts",
            );
        }
        ok(
            k,
            format!(
                "{} egress host(s) resolve to their loopback listener{}{}",
                self.d.egress.len(),
                self.omitted(),
                self.age
            ),
        )
    }

    fn listener(&self) -> Link {
        let k = LinkKind::EgressListener;
        if let Some(l) = self.no_egress(k) {
            return l;
        }
        let (mut bad, mut unknown) = (Vec::new(), Vec::new());
        for e in &self.d.egress {
            match &e.listener {
                ListenerState::Bound => {}
                ListenerState::NotBound => {
                    bad.push(format!("no listener {}_{} for {}", e.bind, e.port, name(e)))
                }
                ListenerState::Unknown { reason } => unknown.push(format!("{}: {reason}", name(e))),
            }
        }
        let (h, p) = (self.hostname, self.purpose);
        if !bad.is_empty() {
            return failed(
                k,
                format!("Envoy: {}{}", joined(&bad), self.age),
                format!(
                    "istiod builds these listeners from purpose {p}'s Sidecar egress: check that `sigmactl mesh export` holds it with that bind and port and that the cluster has it (`kubectl -n sigma get sidecar -o yaml`); a port below 1024 needs Envoy to run as root or with CAP_NET_BIND_SERVICE; on {h}, `ss -ltnp` shows whether another process holds the port, and Envoy's refusal is in `journalctl -u sigma-agent`"
                ),
            );
        }
        if !unknown.is_empty() {
            return self.unknown(k, "listeners", &unknown, "see the pilot-agent link");
        }
        ok(
            k,
            format!(
                "{} loopback listener(s) bound{}{}",
                self.d.egress.len(),
                self.omitted(),
                self.age
            ),
        )
    }

    fn endpoints(&self) -> Link {
        let k = LinkKind::EgressEndpoints;
        if let Some(l) = self.no_egress(k) {
            return l;
        }
        let (mut none, mut no_cluster, mut unknown, mut good) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in &self.d.egress {
            match &e.endpoints {
                EgressEndpoints::Held {
                    total,
                    healthy,
                    outlier_ejected,
                } => {
                    let ejected = if *outlier_ejected > 0 {
                        format!(", {outlier_ejected} ejected by outlier detection")
                    } else {
                        String::new()
                    };
                    let fact = format!("{}: {healthy} of {total} healthy{ejected}", name(e));
                    if *healthy == 0 {
                        none.push(fact);
                    } else {
                        good.push(fact);
                    }
                }
                EgressEndpoints::NoCluster => no_cluster.push(format!(
                    "{}: no cluster outbound|{}||{}",
                    name(e),
                    e.port,
                    e.host
                )),
                EgressEndpoints::Unknown { reason } => {
                    unknown.push(format!("{}: {reason}", name(e)))
                }
            }
        }
        if !none.is_empty() || !no_cluster.is_empty() {
            let mut facts = none.clone();
            facts.extend(no_cluster.iter().cloned());
            let first = self
                .d
                .egress
                .iter()
                .find(|e| {
                    matches!(
                        e.endpoints,
                        EgressEndpoints::Held { healthy: 0, .. } | EgressEndpoints::NoCluster
                    )
                })
                .map(|e| e.host.as_str())
                .unwrap_or_default();
            let look = match service_of(first) {
                Some((svc, ns)) => format!(
                    "`kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={svc}` and `kubectl -n {ns} get workloadentries` (their Healthy condition)"
                ),
                None => "the ServiceEntry or Service of that host and its endpoints".to_string(),
            };
            let fix = if none.is_empty() {
                format!(
                    "istiod pushed no cluster for that host and port: check the egress host and port of purpose {} against the Service (`kubectl get service -A`), then {look}",
                    self.purpose
                )
            } else {
                format!(
                    "check that the target service has healthy endpoints: {look}; endpoints in the cluster's network are reached through the east-west gateway (15443), so check it too"
                )
            };
            return failed(
                k,
                format!("Envoy holds {}{}", joined(&facts), self.age),
                fix,
            );
        }
        if !unknown.is_empty() {
            return self.unknown(k, "endpoints", &unknown, "see the pilot-agent link");
        }
        ok(
            k,
            format!(
                "Envoy holds {}{}{}",
                joined(&good),
                self.omitted(),
                self.age
            ),
        )
    }

    fn responses(&self) -> Link {
        let k = LinkKind::EgressResponses;
        if let Some(l) = self.no_egress(k) {
            return l;
        }
        let (mut high, mut facts, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for e in &self.d.egress {
            match &e.responses {
                EgressResponses::Counted {
                    rq_2xx,
                    rq_4xx,
                    rq_5xx,
                    connect_failures,
                    connections,
                    window_seconds,
                } => {
                    let responses = rq_2xx + rq_4xx + rq_5xx;
                    let since = match window_seconds {
                        Some(w) => format!("in the last {w} s"),
                        None => "since Envoy started".to_string(),
                    };
                    let fact = format!(
                        "{}: {rq_2xx} 2xx, {rq_4xx} 4xx, {rq_5xx} 5xx, {connect_failures} failed of {connections} connections {since}",
                        name(e)
                    );
                    let share = |n: u64, of: u64| {
                        (of >= MIN_SAMPLE && n as f64 > FAILURE_WARN_SHARE * of as f64)
                            .then(|| 100.0 * n as f64 / of as f64)
                    };
                    let mut why = Vec::new();
                    if let Some(p) = share(*rq_5xx, responses) {
                        why.push(format!("{p:.0} % 5xx"));
                    }
                    if let Some(p) = share(*connect_failures, *connections) {
                        why.push(format!("{p:.0} % failed connections"));
                    }
                    if why.is_empty() {
                        facts.push(fact);
                    } else {
                        high.push(format!("{fact} ({})", why.join(", ")));
                    }
                }
                EgressResponses::Unknown { reason } => {
                    unknown.push(format!("{}: {reason}", name(e)))
                }
            }
        }
        if !high.is_empty() {
            return warning(
                k,
                format!("{}{}", joined(&high), self.age),
                format!(
                    "above {:.0} %: 5xx come from the target service or, with no upstream answering, from Envoy (503 UH/UF); failed connections mean the gateway (15443) or the endpoints are unreachable. See the egress-endpoints link, and on {}: `curl -sv http://HOST:PORT/` through the listener",
                    FAILURE_WARN_SHARE * 100.0,
                    self.hostname
                ),
            );
        }
        if !unknown.is_empty() {
            return self.unknown(k, "counters", &unknown, "see the pilot-agent link");
        }
        ok(
            k,
            format!("{}{}{}", joined(&facts), self.omitted(), self.age),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::Outcome;
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn xboard() -> EgressDataPlane {
        EgressDataPlane {
            host: "xboard.sigma.svc.cluster.local".into(),
            port: 80,
            bind: "127.0.0.2".parse().unwrap(),
            listener: ListenerState::Bound,
            endpoints: EgressEndpoints::Held {
                total: 2,
                healthy: 2,
                outlier_ejected: 0,
            },
            responses: EgressResponses::Counted {
                rq_2xx: 120,
                rq_4xx: 2,
                rq_5xx: 1,
                connect_failures: 0,
                connections: 4,
                window_seconds: None,
            },
            hosts_entry: HostsEntry::Present,
        }
    }

    /// A working VPS's reading.
    pub(crate) fn good() -> MeshAgentState {
        MeshAgentState {
            state: MeshPhase::Ready,
            reason: None,
            bundle_version: Some("b1".into()),
            token_expires_at: None,
            cert_expires_at: None,
            restarts: 0,
            dataplane: Some(MeshDataPlane {
                read_at: now() - Duration::seconds(10),
                xds: XdsConnection::Connected,
                egress: vec![xboard()],
                omitted: 0,
                listeners: None,
            }),
        }
    }

    fn run(m: &MeshAgentState) -> Vec<Link> {
        links(
            "edge-1.example.net",
            "xrayr",
            Some(m),
            now(),
            Duration::seconds(90),
        )
    }

    fn one(m: &MeshAgentState, k: LinkKind) -> Link {
        run(m).into_iter().find(|l| l.link == k).unwrap()
    }

    fn edit(f: impl FnOnce(&mut MeshDataPlane)) -> MeshAgentState {
        let mut m = good();
        f(m.dataplane.as_mut().unwrap());
        m
    }

    #[test]
    fn a_working_data_plane_is_all_ok_in_chain_order() {
        let l = run(&good());
        let kinds: Vec<&str> = l.iter().map(|l| l.link.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "xds-connected",
                "hosts-block",
                "egress-listener",
                "egress-endpoints",
                "egress-responses"
            ]
        );
        for x in &l {
            assert_eq!(x.result, Outcome::Ok, "{x:?}");
            assert!(x.fix.is_none());
        }
        assert_eq!(
            l[3].reason,
            "Envoy holds xboard.sigma.svc.cluster.local:80: 2 of 2 healthy"
        );
        assert_eq!(
            l[4].reason,
            "xboard.sigma.svc.cluster.local:80: 120 2xx, 2 4xx, 1 5xx, 0 failed of 4 connections since Envoy started"
        );
    }

    #[test]
    fn lost_istiod_fails_xds_connected_naming_the_gateway() {
        let m = edit(|d| d.xds = XdsConnection::Disconnected);
        let l = one(&m, LinkKind::XdsConnected);
        assert_eq!(l.result, Outcome::Failed);
        let fix = l.fix.unwrap();
        assert!(
            fix.contains("istio-eastwestgateway") && fix.contains("15012"),
            "{fix}"
        );
        assert!(
            fix.contains("sigmactl mesh bootstrap edge-1.example.net"),
            "{fix}"
        );
    }

    #[test]
    fn a_missing_or_wrong_hosts_entry_fails_hosts_block() {
        let m = edit(|d| d.egress[0].hosts_entry = HostsEntry::Missing);
        let l = one(&m, LinkKind::HostsBlock);
        assert_eq!(l.result, Outcome::Failed);
        assert_eq!(
            l.reason,
            "/etc/hosts: xboard.sigma.svc.cluster.local is missing (want 127.0.0.2 xboard.sigma.svc.cluster.local)"
        );
        assert!(l.fix.unwrap().contains("systemctl restart sigma-agent"));
        let m = edit(|d| {
            d.egress[0].hosts_entry = HostsEntry::Wrong {
                address: "10.0.0.9".parse().unwrap(),
            }
        });
        let l = one(&m, LinkKind::HostsBlock);
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason
                .contains("resolves to 10.0.0.9, not its listener's 127.0.0.2")
        );
    }

    #[test]
    fn an_unbound_listener_fails_egress_listener() {
        let m = edit(|d| d.egress[0].listener = ListenerState::NotBound);
        let l = one(&m, LinkKind::EgressListener);
        assert_eq!(l.result, Outcome::Failed);
        assert!(
            l.reason.contains("no listener 127.0.0.2_80"),
            "{}",
            l.reason
        );
        assert!(l.fix.unwrap().contains("Sidecar"));
    }

    #[test]
    fn no_healthy_endpoint_or_no_cluster_fails_egress_endpoints() {
        let m = edit(|d| {
            d.egress[0].endpoints = EgressEndpoints::Held {
                total: 1,
                healthy: 0,
                outlier_ejected: 1,
            }
        });
        let l = one(&m, LinkKind::EgressEndpoints);
        assert_eq!(l.result, Outcome::Failed);
        assert_eq!(
            l.reason,
            "Envoy holds xboard.sigma.svc.cluster.local:80: 0 of 1 healthy, 1 ejected by outlier detection"
        );
        let fix = l.fix.unwrap();
        assert!(
            fix.contains(
                "kubectl -n sigma get endpointslices -l kubernetes.io/service-name=xboard"
            ),
            "{fix}"
        );
        let m = edit(|d| d.egress[0].endpoints = EgressEndpoints::NoCluster);
        let l = one(&m, LinkKind::EgressEndpoints);
        assert_eq!(l.result, Outcome::Failed);
        assert!(l.reason.contains("no cluster outbound|80||xboard"));
        assert!(l.fix.unwrap().contains("istiod pushed no cluster"));
        // Some healthy: ok.
        let m = edit(|d| {
            d.egress[0].endpoints = EgressEndpoints::Held {
                total: 3,
                healthy: 1,
                outlier_ejected: 0,
            }
        });
        assert_eq!(one(&m, LinkKind::EgressEndpoints).result, Outcome::Ok);
    }

    #[test]
    fn many_5xx_or_failed_connections_warn_on_egress_responses() {
        let counted = |rq_2xx, rq_5xx, connect_failures, connections| EgressResponses::Counted {
            rq_2xx,
            rq_4xx: 0,
            rq_5xx,
            connect_failures,
            connections,
            window_seconds: Some(60),
        };
        let m = edit(|d| d.egress[0].responses = counted(90, 10, 0, 5));
        let l = one(&m, LinkKind::EgressResponses);
        assert_eq!(l.result, Outcome::Warning);
        assert!(l.reason.contains("(10 % 5xx)"), "{}", l.reason);
        let m = edit(|d| d.egress[0].responses = counted(0, 0, 30, 40));
        let l = one(&m, LinkKind::EgressResponses);
        assert_eq!(l.result, Outcome::Warning);
        assert!(l.reason.contains("75 % failed connections"), "{}", l.reason);
        // Below the sample size, or at the threshold: ok.
        let m = edit(|d| d.egress[0].responses = counted(1, 2, 1, 3));
        assert_eq!(one(&m, LinkKind::EgressResponses).result, Outcome::Ok);
        let m = edit(|d| d.egress[0].responses = counted(95, 5, 0, 5));
        assert_eq!(one(&m, LinkKind::EgressResponses).result, Outcome::Ok);
    }

    #[test]
    fn unknown_facts_warn_with_the_agents_reason() {
        let m = edit(|d| {
            d.xds = XdsConnection::Unknown {
                reason: "Envoy keeps no control_plane stats (Istio's stats matcher drops them): add \"control_plane\" to defaultConfig.proxyStatsMatcher.inclusionPrefixes".into(),
            };
            d.egress[0].listener = ListenerState::Unknown {
                reason: "Envoy admin /listeners unreachable: connection refused".into(),
            };
        });
        let l = one(&m, LinkKind::XdsConnected);
        assert_eq!(l.result, Outcome::Warning);
        assert!(
            l.fix
                .unwrap()
                .contains("proxyStatsMatcher.inclusionPrefixes")
        );
        let l = one(&m, LinkKind::EgressListener);
        assert_eq!(l.result, Outcome::Warning);
        assert!(l.reason.contains("connection refused"));
        assert!(l.fix.unwrap().contains("127.0.0.1:15000"));
    }

    #[test]
    fn no_reading_no_egress_and_old_readings() {
        let mut m = good();
        m.dataplane = None;
        for l in run(&m) {
            assert_eq!(l.result, Outcome::Warning, "{l:?}");
            assert!(l.reason.contains("no data-plane reading"));
        }
        for l in links("h", "p", None, now(), Duration::seconds(90)) {
            assert_eq!(l.result, Outcome::Warning);
        }
        let m = edit(|d| d.egress.clear());
        let l = run(&m);
        assert!(l.iter().all(|l| l.result == Outcome::Ok), "{l:?}");
        assert!(l[1].reason.contains("declares no egress host"));
        let m = edit(|d| d.read_at = now() - Duration::minutes(10));
        assert!(
            one(&m, LinkKind::HostsBlock)
                .reason
                .contains("may be out of date")
        );
    }
}

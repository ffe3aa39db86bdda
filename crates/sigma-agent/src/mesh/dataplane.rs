//! The data plane of each egress host, read from the local Envoy's admin API (which
//! pilot-agent's bootstrap puts on `127.0.0.1:15000`) and from `/etc/hosts`, for
//! `mesh_state.dataplane`.
//!
//! Per egress entry of the bundle (`host`, `port`, `bind`), istiod gives Envoy a loopback
//! listener `<bind>_<port>` and a cluster `outbound|<port>||<host>`. The agent reads
//! - `/listeners?format=json`: whether a listener is bound at `bind:port`;
//! - `/clusters?format=json`: the endpoints of the cluster and their health flags;
//! - `/stats` (filtered): the cluster's response-class and connection counters, and
//!   `control_plane.connected_state` (Envoy's xDS stream, which pilot-agent relays to istiod);
//! - `/etc/hosts`: what the first line naming the host maps it to.
//!
//! Each source is read once per pass; when one cannot be read, every fact drawn from it is
//! `unknown` with the reason (never a zero). Istio's bootstrap keeps only the stats its
//! `stats_matcher` includes: without `cluster.outbound|` and `control_plane` in the mesh's
//! `defaultConfig.proxyStatsMatcher.inclusionPrefixes` those facts are `unknown` and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sigma_types::mesh::BundleEgress;
use sigma_types::mesh::dataplane::{
    BoundListeners, EgressDataPlane, EgressEndpoints, EgressResponses, HostsEntry, ListenerState,
    MAX_EGRESS_REPORTED, MAX_LISTENERS_REPORTED, MeshDataPlane, XdsConnection, reason_text,
};
use time::OffsetDateTime;

/// pilot-agent's default `proxyAdminPort` (sigma's bundles do not change it).
pub const ENVOY_ADMIN_PORT: u16 = 15000;

/// Most bytes the report may take in the heartbeat's `agent_state` (16 KiB in all): entries
/// beyond it are left out and counted in `omitted`.
pub const REPORT_BUDGET_BYTES: usize = 10 * 1024;

/// Largest admin answer read (an Envoy with a full mesh's clusters answers a few MiB; the
/// agent's Sidecar limits it to the purpose's egress hosts).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Stats the agent asks Envoy for (RE2, as Envoy's `filter` takes it).
const STATS_FILTER: &str = r"^(cluster\.outbound\|.*\.(upstream_rq_[245]xx|upstream_cx_connect_fail|upstream_cx_total)|control_plane\.connected_state)$";

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Envoy's admin API did not answer.
    #[error("Envoy admin {path} unreachable: {source}")]
    Unreachable {
        /// The admin path.
        path: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// It answered with an error status.
    #[error("Envoy admin {path} answered HTTP {status}")]
    Status {
        /// The admin path.
        path: &'static str,
        /// The status.
        status: u16,
    },
    /// Its answer was not what Envoy gives.
    #[error("Envoy admin {path}: unexpected answer: {detail}")]
    Answer {
        /// The admin path.
        path: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The hosts file could not be read.
    #[error("{}: {source}", path.display())]
    Hosts {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The endpoints of one cluster, from `/clusters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterHealth {
    /// Endpoints.
    pub total: u32,
    /// Endpoints Envoy would send to.
    pub healthy: u32,
    /// Endpoints ejected by outlier detection.
    pub outlier_ejected: u32,
}

/// Envoy's admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    /// The admin API at `base` (`http://127.0.0.1:15000`), read with `http`.
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Admin {
        Admin {
            http,
            base: base.into().trim_end_matches('/').to_string(),
        }
    }

    async fn get(&self, path: &'static str, query: &[(&str, &str)]) -> Result<String, Error> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|source| Error::Unreachable { path, source })?;
        if !resp.status().is_success() {
            return Err(Error::Status {
                path,
                status: resp.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| Error::Unreachable { path, source })?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Error::Answer {
                    path,
                    detail: format!("larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| Error::Answer {
            path,
            detail: "not UTF-8".into(),
        })
    }

    async fn json(&self, path: &'static str) -> Result<Value, Error> {
        let text = self.get(path, &[("format", "json")]).await?;
        serde_json::from_str(&text).map_err(|e| Error::Answer {
            path,
            detail: e.to_string(),
        })
    }

    /// The addresses of Envoy's active listeners.
    pub async fn listeners(&self) -> Result<BTreeSet<SocketAddr>, Error> {
        parse_listeners(&self.json("/listeners").await?)
    }

    /// The endpoints of each cluster, by cluster name.
    pub async fn clusters(&self) -> Result<BTreeMap<String, ClusterHealth>, Error> {
        parse_clusters(&self.json("/clusters").await?)
    }

    /// The egress counters and `control_plane.connected_state`, by stat name.
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>, Error> {
        parse_stats(&self.get("/stats", &[("filter", STATS_FILTER)]).await?)
    }
}

fn answer(path: &'static str, detail: impl Into<String>) -> Error {
    Error::Answer {
        path,
        detail: detail.into(),
    }
}

fn socket_address(v: &Value) -> Option<SocketAddr> {
    let s = v.get("socket_address")?;
    let ip: IpAddr = s.get("address")?.as_str()?.parse().ok()?;
    // Envoy omits a zero port (proto3 JSON drops default values).
    let port = s.get("port_value").map_or(Some(0), Value::as_u64)?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// The bound addresses in a `/listeners?format=json` answer.
pub fn parse_listeners(v: &Value) -> Result<BTreeSet<SocketAddr>, Error> {
    const P: &str = "/listeners";
    let items = match v.get("listener_statuses") {
        None => return Ok(BTreeSet::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(answer(P, "listener_statuses is not a list")),
    };
    let mut out = BTreeSet::new();
    for l in items {
        out.extend(l.get("local_address").and_then(socket_address));
        if let Some(Value::Array(more)) = l.get("additional_local_addresses") {
            out.extend(more.iter().filter_map(socket_address));
        }
    }
    Ok(out)
}

fn flag(h: &Value, name: &str) -> bool {
    h.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// The clusters in a `/clusters?format=json` answer with their endpoints' health.
pub fn parse_clusters(v: &Value) -> Result<BTreeMap<String, ClusterHealth>, Error> {
    const P: &str = "/clusters";
    let items = match v.get("cluster_statuses") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(answer(P, "cluster_statuses is not a list")),
    };
    let mut out = BTreeMap::new();
    for c in items {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            return Err(answer(P, "a cluster without a name"));
        };
        let mut h = ClusterHealth::default();
        for host in c
            .get("host_statuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let st = host.get("health_status").unwrap_or(&Value::Null);
            // UNKNOWN is what EDS gives an endpoint without a verdict, and Envoy routes to it.
            let eds_ok = matches!(
                st.get("eds_health_status").and_then(Value::as_str),
                None | Some("HEALTHY" | "UNKNOWN")
            );
            let outlier = flag(st, "failed_outlier_check");
            let healthy = eds_ok && !outlier && !flag(st, "failed_active_health_check");
            h.total = h.total.saturating_add(1);
            h.healthy += u32::from(healthy);
            h.outlier_ejected += u32::from(outlier);
        }
        out.insert(name.to_string(), h);
    }
    Ok(out)
}

/// The counters and gauges of a `/stats` text answer (`name: value` lines; histograms and
/// non-numeric values skipped).
pub fn parse_stats(text: &str) -> Result<BTreeMap<String, u64>, Error> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(": ") else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(answer("/stats", format!("unexpected line {:?}", cut(line))));
        };
        if let Ok(n) = value.trim().parse::<u64>() {
            out.insert(name.to_string(), n);
        }
    }
    Ok(out)
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

/// What `/etc/hosts` (`text`) maps `host` to: the first line naming it, as the C library
/// resolves (names compare case-insensitively; lines without an IP address are skipped).
pub fn hosts_entry(text: &str, host: &str, bind: IpAddr) -> HostsEntry {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(addr)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if words.any(|w| w.eq_ignore_ascii_case(host)) {
            return if addr == bind {
                HostsEntry::Present
            } else {
                HostsEntry::Wrong { address: addr }
            };
        }
    }
    HostsEntry::Missing
}

/// The cluster istiod names for an egress entry.
pub fn cluster_name(e: &BundleEgress) -> String {
    format!("outbound|{}||{}", e.port, e.host)
}

fn unknown_reason(e: &Error) -> String {
    // The error chain: reqwest's own message hides the cause (connection refused, …).
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    reason_text(&s)
}

/// What the sources gave (each an error when it could not be read).
pub struct Readings {
    /// Bound listener addresses.
    pub listeners: Result<BTreeSet<SocketAddr>, Error>,
    /// Clusters.
    pub clusters: Result<BTreeMap<String, ClusterHealth>, Error>,
    /// Stats.
    pub stats: Result<BTreeMap<String, u64>, Error>,
    /// The hosts file's text.
    pub hosts: Result<String, Error>,
}

/// Where the stats matcher is configured (the mesh config sigma copies into each VPS's bundle).
const MATCHER_HINT: &str = "defaultConfig.proxyStatsMatcher.inclusionPrefixes";

fn egress_facts(e: &BundleEgress, bind: Ipv4Addr, r: &Readings) -> EgressDataPlane {
    let cluster = cluster_name(e);
    let listener = match &r.listeners {
        Ok(set) if set.contains(&SocketAddr::new(IpAddr::V4(bind), e.port)) => ListenerState::Bound,
        Ok(_) => ListenerState::NotBound,
        Err(err) => ListenerState::Unknown {
            reason: unknown_reason(err),
        },
    };
    let endpoints = match &r.clusters {
        Ok(m) => match m.get(&cluster) {
            Some(h) => EgressEndpoints::Held {
                total: h.total,
                healthy: h.healthy,
                outlier_ejected: h.outlier_ejected,
            },
            None => EgressEndpoints::NoCluster,
        },
        Err(err) => EgressEndpoints::Unknown {
            reason: unknown_reason(err),
        },
    };
    let responses = match (&r.stats, &endpoints) {
        (Err(err), _) => EgressResponses::Unknown {
            reason: unknown_reason(err),
        },
        (Ok(_), EgressEndpoints::NoCluster) => EgressResponses::Unknown {
            reason: reason_text(&format!("Envoy holds no cluster {cluster}")),
        },
        (Ok(s), _) => {
            // istiod gives every cluster an `alt_stat_name` ending in `;` (its stat-tag
            // delimiter, pilot's `DelimitedStatsPrefix`), so Istio's Envoy names them
            // `cluster.outbound|80||host;.upstream_rq_2xx`; a plain Envoy config has no `;`.
            let stat = |n: &str| {
                s.get(&format!("cluster.{cluster};.{n}"))
                    .or_else(|| s.get(&format!("cluster.{cluster}.{n}")))
                    .copied()
            };
            match stat("upstream_cx_total") {
                // upstream_cx_total exists with the cluster; the per-class counters appear with
                // the first response of their class, so their absence is a true zero.
                Some(connections) => EgressResponses::Counted {
                    rq_2xx: stat("upstream_rq_2xx").unwrap_or(0),
                    rq_4xx: stat("upstream_rq_4xx").unwrap_or(0),
                    rq_5xx: stat("upstream_rq_5xx").unwrap_or(0),
                    connect_failures: stat("upstream_cx_connect_fail").unwrap_or(0),
                    connections,
                    window_seconds: None,
                },
                None => EgressResponses::Unknown {
                    reason: reason_text(&format!(
                        "Envoy keeps no cluster.outbound| stats (Istio's stats matcher drops them): add \"cluster.outbound|\" to {MATCHER_HINT}"
                    )),
                },
            }
        }
    };
    let hosts_entry = match &r.hosts {
        Ok(text) => hosts_entry(text, &e.host, IpAddr::V4(bind)),
        Err(err) => HostsEntry::Unknown {
            reason: unknown_reason(err),
        },
    };
    EgressDataPlane {
        host: e.host.clone(),
        port: e.port,
        bind,
        listener,
        endpoints,
        responses,
        hosts_entry,
    }
}

/// The report from what the sources gave, for the bundle's egress entries; bounded to
/// [`MAX_EGRESS_REPORTED`] entries and [`REPORT_BUDGET_BYTES`].
pub fn assemble(egress: &[BundleEgress], r: &Readings, now: OffsetDateTime) -> MeshDataPlane {
    let xds = match &r.stats {
        Err(err) => XdsConnection::Unknown {
            reason: unknown_reason(err),
        },
        Ok(s) => match s.get("control_plane.connected_state") {
            Some(0) => XdsConnection::Disconnected,
            Some(_) => XdsConnection::Connected,
            None => XdsConnection::Unknown {
                reason: reason_text(&format!(
                    "Envoy keeps no control_plane stats (Istio's stats matcher drops them): add \"control_plane\" to {MATCHER_HINT}"
                )),
            },
        },
    };
    let mut report = MeshDataPlane {
        read_at: now,
        xds,
        // The bundle was checked (every bind is a loopback address, and sigma allocates them
        // in 127.0.0.0/8); an entry whose bind is no IPv4 address is left out and counted in
        // `omitted`.
        egress: egress
            .iter()
            .filter_map(|e| Some(egress_facts(e, e.bind.parse().ok()?, r)))
            .take(MAX_EGRESS_REPORTED)
            .collect(),
        omitted: 0,
        listeners: r.listeners.as_ref().ok().map(bound_listeners),
    };
    while report.egress.len() > 1
        && serde_json::to_vec(&report).map_or(usize::MAX, |b| b.len()) > REPORT_BUDGET_BYTES
    {
        report.egress.pop();
    }
    report.omitted = u32::try_from(egress.len() - report.egress.len()).unwrap_or(u32::MAX);
    report
}

/// The listeners of `all` outside loopback, grouped by address, at most
/// [`MAX_LISTENERS_REPORTED`] ports (lowest addresses and ports first; the rest counted).
fn bound_listeners(all: &BTreeSet<SocketAddr>) -> BoundListeners {
    let mut out = BoundListeners::default();
    let mut kept = 0;
    for a in all
        .iter()
        .filter(|a| !a.ip().is_loopback() && a.port() != 0)
    {
        if kept == MAX_LISTENERS_REPORTED {
            out.omitted += 1;
            continue;
        }
        // The set is ordered by address, then port: each list comes out ascending.
        out.ports.entry(a.ip()).or_default().push(a.port());
        kept += 1;
    }
    out
}

/// How far back the reported response counts reach: a few of XrayR's calls, and short enough
/// that a rough start (Envoy's 503s while the first endpoints arrive) stops counting against a
/// working VPS a minute later, where counts since Envoy started would carry it for its life.
pub const RESPONSE_WINDOW: Duration = Duration::from_secs(60);

/// One reading's cumulative counts of an egress host.
type Counts = [u64; 5];

/// One reading: when, and each egress host's (host, port) counts.
type Sample = (Instant, BTreeMap<(String, u16), Counts>);

/// Earlier readings of one Envoy's cumulative response counters, so the report carries the
/// last [`RESPONSE_WINDOW`]'s counts. A new Envoy (pilot-agent restarted) gets a new window.
#[derive(Debug, Default)]
pub struct Window {
    samples: std::collections::VecDeque<Sample>,
}

impl Window {
    /// Replaces each egress host's cumulative counts in `d` with those since the newest earlier
    /// reading at least [`RESPONSE_WINDOW`] old (the oldest one while none is that old); the
    /// first reading, and a host whose counters went back (Envoy reset them), keep the counts
    /// since Envoy started.
    pub fn apply(&mut self, now: Instant, d: &mut MeshDataPlane) {
        let mut current = BTreeMap::new();
        for e in &mut d.egress {
            let EgressResponses::Counted {
                rq_2xx,
                rq_4xx,
                rq_5xx,
                connect_failures,
                connections,
                window_seconds,
            } = &mut e.responses
            else {
                continue;
            };
            let now_counts = [*rq_2xx, *rq_4xx, *rq_5xx, *connect_failures, *connections];
            current.insert((e.host.clone(), e.port), now_counts);
            let base = self
                .samples
                .iter()
                .rev()
                .find(|(at, _)| now.duration_since(*at) >= RESPONSE_WINDOW)
                .or(self.samples.front());
            let Some((at, counts)) = base else { continue };
            let Some(old) = counts.get(&(e.host.clone(), e.port)) else {
                continue;
            };
            if now_counts.iter().zip(old).any(|(n, o)| n < o) {
                continue;
            }
            [*rq_2xx, *rq_4xx, *rq_5xx, *connect_failures, *connections] =
                std::array::from_fn(|i| now_counts[i] - old[i]);
            *window_seconds = u32::try_from(now.duration_since(*at).as_secs()).ok();
        }
        self.samples.push_back((now, current));
        // Keep the newest reading at least a window old (the next baseline) and the newer ones.
        while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= RESPONSE_WINDOW {
            self.samples.pop_front();
        }
    }
}

/// Reads every source and assembles the report.
pub async fn read(admin: &Admin, hosts_path: &Path, egress: &[BundleEgress]) -> MeshDataPlane {
    let (listeners, clusters, stats) =
        tokio::join!(admin.listeners(), admin.clusters(), admin.stats());
    let hosts = tokio::fs::read_to_string(hosts_path)
        .await
        .map_err(|source| Error::Hosts {
            path: hosts_path.to_path_buf(),
            source,
        });
    let r = Readings {
        listeners,
        clusters,
        stats,
        hosts,
    };
    assemble(egress, &r, OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn egress() -> Vec<BundleEgress> {
        vec![
            BundleEgress {
                host: "xboard.sigma.svc.cluster.local".into(),
                port: 80,
                bind: "127.0.0.2".into(),
            },
            BundleEgress {
                host: "db.sigma.svc.cluster.local".into(),
                port: 5432,
                bind: "127.0.0.3".into(),
            },
        ]
    }

    fn readings() -> Readings {
        let listeners = parse_listeners(&json!({"listener_statuses": [
            {"name": "127.0.0.2_80", "local_address": {"socket_address": {"address": "127.0.0.2", "port_value": 80}}},
            {"name": "virtualOutbound", "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}}
        ]}))
        .unwrap();
        let clusters = parse_clusters(&json!({"cluster_statuses": [
            {"name": "outbound|80||xboard.sigma.svc.cluster.local", "host_statuses": [
                {"health_status": {"eds_health_status": "HEALTHY"}},
                {"health_status": {"eds_health_status": "HEALTHY", "failed_outlier_check": true}},
                {"health_status": {"eds_health_status": "UNHEALTHY"}},
                {"health_status": {}}
            ]}
        ]}))
        .unwrap();
        // Named as istiod's clusters are (`;` after the cluster's stat name).
        let stats = parse_stats(
            "cluster.outbound|80||xboard.sigma.svc.cluster.local;.upstream_cx_total: 7\n\
             cluster.outbound|80||xboard.sigma.svc.cluster.local;.upstream_rq_2xx: 5\n\
             cluster.outbound|80||xboard.sigma.svc.cluster.local;.upstream_rq_5xx: 2\n\
             control_plane.connected_state: 1\n",
        )
        .unwrap();
        Readings {
            listeners: Ok(listeners),
            clusters: Ok(clusters),
            stats: Ok(stats),
            hosts: Ok("127.0.0.1 localhost\n# BEGIN sigma-istio\n127.0.0.2 xboard.sigma.svc.cluster.local\n# END sigma-istio\n".into()),
        }
    }

    #[test]
    fn listeners_outside_loopback_are_reported_bounded() {
        let d = assemble(&egress(), &readings(), OffsetDateTime::UNIX_EPOCH);
        let l = d.listeners.expect("read");
        assert_eq!(
            l.ports,
            [("0.0.0.0".parse().unwrap(), vec![15001])].into(),
            "the loopback egress listener is not among them"
        );
        let many: BTreeSet<SocketAddr> = (1..=600)
            .map(|p| SocketAddr::from(([10, 0, 0, 5], p)))
            .chain([SocketAddr::from(([127, 0, 0, 2], 80))])
            .collect();
        let l = bound_listeners(&many);
        assert_eq!(
            l.ports[&"10.0.0.5".parse::<IpAddr>().unwrap()].len(),
            MAX_LISTENERS_REPORTED
        );
        assert_eq!(l.omitted, 600 - MAX_LISTENERS_REPORTED as u32);
        let mut r = readings();
        r.listeners = Err(answer("/listeners", "refused"));
        assert_eq!(
            assemble(&egress(), &r, OffsetDateTime::UNIX_EPOCH).listeners,
            None,
            "unknown, never empty"
        );
    }

    #[test]
    fn facts_per_egress_host() {
        let d = assemble(&egress(), &readings(), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(d.xds, XdsConnection::Connected);
        let x = &d.egress[0];
        assert_eq!(x.listener, ListenerState::Bound);
        assert_eq!(
            x.endpoints,
            EgressEndpoints::Held {
                total: 4,
                healthy: 2,
                outlier_ejected: 1
            }
        );
        assert_eq!(
            x.responses,
            EgressResponses::Counted {
                rq_2xx: 5,
                rq_4xx: 0,
                rq_5xx: 2,
                connect_failures: 0,
                connections: 7,
                window_seconds: None,
            }
        );
        assert_eq!(x.hosts_entry, HostsEntry::Present);
        let db = &d.egress[1];
        assert_eq!(db.listener, ListenerState::NotBound);
        assert_eq!(db.endpoints, EgressEndpoints::NoCluster);
        assert!(matches!(db.responses, EgressResponses::Unknown { .. }));
        assert_eq!(db.hosts_entry, HostsEntry::Missing);
        assert_eq!(d.omitted, 0);
    }

    #[test]
    fn a_failed_read_is_unknown_never_zero() {
        let mut r = readings();
        r.clusters = Err(answer("/clusters", "cluster_statuses is not a list"));
        r.stats = Ok(BTreeMap::new());
        r.hosts = Err(Error::Hosts {
            path: "/etc/hosts".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        let d = assemble(&egress(), &r, OffsetDateTime::UNIX_EPOCH);
        let x = &d.egress[0];
        match &x.endpoints {
            EgressEndpoints::Unknown { reason } => {
                assert!(reason.contains("/clusters"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        match &x.responses {
            EgressResponses::Unknown { reason } => {
                assert!(reason.contains("proxyStatsMatcher"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        match &d.xds {
            XdsConnection::Unknown { reason } => assert!(reason.contains("control_plane")),
            o => panic!("{o:?}"),
        }
        assert!(matches!(x.hosts_entry, HostsEntry::Unknown { .. }));
    }

    #[test]
    fn hosts_lookup_follows_the_first_line() {
        let bind: IpAddr = "127.0.0.2".parse().unwrap();
        let h = "xboard.sigma.svc.cluster.local";
        assert_eq!(
            hosts_entry(&format!("10.0.0.9 {h}\n127.0.0.2 {h}\n"), h, bind),
            HostsEntry::Wrong {
                address: "10.0.0.9".parse().unwrap()
            }
        );
        assert_eq!(
            hosts_entry(
                &format!("# 10.0.0.9 {h}\nbad {h}\n127.0.0.2 a XBOARD.sigma.svc.cluster.local\n"),
                h,
                bind
            ),
            HostsEntry::Present
        );
        assert_eq!(
            hosts_entry("127.0.0.2 xboard\n", h, bind),
            HostsEntry::Missing
        );
    }

    #[test]
    fn xds_disconnected_and_the_report_stays_within_budget() {
        let mut r = readings();
        r.stats = Ok(parse_stats("control_plane.connected_state: 0\n").unwrap());
        r.listeners = Err(answer("/listeners", "x".repeat(500)));
        let many: Vec<BundleEgress> = (0..200)
            .map(|i| BundleEgress {
                host: format!("{}-{i}.sigma.svc.cluster.local", "s".repeat(60)),
                port: 80,
                bind: "127.0.0.2".into(),
            })
            .collect();
        let d = assemble(&many, &r, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(d.xds, XdsConnection::Disconnected);
        assert!(serde_json::to_vec(&d).unwrap().len() <= REPORT_BUDGET_BYTES);
        assert!(!d.egress.is_empty());
        assert_eq!(d.egress.len() + d.omitted as usize, 200);
        let checked: sigma_types::AgentState = serde_json::from_value(json!({
            "mode": "mesh",
            "mesh_state": {"state": "ready", "dataplane": d}
        }))
        .unwrap();
        assert!(checked.mesh_state.unwrap().dataplane.is_some());
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(parse_listeners(&json!({"listener_statuses": 3})).is_err());
        assert!(parse_clusters(&json!({"cluster_statuses": [{"host_statuses": []}]})).is_err());
        assert!(parse_stats("garbage line\n").is_err());
    }

    #[test]
    fn responses_are_counted_over_the_last_window() {
        let counted = |d: &MeshDataPlane| d.egress[0].responses.clone();
        let with = |rq_2xx, rq_5xx, connections| {
            let mut d = assemble(&egress(), &readings(), OffsetDateTime::UNIX_EPOCH);
            d.egress[0].responses = EgressResponses::Counted {
                rq_2xx,
                rq_4xx: 0,
                rq_5xx,
                connect_failures: 0,
                connections,
                window_seconds: None,
            };
            d
        };
        let t0 = Instant::now();
        let mut w = Window::default();
        // First reading: since Envoy started (a rough start: 40 503s).
        let mut d = with(2, 40, 3);
        w.apply(t0, &mut d);
        assert!(matches!(
            counted(&d),
            EgressResponses::Counted {
                rq_5xx: 40,
                window_seconds: None,
                ..
            }
        ));
        // 30 s later: what happened since the first reading.
        let mut d = with(12, 40, 4);
        w.apply(t0 + Duration::from_secs(30), &mut d);
        assert!(
            matches!(
                counted(&d),
                EgressResponses::Counted {
                    rq_2xx: 10,
                    rq_5xx: 0,
                    connections: 1,
                    window_seconds: Some(30),
                    ..
                }
            ),
            "{:?}",
            counted(&d)
        );
        // 75 s: the window starts at the newest reading at least 60 s old (the first).
        let mut d = with(20, 40, 5);
        w.apply(t0 + Duration::from_secs(75), &mut d);
        assert!(
            matches!(
                counted(&d),
                EgressResponses::Counted {
                    rq_2xx: 18,
                    rq_5xx: 0,
                    window_seconds: Some(75),
                    ..
                }
            ),
            "{:?}",
            counted(&d)
        );
        // 100 s: the 30 s reading is now the baseline; the rough start is out of the window.
        let mut d = with(25, 41, 6);
        w.apply(t0 + Duration::from_secs(100), &mut d);
        assert!(
            matches!(
                counted(&d),
                EgressResponses::Counted {
                    rq_2xx: 13,
                    rq_5xx: 1,
                    window_seconds: Some(70),
                    ..
                }
            ),
            "{:?}",
            counted(&d)
        );
        // Counters that went back (Envoy reset them): since Envoy started.
        let mut d = with(1, 0, 1);
        w.apply(t0 + Duration::from_secs(115), &mut d);
        assert!(
            matches!(
                counted(&d),
                EgressResponses::Counted {
                    rq_2xx: 1,
                    window_seconds: None,
                    ..
                }
            ),
            "{:?}",
            counted(&d)
        );
    }
}

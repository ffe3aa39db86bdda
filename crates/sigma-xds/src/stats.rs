//! Counters the agent exposes on /metrics and reports in heartbeats. Those on /metrics are
//! Prometheus metrics kept here, where they are counted; [`Stats::register`] puts them in the
//! agent's registry.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use sigma_types::NackReport;
use time::OffsetDateTime;

use crate::resources::{CLUSTER_TYPE_URL, LISTENER_TYPE_URL};

/// Live counters of one xDS server, shared by all its streams.
#[derive(Debug, Default)]
pub struct Stats {
    /// ADS streams open.
    clients: Gauge,
    /// Last published version (0 before the first publish; see `published`).
    version_served: Gauge,
    published: AtomicU64,
    pushes: Counter,
    acks: AtomicU64,
    nacks: Counter,
    stale: AtomicU64,
    acked: Mutex<Acked>,
}

#[derive(Debug, Default, Clone)]
struct Acked {
    cluster: Option<String>,
    listener: Option<String>,
    /// Latest version ACKed on both types.
    accepted: Option<i64>,
    last_nack: Option<NackReport>,
    /// Whether `last_nack` still stands: no ACK of its type came after it.
    nack_current: bool,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// ADS streams open (Envoys connected).
    pub clients: u32,
    /// Last published version, if any.
    pub version_served: Option<i64>,
    /// Publishes since start.
    pub publishes: u64,
    /// Discovery responses sent.
    pub pushes: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Requests ignored for answering an older response.
    pub stale: u64,
    /// Last CDS version ACKed.
    pub acked_cluster_version: Option<String>,
    /// Last LDS version ACKed.
    pub acked_listener_version: Option<String>,
    /// Latest version ACKed on both CDS and LDS.
    pub accepted_version: Option<i64>,
    /// Last NACK ever received.
    pub last_nack: Option<NackReport>,
    /// Whether `last_nack` still stands (no ACK of its type since).
    pub nack_current: bool,
}

/// Longest NACK detail kept, in characters: what sigma-api accepts in a heartbeat's
/// `last_nack.detail`. Envoy lists every failed resource, so a big update can say more.
pub const MAX_NACK_DETAIL_CHARS: usize = 4096;

/// Envoy's detail made fit for a heartbeat: trimmed, control characters other than newline
/// and tab replaced by spaces (sigma-api refuses them), cut to [`MAX_NACK_DETAIL_CHARS`].
fn report_detail(detail: &str) -> String {
    const CUT: &str = " [...]";
    let clean: String = detail
        .trim()
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if clean.chars().count() <= MAX_NACK_DETAIL_CHARS {
        return clean;
    }
    let mut cut: String = clean
        .chars()
        .take(MAX_NACK_DETAIL_CHARS - CUT.len())
        .collect();
    cut.push_str(CUT);
    cut
}

impl Stats {
    /// Registers what the agent exports about its xDS server into `registry` (the agent: its
    /// `xds` sub-registry): connected Envoys, the version served, pushes and NACKs.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clients",
            "Envoys connected to the xDS server",
            self.clients.clone(),
        );
        registry.register(
            "config_version",
            "Envoy routes version served",
            self.version_served.clone(),
        );
        registry.register(
            "pushes",
            "Configuration pushes to Envoy",
            self.pushes.clone(),
        );
        registry.register(
            "nacks",
            "Configuration updates Envoy rejected",
            self.nacks.clone(),
        );
    }

    pub(crate) fn client_connected(&self) {
        self.clients.inc();
    }

    pub(crate) fn client_disconnected(&self) {
        self.clients.dec();
    }

    pub(crate) fn published(&self, version: i64) {
        self.version_served.set(version);
        self.published.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn pushed(&self) {
        self.pushes.inc();
    }

    pub(crate) fn stale(&self) {
        self.stale.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ack(&self, type_url: &str, version: &str) {
        let mut a = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        match type_url {
            CLUSTER_TYPE_URL => a.cluster = Some(version.to_string()),
            LISTENER_TYPE_URL => a.listener = Some(version.to_string()),
            _ => return,
        }
        if a.cluster == a.listener
            && let Some(v) = a.cluster.as_deref().and_then(|v| v.parse().ok())
        {
            a.accepted = Some(v);
        }
        if a.last_nack.as_ref().is_some_and(|n| n.type_url == type_url) {
            a.nack_current = false;
        }
        drop(a);
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn nack(&self, type_url: &str, version: &str, detail: &str) {
        let mut a = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        a.last_nack = Some(NackReport {
            version: version.to_string(),
            type_url: type_url.to_string(),
            detail: report_detail(detail),
            at: OffsetDateTime::now_utc(),
        });
        a.nack_current = true;
        drop(a);
        self.nacks.inc();
    }

    /// ADS streams open.
    pub fn clients(&self) -> u32 {
        u32::try_from(self.clients.get()).unwrap_or(0)
    }

    /// Latest version ACKed on both CDS and LDS.
    pub fn accepted_version(&self) -> Option<i64> {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted
    }

    /// The last NACK, while no ACK of its type has followed it.
    pub fn current_nack(&self) -> Option<NackReport> {
        let a = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        a.last_nack.clone().filter(|_| a.nack_current)
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let a = self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let publishes = self.published.load(Ordering::Acquire);
        StatsSnapshot {
            clients: self.clients(),
            version_served: (publishes > 0).then(|| self.version_served.get()),
            publishes,
            pushes: self.pushes.get(),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.get(),
            stale: self.stale.load(Ordering::Relaxed),
            acked_cluster_version: a.cluster,
            acked_listener_version: a.listener,
            accepted_version: a.accepted,
            last_nack: a.last_nack,
            nack_current: a.nack_current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_details_fit_a_heartbeat() {
        let s = Stats::default();
        s.nack(LISTENER_TYPE_URL, "1", "cannot bind\r\n");
        assert_eq!(s.current_nack().unwrap().detail, "cannot bind");
        s.nack(LISTENER_TYPE_URL, "2", "a\rb\u{7}c\nd\te");
        assert_eq!(s.current_nack().unwrap().detail, "a b c\nd\te");
        let long = "é".repeat(MAX_NACK_DETAIL_CHARS + 10);
        s.nack(LISTENER_TYPE_URL, "3", &long);
        let d = s.current_nack().unwrap().detail;
        assert_eq!(d.chars().count(), MAX_NACK_DETAIL_CHARS);
        assert!(d.ends_with(" [...]") && d.starts_with("éé"));
    }

    #[test]
    fn accepted_version_needs_both_types() {
        let s = Stats::default();
        assert_eq!(s.snapshot().version_served, None);
        s.published(3);
        assert_eq!(s.snapshot().version_served, Some(3));
        s.ack(CLUSTER_TYPE_URL, "3");
        assert_eq!(s.accepted_version(), None);
        s.ack(LISTENER_TYPE_URL, "3");
        assert_eq!(s.accepted_version(), Some(3));
        s.ack(CLUSTER_TYPE_URL, "4");
        assert_eq!(s.accepted_version(), Some(3));
        s.ack(LISTENER_TYPE_URL, "4");
        assert_eq!(s.accepted_version(), Some(4));
        assert_eq!(s.snapshot().acks, 4);
    }

    #[test]
    fn registered_counters_are_counters() {
        let s = Stats::default();
        let mut registry = Registry::with_prefix("sigma_agent");
        s.register(registry.sub_registry_with_prefix("xds"));
        s.client_connected();
        s.published(7);
        s.pushed();
        s.nack(LISTENER_TYPE_URL, "7", "cannot bind");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "# TYPE sigma_agent_xds_pushes counter\nsigma_agent_xds_pushes_total 1\n",
            "# TYPE sigma_agent_xds_nacks counter\nsigma_agent_xds_nacks_total 1\n",
            "# TYPE sigma_agent_xds_clients gauge\nsigma_agent_xds_clients 1\n",
            "# TYPE sigma_agent_xds_config_version gauge\nsigma_agent_xds_config_version 7\n",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn a_nack_stands_until_an_ack_of_its_type() {
        let s = Stats::default();
        s.nack(LISTENER_TYPE_URL, "5", "cannot bind");
        let n = s.current_nack().unwrap();
        assert_eq!(
            (n.version.as_str(), n.detail.as_str()),
            ("5", "cannot bind")
        );
        s.ack(CLUSTER_TYPE_URL, "5");
        assert!(
            s.current_nack().is_some(),
            "an ACK of another type does not clear it"
        );
        s.ack(LISTENER_TYPE_URL, "6");
        assert!(s.current_nack().is_none());
        let snap = s.snapshot();
        assert_eq!(snap.nacks, 1);
        assert_eq!(snap.last_nack.unwrap().type_url, LISTENER_TYPE_URL);
        assert!(!snap.nack_current);
    }
}

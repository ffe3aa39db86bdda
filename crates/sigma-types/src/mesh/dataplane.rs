//! What the agent reads from its own Envoy's admin API and `/etc/hosts` about the data plane
//! of each egress host, reported in `mesh_state.dataplane` with the heartbeat.
//!
//! Every fact is either known or `unknown` with the reason it could not be read: a failed read
//! is never reported as a zero. The report is bounded so that it always fits the heartbeat's
//! `agent_state` (see [`crate::api::MAX_OBJECT_BYTES`]): at most [`MAX_EGRESS_REPORTED`]
//! hosts (the rest counted in `omitted`), reasons of at most [`MAX_REASON_CHARS`] characters.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::validate::{self as v, FieldErrors};

/// Most egress hosts one report describes.
pub const MAX_EGRESS_REPORTED: usize = 16;

/// Longest reason of an `unknown` fact, in characters.
pub const MAX_REASON_CHARS: usize = 160;

/// Largest counter value accepted: 2^53 - 1, the largest integer every JSON reader keeps
/// exactly (Envoy's counters are 64-bit, but no VPS reaches this in a process lifetime).
pub const MAX_COUNT: u64 = (1 << 53) - 1;

/// Most endpoints one egress cluster may report.
pub const MAX_ENDPOINTS: u32 = 1_000_000;

/// Most listener ports one report lists in [`MeshDataPlane::listeners`] (a relay's route
/// listeners and a purpose's ingress listeners; about 6 bytes each in the report).
pub const MAX_LISTENERS_REPORTED: usize = 512;

/// Most listeners a report may say it left out (every port of four addresses).
pub const MAX_COUNT_OMITTED: u32 = 4 * 65_535;

/// The listeners Envoy has bound outside loopback (route listeners on the VPS's address,
/// ingress listeners, Istio's own on the wildcard address), so that sigma can tell whether a
/// route's listener is live. Loopback (egress) listeners are reported per egress entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BoundListeners {
    /// Ports per bound address, ascending, at most [`MAX_LISTENERS_REPORTED`] in all.
    #[schema(value_type = Object)]
    pub ports: std::collections::BTreeMap<IpAddr, Vec<u16>>,
    /// Listeners left out to keep the report bounded.
    #[serde(default)]
    pub omitted: u32,
}

impl BoundListeners {
    /// Whether a listener is bound at `addr:port`, or at the wildcard address of its family
    /// on `port`. `None` when the answer may be among the omitted listeners.
    pub fn has(&self, addr: IpAddr, port: u16) -> Option<bool> {
        let wildcard: IpAddr = match addr {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let bound = [addr, wildcard].iter().any(|a| {
            self.ports
                .get(a)
                .is_some_and(|p| p.binary_search(&port).is_ok())
        });
        if bound {
            Some(true)
        } else if self.omitted > 0 {
            None
        } else {
            Some(false)
        }
    }
}

/// Envoy's xDS stream to istiod (its `control_plane.connected_state` gauge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum XdsConnection {
    /// The stream is up.
    Connected,
    /// Envoy has lost istiod (through the east-west gateway, port 15012).
    Disconnected,
    /// Could not be read.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Whether Envoy's loopback listener for an egress entry (`<bind>_<port>`) is bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ListenerState {
    /// Envoy listens on the entry's address and port.
    Bound,
    /// Envoy has no active listener there.
    NotBound,
    /// Could not be read.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// The endpoints Envoy holds in the egress cluster `outbound|<port>||<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EgressEndpoints {
    /// Envoy holds the cluster.
    Held {
        /// Endpoints in it.
        total: u32,
        /// Of which Envoy would send traffic to (not failing health or outlier checks, not
        /// unhealthy by EDS).
        healthy: u32,
        /// Of which ejected by outlier detection.
        outlier_ejected: u32,
    },
    /// Envoy holds no such cluster (istiod did not push it).
    NoCluster,
    /// Could not be read.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Counters of the egress cluster over the last `window_seconds` (since Envoy started when
/// absent: the agent's first reading of this Envoy, or after Envoy reset its counters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EgressResponses {
    /// Envoy's counters.
    Counted {
        /// `upstream_rq_2xx`.
        rq_2xx: u64,
        /// `upstream_rq_4xx`.
        rq_4xx: u64,
        /// `upstream_rq_5xx` (including Envoy's own 503 when no upstream answered).
        rq_5xx: u64,
        /// `upstream_cx_connect_fail`.
        connect_failures: u64,
        /// `upstream_cx_total`.
        connections: u64,
        /// How many seconds back the counts reach; absent: since Envoy started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_seconds: Option<u32>,
    },
    /// Could not be read.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// What `/etc/hosts` resolves the egress host to (the first line naming it wins, as for the
/// C library).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostsEntry {
    /// The host resolves to the entry's loopback address.
    Present,
    /// The host resolves to another address.
    Wrong {
        /// The address it resolves to.
        #[schema(value_type = String)]
        address: IpAddr,
    },
    /// No line names the host.
    Missing,
    /// Could not be read.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// The data plane of one egress entry of the purpose's Sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressDataPlane {
    /// The mesh service's host name.
    pub host: String,
    /// Its port (the listener's and the cluster's).
    pub port: u16,
    /// The address the listener binds and the hosts block maps the host to, as the bundle
    /// gives it (a loopback address: sigma allocates them in 127.0.0.0/8).
    #[schema(value_type = String, format = Ipv4)]
    pub bind: Ipv4Addr,
    /// The loopback listener.
    pub listener: ListenerState,
    /// The endpoints Envoy holds for it.
    pub endpoints: EgressEndpoints,
    /// Response and connection counters.
    pub responses: EgressResponses,
    /// The hosts-block entry.
    pub hosts_entry: HostsEntry,
}

/// `mesh_state.dataplane`: the data plane as the agent last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshDataPlane {
    /// When the agent read it.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub read_at: OffsetDateTime,
    /// Envoy's xDS stream to istiod.
    pub xds: XdsConnection,
    /// One entry per egress entry of the bundle, at most [`MAX_EGRESS_REPORTED`].
    #[serde(default)]
    pub egress: Vec<EgressDataPlane>,
    /// Egress entries left out to keep the report bounded.
    #[serde(default)]
    pub omitted: u32,
    /// The listeners bound outside loopback; absent when Envoy's listeners could not be read
    /// (or the agent is older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<BoundListeners>,
}

fn reason(r: &str, field: String, e: &mut FieldErrors) {
    if r.is_empty() {
        e.add(field, "must not be empty");
    } else if let Err(m) = v::line(r, MAX_REASON_CHARS) {
        e.add(field, m);
    }
}

/// The longest response window an agent reports (an hour; agents use a minute).
pub const MAX_WINDOW_SECONDS: u32 = 3600;

fn count(n: u64, field: String, e: &mut FieldErrors) {
    if n > MAX_COUNT {
        e.add(field, format!("must be at most {MAX_COUNT}"));
    }
}

impl MeshDataPlane {
    /// Names every bad field under `field`.
    pub(crate) fn check(&self, field: &str, e: &mut FieldErrors) {
        if let XdsConnection::Unknown { reason: r } = &self.xds {
            reason(r, format!("{field}.xds.reason"), e);
        }
        if let Some(l) = &self.listeners {
            let total: usize = l.ports.values().map(Vec::len).sum();
            if total > MAX_LISTENERS_REPORTED {
                e.add(
                    format!("{field}.listeners.ports"),
                    format!("more than {MAX_LISTENERS_REPORTED} ports"),
                );
            }
            // An address is listed only with its ports, so the address count is bounded too.
            for (addr, ports) in &l.ports {
                if ports.is_empty()
                    || ports.first() == Some(&0)
                    || !ports.windows(2).all(|w| w[0] < w[1])
                {
                    e.add(
                        format!("{field}.listeners.ports.{addr}"),
                        "must be ports 1 to 65535, ascending, each once, at least one",
                    );
                }
            }
            if l.omitted > MAX_COUNT_OMITTED {
                e.add(
                    format!("{field}.listeners.omitted"),
                    format!("must be at most {MAX_COUNT_OMITTED}"),
                );
            }
        }
        if self.egress.len() > MAX_EGRESS_REPORTED {
            e.add(
                format!("{field}.egress"),
                format!("more than {MAX_EGRESS_REPORTED} entries"),
            );
            return;
        }
        if self.omitted as usize > super::MAX_BUNDLE_EGRESS {
            e.add(
                format!("{field}.omitted"),
                format!("must be at most {}", super::MAX_BUNDLE_EGRESS),
            );
        }
        for (i, eg) in self.egress.iter().enumerate() {
            let f = format!("{field}.egress[{i}]");
            if let Err(m) = v::hostname(&eg.host) {
                e.add(format!("{f}.host"), m);
            }
            if eg.port == 0 {
                e.add(format!("{f}.port"), "must be 1 to 65535");
            }
            if let ListenerState::Unknown { reason: r } = &eg.listener {
                reason(r, format!("{f}.listener.reason"), e);
            }
            match &eg.endpoints {
                EgressEndpoints::Held {
                    total,
                    healthy,
                    outlier_ejected,
                } => {
                    if *total > MAX_ENDPOINTS {
                        e.add(
                            format!("{f}.endpoints.total"),
                            format!("must be at most {MAX_ENDPOINTS}"),
                        );
                    }
                    if healthy > total {
                        e.add(
                            format!("{f}.endpoints.healthy"),
                            "must not exceed endpoints.total",
                        );
                    }
                    if outlier_ejected > total {
                        e.add(
                            format!("{f}.endpoints.outlier_ejected"),
                            "must not exceed endpoints.total",
                        );
                    }
                }
                EgressEndpoints::NoCluster => {}
                EgressEndpoints::Unknown { reason: r } => {
                    reason(r, format!("{f}.endpoints.reason"), e);
                }
            }
            match &eg.responses {
                EgressResponses::Counted {
                    rq_2xx,
                    rq_4xx,
                    rq_5xx,
                    connect_failures,
                    connections,
                    window_seconds,
                } => {
                    if window_seconds.is_some_and(|w| w > MAX_WINDOW_SECONDS) {
                        e.add(
                            format!("{f}.responses.window_seconds"),
                            format!("must be at most {MAX_WINDOW_SECONDS}"),
                        );
                    }
                    for (name, n) in [
                        ("rq_2xx", rq_2xx),
                        ("rq_4xx", rq_4xx),
                        ("rq_5xx", rq_5xx),
                        ("connect_failures", connect_failures),
                        ("connections", connections),
                    ] {
                        count(*n, format!("{f}.responses.{name}"), e);
                    }
                }
                EgressResponses::Unknown { reason: r } => {
                    reason(r, format!("{f}.responses.reason"), e);
                }
            }
            if let HostsEntry::Unknown { reason: r } = &eg.hosts_entry {
                reason(r, format!("{f}.hosts_entry.reason"), e);
            }
        }
    }
}

/// `s` cut to [`MAX_REASON_CHARS`] characters on one line, for the agent to report a read
/// error it does not control (an OS or HTTP error text).
pub fn reason_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'))
        .take(MAX_REASON_CHARS)
        .collect();
    if out.trim().is_empty() {
        out = "no reason given".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MeshDataPlane {
        MeshDataPlane {
            read_at: OffsetDateTime::UNIX_EPOCH,
            xds: XdsConnection::Connected,
            egress: vec![EgressDataPlane {
                host: "xboard.sigma.svc.cluster.local".into(),
                port: 80,
                bind: "127.0.0.2".parse().unwrap(),
                listener: ListenerState::Bound,
                endpoints: EgressEndpoints::Held {
                    total: 2,
                    healthy: 1,
                    outlier_ejected: 0,
                },
                responses: EgressResponses::Counted {
                    rq_2xx: 10,
                    rq_4xx: 0,
                    rq_5xx: 1,
                    connect_failures: 0,
                    connections: 3,
                    window_seconds: Some(60),
                },
                hosts_entry: HostsEntry::Present,
            }],
            omitted: 0,
            listeners: Some(BoundListeners {
                ports: [("10.0.0.5".parse().unwrap(), vec![443, 15146])].into(),
                omitted: 0,
            }),
        }
    }

    #[test]
    fn bound_listeners_answer_for_the_address_or_the_wildcard() {
        let mut l = BoundListeners {
            ports: [
                ("10.0.0.5".parse().unwrap(), vec![443, 993]),
                ("0.0.0.0".parse().unwrap(), vec![15090]),
            ]
            .into(),
            omitted: 0,
        };
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(l.has(a, 443), Some(true));
        assert_eq!(l.has(a, 15090), Some(true), "wildcard");
        assert_eq!(l.has(a, 444), Some(false));
        assert_eq!(l.has("10.0.0.6".parse().unwrap(), 443), Some(false));
        l.omitted = 3;
        assert_eq!(l.has(a, 444), None, "may be among the omitted");
    }

    #[test]
    fn bad_listener_lists_are_named() {
        let mut d = sample();
        d.listeners = Some(BoundListeners {
            ports: [("10.0.0.5".parse().unwrap(), vec![993, 443])].into(),
            omitted: 0,
        });
        let mut e = FieldErrors::new();
        d.check("dataplane", &mut e);
        assert!(
            e.to_string().contains("dataplane.listeners.ports.10.0.0.5"),
            "{e}"
        );
        d.listeners = Some(BoundListeners {
            ports: [("10.0.0.6".parse().unwrap(), vec![])].into(),
            omitted: 0,
        });
        let mut e = FieldErrors::new();
        d.check("dataplane", &mut e);
        assert!(
            e.to_string().contains("dataplane.listeners.ports.10.0.0.6"),
            "an address without ports: {e}"
        );
        d.listeners = Some(BoundListeners {
            ports: [("10.0.0.5".parse().unwrap(), (1..=600).collect())].into(),
            omitted: 0,
        });
        let mut e = FieldErrors::new();
        d.check("dataplane", &mut e);
        assert!(e.to_string().contains("more than 512 ports"), "{e}");
    }

    fn errors(d: &MeshDataPlane) -> String {
        let mut e = FieldErrors::new();
        d.check("dp", &mut e);
        format!("{:?}", e.into_result())
    }

    #[test]
    fn a_good_report_passes_and_has_a_stable_shape() {
        let d = sample();
        assert_eq!(errors(&d), "Ok(())");
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["xds"], serde_json::json!({"state": "connected"}));
        assert_eq!(j["egress"][0]["listener"]["state"], "bound");
        assert_eq!(j["egress"][0]["endpoints"]["state"], "held");
        assert_eq!(j["egress"][0]["endpoints"]["healthy"], 1);
        assert_eq!(j["egress"][0]["responses"]["rq_5xx"], 1);
        assert_eq!(j["egress"][0]["hosts_entry"]["state"], "present");
        assert_eq!(j["egress"][0]["bind"], "127.0.0.2");
        let back: MeshDataPlane = serde_json::from_value(j).unwrap();
        assert_eq!(back, d);
        let wrong = serde_json::to_value(HostsEntry::Wrong {
            address: "10.0.0.9".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(
            wrong,
            serde_json::json!({"state": "wrong", "address": "10.0.0.9"})
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut d = sample();
        d.xds = XdsConnection::Unknown {
            reason: "a\u{202E}b".into(),
        };
        let eg = &mut d.egress[0];
        eg.port = 0;
        eg.host = "bad_host".into();
        eg.endpoints = EgressEndpoints::Held {
            total: 1,
            healthy: 2,
            outlier_ejected: 3,
        };
        eg.responses = EgressResponses::Counted {
            rq_2xx: MAX_COUNT + 1,
            rq_4xx: 0,
            rq_5xx: 0,
            connect_failures: 0,
            connections: 0,
            window_seconds: Some(MAX_WINDOW_SECONDS + 1),
        };
        eg.listener = ListenerState::Unknown {
            reason: "x".repeat(MAX_REASON_CHARS + 1),
        };
        eg.hosts_entry = HostsEntry::Unknown {
            reason: "line\nbreak".into(),
        };
        let s = errors(&d);
        for f in [
            "dp.xds.reason",
            "dp.egress[0].port",
            "dp.egress[0].host",
            "dp.egress[0].endpoints.healthy",
            "dp.egress[0].endpoints.outlier_ejected",
            "dp.egress[0].responses.rq_2xx",
            "dp.egress[0].responses.window_seconds",
            "dp.egress[0].listener.reason",
            "dp.egress[0].hosts_entry.reason",
        ] {
            assert!(s.contains(f), "{f} not named in {s}");
        }
        let mut d = sample();
        d.egress = vec![d.egress[0].clone(); MAX_EGRESS_REPORTED + 1];
        assert!(errors(&d).contains("dp.egress"));
        let mut d = sample();
        d.omitted = 100_000;
        assert!(errors(&d).contains("dp.omitted"));
    }
}

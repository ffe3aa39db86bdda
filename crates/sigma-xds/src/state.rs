//! The per-stream ADS state machine (state of the world), kept free of I/O so that it can be
//! tested on its own.
//!
//! Per type URL the stream remembers the version and nonce it sent last. A request without a
//! nonce subscribes; one whose nonce is not the last sent is stale and ignored (it answers an
//! older response, and a newer one is already on its way); one with the last nonce is an ACK,
//! or a NACK when it carries `error_detail`.

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::resources::{CLUSTER_TYPE_URL, LISTENER_TYPE_URL, Snapshot};

/// Order of pushes on a change: listeners reference clusters, so clusters go first.
const PUSH_ORDER: [&str; 2] = [CLUSTER_TYPE_URL, LISTENER_TYPE_URL];

/// What one request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// First request for the type on this stream. `known_version` is what the client already
    /// runs (set after a reconnect, empty on a fresh Envoy).
    Subscribe {
        /// The client's current version of the type.
        known_version: String,
    },
    /// The client applied the response with that nonce.
    Ack {
        /// Version applied.
        version: String,
    },
    /// The client rejected the response with that nonce and keeps its previous config.
    Nack {
        /// The version rejected.
        rejected_version: String,
        /// The version the client keeps running.
        kept_version: String,
        /// Envoy's error detail.
        detail: String,
    },
    /// A request answering an older response; ignored per the xDS protocol.
    Stale {
        /// Its nonce.
        nonce: String,
    },
    /// A type this server does not serve.
    UnknownType,
}

/// The result of one request: what it meant and what to send back, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The request's type URL.
    pub type_url: String,
    /// What the request meant.
    pub kind: RequestKind,
    /// Responses to send, clusters before listeners.
    pub responses: Vec<DiscoveryResponse>,
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    /// Version and nonce of the last response sent; `None` until one is sent.
    sent: Option<(String, String)>,
    /// Last version the client ACKed on this stream.
    acked: Option<String>,
}

/// One ADS stream's view of what it sent and what the client did with it.
#[derive(Debug, Clone, Default)]
pub struct AdsStream {
    /// Subscribed types, in `PUSH_ORDER` positions.
    types: [Option<TypeState>; 2],
    next_nonce: u64,
}

fn slot(type_url: &str) -> Option<usize> {
    PUSH_ORDER.iter().position(|t| *t == type_url)
}

impl AdsStream {
    /// A stream that has seen no request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one request against the current snapshot (`None` before the first publish:
    /// subscriptions then wait, so that a restarted agent never pushes an empty config over
    /// the one Envoy runs).
    pub fn on_request(&mut self, req: &DiscoveryRequest, snapshot: Option<&Snapshot>) -> Step {
        let Some(i) = slot(&req.type_url) else {
            return Step {
                type_url: req.type_url.clone(),
                kind: RequestKind::UnknownType,
                responses: Vec::new(),
            };
        };
        let kind = if req.response_nonce.is_empty() {
            // A (re)subscription wants the full state, even if it already ran this version.
            self.types[i] = Some(TypeState::default());
            RequestKind::Subscribe {
                known_version: req.version_info.clone(),
            }
        } else {
            match self.types[i].as_mut() {
                Some(TypeState {
                    sent: Some((version, nonce)),
                    acked,
                }) if *nonce == req.response_nonce => match &req.error_detail {
                    Some(status) => RequestKind::Nack {
                        rejected_version: version.clone(),
                        kept_version: req.version_info.clone(),
                        detail: status.message.clone(),
                    },
                    None => {
                        *acked = Some(req.version_info.clone());
                        RequestKind::Ack {
                            version: req.version_info.clone(),
                        }
                    }
                },
                _ => RequestKind::Stale {
                    nonce: req.response_nonce.clone(),
                },
            }
        };
        Step {
            type_url: req.type_url.clone(),
            kind,
            responses: snapshot.map(|s| self.on_publish(s)).unwrap_or_default(),
        }
    }

    /// Responses that bring every subscribed type to `snapshot`, clusters first. A type that
    /// was already sent this version gets nothing: a NACKed version is not sent again.
    pub fn on_publish(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let version = snapshot.version_info();
        let mut out = Vec::new();
        for (i, type_url) in PUSH_ORDER.iter().enumerate() {
            let Some(state) = self.types[i].as_mut() else {
                continue;
            };
            if state.sent.as_ref().is_some_and(|(v, _)| *v == version) {
                continue;
            }
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            state.sent = Some((version.clone(), nonce.clone()));
            out.push(DiscoveryResponse {
                version_info: version.clone(),
                resources: snapshot
                    .resources(type_url)
                    .map(<[_]>::to_vec)
                    .unwrap_or_default(),
                type_url: (*type_url).to_string(),
                nonce,
                control_plane: Some(ControlPlane {
                    identifier: "sigma-agent".into(),
                }),
                ..Default::default()
            });
        }
        out
    }

    /// Last version the client ACKed for a type on this stream.
    pub fn acked_version(&self, type_url: &str) -> Option<&str> {
        slot(type_url)
            .and_then(|i| self.types[i].as_ref())
            .and_then(|t| t.acked.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ResourceOptions, tests::route};
    use envoy_types::pb::google::rpc::Status;

    fn snap(version: i64, ports: &[u16]) -> Snapshot {
        let routes: Vec<_> = ports.iter().map(|p| route(&format!("r{p}"), *p)).collect();
        Snapshot::build(version, &routes, &ResourceOptions::default())
    }

    fn req(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(type_url: &str, version: &str, nonce: &str, detail: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 13,
                message: detail.into(),
                details: Vec::new(),
            }),
            ..req(type_url, version, nonce)
        }
    }

    #[test]
    fn subscription_is_answered_with_the_snapshot() {
        let mut s = AdsStream::new();
        let v1 = snap(1, &[1000, 1001]);
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "", ""), Some(&v1));
        assert_eq!(
            step.kind,
            RequestKind::Subscribe {
                known_version: String::new()
            }
        );
        assert_eq!(step.responses.len(), 1);
        let r = &step.responses[0];
        assert_eq!(
            (r.type_url.as_str(), r.version_info.as_str()),
            (CLUSTER_TYPE_URL, "1")
        );
        assert_eq!(r.resources.len(), 2);
        assert!(!r.nonce.is_empty());

        // Answered on its own type only: LDS is not subscribed yet.
        let step = s.on_request(&req(LISTENER_TYPE_URL, "", ""), Some(&v1));
        assert_eq!(step.responses.len(), 1);
        assert_eq!(step.responses[0].type_url, LISTENER_TYPE_URL);
        assert_ne!(step.responses[0].nonce, r.nonce);
    }

    #[test]
    fn unknown_types_get_no_answer() {
        let mut s = AdsStream::new();
        let step = s.on_request(
            &req(
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                "",
                "",
            ),
            Some(&snap(1, &[1])),
        );
        assert_eq!(step.kind, RequestKind::UnknownType);
        assert!(step.responses.is_empty());
    }

    #[test]
    fn subscriptions_before_the_first_publish_wait_for_it() {
        let mut s = AdsStream::new();
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "4", ""), None);
        assert_eq!(
            step.kind,
            RequestKind::Subscribe {
                known_version: "4".into()
            }
        );
        assert!(step.responses.is_empty());
        s.on_request(&req(LISTENER_TYPE_URL, "4", ""), None);
        let out = s.on_publish(&snap(5, &[1]));
        let types: Vec<_> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CLUSTER_TYPE_URL, LISTENER_TYPE_URL]);
    }

    #[test]
    fn ack_nack_and_stale_nonces() {
        let mut s = AdsStream::new();
        let v1 = snap(1, &[1]);
        let c1 = s
            .on_request(&req(CLUSTER_TYPE_URL, "", ""), Some(&v1))
            .responses[0]
            .nonce
            .clone();
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "1", &c1), Some(&v1));
        assert_eq!(
            step.kind,
            RequestKind::Ack {
                version: "1".into()
            }
        );
        assert!(
            step.responses.is_empty(),
            "an ACK of the current version needs nothing"
        );
        assert_eq!(s.acked_version(CLUSTER_TYPE_URL), Some("1"));

        // Two publishes before Envoy answers: the answer to the first is stale.
        let v2 = snap(2, &[1, 2]);
        let c2 = s.on_publish(&v2)[0].nonce.clone();
        let v3 = snap(3, &[1, 2, 3]);
        let c3 = s.on_publish(&v3)[0].nonce.clone();
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "2", &c2), Some(&v3));
        assert_eq!(step.kind, RequestKind::Stale { nonce: c2 });
        assert!(step.responses.is_empty());
        assert_eq!(s.acked_version(CLUSTER_TYPE_URL), Some("1"));

        // NACK of v3: Envoy keeps 1; v3 is not sent again.
        let step = s.on_request(&nack(CLUSTER_TYPE_URL, "1", &c3, "bad cluster"), Some(&v3));
        assert_eq!(
            step.kind,
            RequestKind::Nack {
                rejected_version: "3".into(),
                kept_version: "1".into(),
                detail: "bad cluster".into()
            }
        );
        assert!(step.responses.is_empty());
        assert!(s.on_publish(&v3).is_empty());
        assert_eq!(s.acked_version(CLUSTER_TYPE_URL), Some("1"));

        // Until the next push the NACKed nonce is still the current one; after it, stale.
        let again = s.on_request(&nack(CLUSTER_TYPE_URL, "1", &c3, "bad cluster"), Some(&v3));
        assert!(matches!(again.kind, RequestKind::Nack { .. }));
        let v4 = snap(4, &[1]);
        let out = s.on_publish(&v4);
        assert_eq!(out.len(), 1, "recovery: the next version is pushed");
        let c4 = out[0].nonce.clone();
        let stale = s.on_request(&nack(CLUSTER_TYPE_URL, "1", &c3, "bad cluster"), Some(&v4));
        assert!(matches!(stale.kind, RequestKind::Stale { .. }));
        assert!(stale.responses.is_empty());
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "4", &c4), Some(&v4));
        assert_eq!(
            step.kind,
            RequestKind::Ack {
                version: "4".into()
            }
        );
    }

    #[test]
    fn a_request_with_a_nonce_never_sent_is_stale() {
        let mut s = AdsStream::new();
        let step = s.on_request(&req(LISTENER_TYPE_URL, "9", "42"), Some(&snap(1, &[1])));
        assert_eq!(step.kind, RequestKind::Stale { nonce: "42".into() });
        assert!(step.responses.is_empty());
    }

    #[test]
    fn publish_pushes_clusters_before_listeners_and_skips_unchanged_versions() {
        let mut s = AdsStream::new();
        let v1 = snap(1, &[1]);
        // Envoy subscribes LDS first here; the push order on change still puts CDS first.
        s.on_request(&req(LISTENER_TYPE_URL, "", ""), Some(&v1));
        s.on_request(&req(CLUSTER_TYPE_URL, "", ""), Some(&v1));
        let out = s.on_publish(&snap(2, &[]));
        let types: Vec<_> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CLUSTER_TYPE_URL, LISTENER_TYPE_URL]);
        assert!(
            out.iter()
                .all(|r| r.resources.is_empty() && r.version_info == "2")
        );
        assert!(s.on_publish(&snap(2, &[])).is_empty());
    }

    #[test]
    fn an_ack_behind_the_snapshot_brings_the_type_up_to_date() {
        let mut s = AdsStream::new();
        let v1 = snap(1, &[1]);
        let n = s
            .on_request(&req(CLUSTER_TYPE_URL, "", ""), Some(&v1))
            .responses[0]
            .nonce
            .clone();
        s.on_request(&req(LISTENER_TYPE_URL, "", ""), Some(&v1));
        // A publish the stream has not pushed yet (the push and the ACK raced).
        let v2 = snap(2, &[1, 2]);
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "1", &n), Some(&v2));
        assert_eq!(
            step.kind,
            RequestKind::Ack {
                version: "1".into()
            }
        );
        let types: Vec<_> = step
            .responses
            .iter()
            .map(|r| (r.type_url.as_str(), r.version_info.as_str()))
            .collect();
        assert_eq!(types, [(CLUSTER_TYPE_URL, "2"), (LISTENER_TYPE_URL, "2")]);
    }

    #[test]
    fn resubscription_resends_the_current_version() {
        let mut s = AdsStream::new();
        let v1 = snap(1, &[1]);
        s.on_request(&req(CLUSTER_TYPE_URL, "", ""), Some(&v1));
        let step = s.on_request(&req(CLUSTER_TYPE_URL, "1", ""), Some(&v1));
        assert_eq!(step.responses.len(), 1);
        assert_eq!(step.responses[0].version_info, "1");
    }
}

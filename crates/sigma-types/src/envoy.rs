//! Envoy routes: "listen on port P of this VPS, forward TCP to an upstream", kept per VPS in
//! sigma-api. The upstream is either a backend outside the fleet (an address or DNS name and
//! port) or a target inside it: one VPS, or a pool (every active, healthy VPS of a purpose,
//! optionally of some countries), at a port its purpose serves. Classic mode serves routes to
//! the VPS's Envoy through sigma-agent's xDS, with fleet targets resolved by sigma-api into
//! addresses ([`EnvoyConfig::endpoints`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::patch::{double_option, non_null};
use crate::route_target::{RouteEndpoint, RouteTarget, RouteTargetInput, Upstream, UpstreamSpec};
use crate::validate::{self as v, FieldErrors, Normalize};

/// How Envoy finds the backend's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterType {
    /// `backend_host` is an IP address.
    Static,
    /// DNS name, every address used, re-resolved periodically.
    StrictDns,
    /// DNS name, the first address used per new connection.
    LogicalDns,
}

impl ClusterType {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterType::Static => "static",
            ClusterType::StrictDns => "strict_dns",
            ClusterType::LogicalDns => "logical_dns",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Static, Self::StrictDns, Self::LogicalDns]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// PROXY protocol header Envoy sends to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// No header.
    None,
    /// Version 1 (text).
    V1,
    /// Version 2 (binary).
    V2,
}

impl ProxyProtocol {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::None => "none",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::None, Self::V1, Self::V2]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Whether a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteStatus {
    /// Served.
    Active,
    /// Kept, not served.
    Disabled,
}

impl RouteStatus {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteStatus::Active => "active",
            RouteStatus::Disabled => "disabled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Disabled]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// One TCP forwarding route of a VPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvoyRoute {
    /// Stable id.
    pub id: Uuid,
    /// The VPS it belongs to.
    pub vps_id: Uuid,
    /// Unique per VPS; names the Envoy listener and cluster.
    pub name: String,
    /// Port Envoy listens on (unique per VPS).
    pub listen_port: u16,
    /// Where it forwards to: `backend_host`/`backend_port`/`cluster_type`, or `target`.
    #[serde(flatten)]
    pub upstream: Upstream,
    /// Connect timeout to the backend, in milliseconds.
    pub connect_timeout_ms: u32,
    /// PROXY protocol towards the backend.
    pub proxy_protocol: ProxyProtocol,
    /// Served or not.
    pub status: RouteStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Last changed at.
    pub updated_at: OffsetDateTime,
}

/// Longest connect timeout accepted: one minute.
pub const MAX_CONNECT_TIMEOUT_MS: i64 = 60_000;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_MS: i64 = 5_000;
/// Most routes one VPS may have (and one batch may carry).
pub const MAX_ROUTES_PER_VPS: usize = 4096;

/// A route name: 1–63 characters of lower-case letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit (it becomes part of Envoy listener and cluster names and stat
/// prefixes).
pub fn route_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1-63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return Err("may only hold lower-case letters, digits, '-', '_' and '.'".into());
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    Ok(s.to_string())
}

/// A backend host: an IP address (canonical form) or a DNS name (lower case).
pub fn backend_host(s: &str) -> Result<String, String> {
    v::ip(s).or_else(|_| {
        v::hostname(s).map_err(|_| format!("{s:?} is neither an IP address nor a DNS name"))
    })
}

fn check_type_and_host(cluster_type: ClusterType, host: &str, field: &str, e: &mut FieldErrors) {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if cluster_type == ClusterType::Static && !is_ip {
        e.add(
            field,
            "a static cluster needs an IP address as backend_host; use strict_dns or logical_dns for a DNS name",
        );
    }
}

fn timeout(ms: i64) -> Result<u32, String> {
    if (1..=MAX_CONNECT_TIMEOUT_MS).contains(&ms) {
        Ok(ms as u32)
    } else {
        Err(format!("must be 1-{MAX_CONNECT_TIMEOUT_MS}"))
    }
}

/// Creates a route (or, in a batch, creates or replaces the route of that name).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRouteCreate {
    /// Unique per VPS.
    pub name: String,
    /// Port Envoy listens on.
    pub listen_port: i64,
    /// Backend IP address or DNS name outside the fleet (with `backend_port`; not with
    /// `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_host: Option<String>,
    /// Backend port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_port: Option<i64>,
    /// A target inside the fleet instead of a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RouteTargetInput>,
    /// Default: `static` for an IP address, `strict_dns` for a name (backends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_type: Option<ClusterType>,
    /// Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<i64>,
    /// Default `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Default `active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// A checked route, ready to store (a fleet target's VPS still to be looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Name.
    pub name: String,
    /// Listen port.
    pub listen_port: u16,
    /// Where it forwards to.
    pub upstream: UpstreamSpec,
    /// Connect timeout.
    pub connect_timeout_ms: u32,
    /// PROXY protocol.
    pub proxy_protocol: ProxyProtocol,
    /// Status.
    pub status: RouteStatus,
}

impl From<&EnvoyRoute> for RouteSpec {
    fn from(r: &EnvoyRoute) -> Self {
        RouteSpec {
            name: r.name.clone(),
            listen_port: r.listen_port,
            upstream: UpstreamSpec::from(&r.upstream),
            connect_timeout_ms: r.connect_timeout_ms,
            proxy_protocol: r.proxy_protocol,
            status: r.status,
        }
    }
}

impl EnvoyRouteCreate {
    /// Checks the route, naming fields under `prefix` (`""` or `routes[3].`).
    pub fn spec(&self, prefix: &str, e: &mut FieldErrors) -> Option<RouteSpec> {
        let f = |n: &str| format!("{prefix}{n}");
        let name = e.check(&f("name"), route_name(&self.name));
        let listen_port = e.check(&f("listen_port"), v::port(self.listen_port));
        let timeout = e.check(
            &f("connect_timeout_ms"),
            timeout(
                self.connect_timeout_ms
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            ),
        );
        let upstream = match (&self.target, &self.backend_host, self.backend_port) {
            (Some(t), host, port) => {
                if host.is_some() {
                    e.add(
                        f("backend_host"),
                        "give either target or backend_host, not both",
                    );
                }
                if port.is_some() {
                    e.add(
                        f("backend_port"),
                        "give either target or backend_port, not both",
                    );
                }
                if self.cluster_type.is_some() {
                    e.add(
                        f("cluster_type"),
                        "a fleet target is resolved by sigma; cluster_type is for backends",
                    );
                }
                t.spec(&f("target."), e).map(UpstreamSpec::Target)
            }
            (None, host, port) => {
                let host = match host {
                    Some(h) => e.check(&f("backend_host"), backend_host(h)),
                    None => {
                        e.add(f("backend_host"), "required (or a fleet target in target)");
                        None
                    }
                };
                let port = match port {
                    Some(p) => e.check(&f("backend_port"), v::port(p)),
                    None => {
                        e.add(f("backend_port"), "required (or a fleet target in target)");
                        None
                    }
                };
                let host = host?;
                let cluster_type =
                    self.cluster_type
                        .unwrap_or(if host.parse::<std::net::IpAddr>().is_ok() {
                            ClusterType::Static
                        } else {
                            ClusterType::StrictDns
                        });
                check_type_and_host(cluster_type, &host, &f("backend_host"), e);
                Some(UpstreamSpec::Backend {
                    host,
                    port: port?,
                    cluster_type,
                })
            }
        };
        Some(RouteSpec {
            name: name?,
            listen_port: listen_port?,
            upstream: upstream?,
            connect_timeout_ms: timeout?,
            proxy_protocol: self.proxy_protocol.unwrap_or(ProxyProtocol::None),
            status: self.status.unwrap_or(RouteStatus::Active),
        })
    }
}

/// Changes a route: absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRoutePatch {
    /// New name.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// New listen port.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<i64>)]
    pub listen_port: Option<Option<i64>>,
    /// New backend host.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub backend_host: Option<Option<String>>,
    /// New backend port.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<i64>)]
    pub backend_port: Option<Option<i64>>,
    /// New fleet target (replaces a backend; a new backend replaces a target).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<RouteTargetInput>)]
    pub target: Option<Option<RouteTargetInput>>,
    /// New cluster type.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ClusterType>)]
    pub cluster_type: Option<Option<ClusterType>>,
    /// New connect timeout.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<i64>)]
    pub connect_timeout_ms: Option<Option<i64>>,
    /// New PROXY protocol.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ProxyProtocol>)]
    pub proxy_protocol: Option<Option<ProxyProtocol>>,
    /// New status.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<RouteStatus>)]
    pub status: Option<Option<RouteStatus>>,
}

impl EnvoyRoutePatch {
    /// Applies the patch to a stored route and checks the result. A stored fleet target
    /// stays unless the patch names a new target or a new backend (host and port).
    pub fn apply(&self, r: &EnvoyRoute) -> Result<RouteSpec, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = non_null(self.name.clone(), "name", &mut e).unwrap_or_else(|| r.name.clone());
        let listen_port =
            non_null(self.listen_port, "listen_port", &mut e).unwrap_or(i64::from(r.listen_port));
        let new_host = non_null(self.backend_host.clone(), "backend_host", &mut e);
        let new_port = non_null(self.backend_port, "backend_port", &mut e);
        let new_target = non_null(self.target.clone(), "target", &mut e);
        let new_type = non_null(self.cluster_type, "cluster_type", &mut e);
        let connect_timeout_ms = non_null(self.connect_timeout_ms, "connect_timeout_ms", &mut e)
            .unwrap_or(i64::from(r.connect_timeout_ms));
        let proxy_protocol =
            non_null(self.proxy_protocol, "proxy_protocol", &mut e).unwrap_or(r.proxy_protocol);
        let status = non_null(self.status, "status", &mut e).unwrap_or(r.status);
        let (backend_host, backend_port, target, cluster_type) = match (&r.upstream, new_target) {
            (_, Some(t)) => (new_host, new_port, Some(t), new_type),
            (
                Upstream::Backend {
                    backend_host,
                    backend_port,
                    cluster_type,
                },
                None,
            ) => {
                // A new backend host without a new type re-derives the type from the host's
                // form.
                let ty = new_type.or(if new_host.is_some() {
                    None
                } else {
                    Some(*cluster_type)
                });
                (
                    Some(new_host.unwrap_or_else(|| backend_host.clone())),
                    Some(new_port.unwrap_or(i64::from(*backend_port))),
                    None,
                    ty,
                )
            }
            (Upstream::Target { target }, None) => {
                if new_host.is_some() || new_port.is_some() {
                    // Moving from a fleet target to a backend needs both halves of it.
                    (new_host, new_port, None, new_type)
                } else {
                    (None, None, Some(target_input(target)), new_type)
                }
            }
        };
        let spec = EnvoyRouteCreate {
            name,
            listen_port,
            backend_host,
            backend_port,
            target,
            cluster_type,
            connect_timeout_ms: Some(connect_timeout_ms),
            proxy_protocol: Some(proxy_protocol),
            status: Some(status),
        }
        .spec("", &mut e);
        e.into_result()?;
        spec.ok_or_else(FieldErrors::new)
    }
}

/// A stored target as an operator would write it (by id).
fn target_input(t: &RouteTarget) -> RouteTargetInput {
    match t {
        RouteTarget::Vps { vps_id, port, .. } => RouteTargetInput {
            vps: Some(vps_id.to_string()),
            port: port.clone(),
            ..Default::default()
        },
        RouteTarget::Pool {
            purpose,
            port,
            countries,
        } => RouteTargetInput {
            purpose: Some(purpose.clone()),
            port: port.clone(),
            countries: (!countries.is_empty()).then(|| countries.clone()),
            ..Default::default()
        },
    }
}

/// Creates or replaces several routes of one VPS by name, in one transaction and one version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRouteBatch {
    /// Routes to create or replace (matched by name).
    pub routes: Vec<EnvoyRouteCreate>,
    /// Also delete the VPS's routes not named here.
    #[serde(default)]
    pub prune: bool,
}

impl EnvoyRouteBatch {
    /// Checks every route and that names and listen ports are unique within the batch.
    pub fn specs(&self) -> Result<Vec<RouteSpec>, FieldErrors> {
        let mut e = FieldErrors::new();
        if self.routes.len() > MAX_ROUTES_PER_VPS {
            e.add("routes", format!("at most {MAX_ROUTES_PER_VPS} routes"));
            return Err(e);
        }
        let mut out: Vec<RouteSpec> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(s) = r.spec(&format!("routes[{i}]."), &mut e) {
                if out.iter().any(|o| o.name == s.name) {
                    e.add(
                        format!("routes[{i}].name"),
                        format!("{} appears twice", s.name),
                    );
                } else if out.iter().any(|o| o.listen_port == s.listen_port) {
                    e.add(
                        format!("routes[{i}].listen_port"),
                        format!("{} appears twice", s.listen_port),
                    );
                } else {
                    out.push(s);
                }
            }
        }
        e.into_result().map(|_| out)
    }
}

impl Normalize for EnvoyRouteCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let spec = self.spec("", &mut e);
        e.into_result()?;
        let s = spec.ok_or_else(FieldErrors::new)?;
        let (backend_host, backend_port, cluster_type, target) = match s.upstream {
            UpstreamSpec::Backend {
                host,
                port,
                cluster_type,
            } => (Some(host), Some(i64::from(port)), Some(cluster_type), None),
            UpstreamSpec::Target(_) => (None, None, None, self.target),
        };
        Ok(EnvoyRouteCreate {
            name: s.name,
            listen_port: i64::from(s.listen_port),
            backend_host,
            backend_port,
            target,
            cluster_type,
            connect_timeout_ms: Some(i64::from(s.connect_timeout_ms)),
            proxy_protocol: Some(s.proxy_protocol),
            status: Some(s.status),
        })
    }
}

/// What an agent serves to its Envoy: the active routes of its VPS at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvoyConfig {
    /// The VPS.
    pub vps_id: Uuid,
    /// Compare for equality only. Without fleet targets it is the VPS's route version, which
    /// changes in the same transaction as any change of its routes; with fleet targets it also
    /// changes when a target's addresses change (a digest of both).
    pub version: i64,
    /// Active routes, by name.
    pub routes: Vec<EnvoyRoute>,
    /// The current addresses of each active fleet-target route, by route name (sorted; empty
    /// when no target VPS is active and heard from).
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, Vec<RouteEndpoint>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_target::{TargetSpec, VpsRef};

    fn create(v: serde_json::Value) -> EnvoyRouteCreate {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_follow_the_backend() {
        let mut e = FieldErrors::new();
        let s = create(serde_json::json!({"name": "r1", "listen_port": 443, "backend_host": "10.0.0.1", "backend_port": 8443}))
            .spec("", &mut e)
            .unwrap();
        assert!(e.is_empty());
        assert_eq!(
            s.upstream,
            UpstreamSpec::Backend {
                host: "10.0.0.1".into(),
                port: 8443,
                cluster_type: ClusterType::Static
            }
        );
        assert_eq!(s.connect_timeout_ms, 5000);
        assert_eq!(s.proxy_protocol, ProxyProtocol::None);
        let s = create(serde_json::json!({"name": "r2", "listen_port": 443, "backend_host": "Backend.Example.com", "backend_port": 8443}))
            .spec("", &mut e)
            .unwrap();
        assert_eq!(
            s.upstream,
            UpstreamSpec::Backend {
                host: "backend.example.com".into(),
                port: 8443,
                cluster_type: ClusterType::StrictDns
            }
        );
    }

    #[test]
    fn bad_routes_name_their_fields() {
        let mut e = FieldErrors::new();
        create(serde_json::json!({"name": "Bad Name", "listen_port": 0, "backend_host": "not a host", "backend_port": 70000, "connect_timeout_ms": 0}))
            .spec("routes[2].", &mut e);
        for f in [
            "name",
            "listen_port",
            "backend_host",
            "backend_port",
            "connect_timeout_ms",
        ] {
            assert!(e.0.contains_key(&format!("routes[2].{f}")), "{f}: {e:?}");
        }
        let mut e = FieldErrors::new();
        create(serde_json::json!({"name": "r", "listen_port": 1, "backend_host": "a.example", "backend_port": 1, "cluster_type": "static"}))
            .spec("", &mut e);
        assert!(e.0["backend_host"].contains("static"));
        assert!(serde_json::from_value::<EnvoyRouteCreate>(serde_json::json!({"name": "r", "listen_port": 1, "backend_host": "h", "backend_port": 1, "proxy_protocol": "v3"})).is_err());
    }

    #[test]
    fn batches_refuse_duplicates() {
        let b: EnvoyRouteBatch = serde_json::from_value(serde_json::json!({"routes": [
            {"name": "a", "listen_port": 1000, "backend_host": "10.0.0.1", "backend_port": 1},
            {"name": "a", "listen_port": 1001, "backend_host": "10.0.0.1", "backend_port": 1},
            {"name": "b", "listen_port": 1000, "backend_host": "10.0.0.1", "backend_port": 1},
        ]}))
        .unwrap();
        let e = b.specs().unwrap_err();
        assert!(e.0.contains_key("routes[1].name"));
        assert!(e.0.contains_key("routes[2].listen_port"));
    }

    #[test]
    fn patches_recheck_the_whole_route() {
        let r = EnvoyRoute {
            id: Uuid::nil(),
            vps_id: Uuid::nil(),
            name: "r".into(),
            listen_port: 1000,
            upstream: Upstream::Backend {
                backend_host: "10.0.0.1".into(),
                backend_port: 80,
                cluster_type: ClusterType::Static,
            },
            connect_timeout_ms: 5000,
            proxy_protocol: ProxyProtocol::None,
            status: RouteStatus::Active,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        let ty = |s: RouteSpec| match s.upstream {
            UpstreamSpec::Backend { cluster_type, .. } => cluster_type,
            other => panic!("{other:?}"),
        };
        let p: EnvoyRoutePatch =
            serde_json::from_str(r#"{"backend_host": "db.example.com"}"#).unwrap();
        assert_eq!(ty(p.apply(&r).unwrap()), ClusterType::StrictDns);
        let p: EnvoyRoutePatch =
            serde_json::from_str(r#"{"cluster_type": "logical_dns"}"#).unwrap();
        assert_eq!(ty(p.apply(&r).unwrap()), ClusterType::LogicalDns);
        let p: EnvoyRoutePatch = serde_json::from_str(r#"{"listen_port": null}"#).unwrap();
        assert!(p.apply(&r).unwrap_err().0.contains_key("listen_port"));

        // Backend -> pool -> (other fields kept) -> backend again.
        let p: EnvoyRoutePatch = serde_json::from_str(
            r#"{"target": {"purpose": "vpn-exit", "port": "vpn", "countries": ["de", "FI", "DE"]}}"#,
        )
        .unwrap();
        let pool = p.apply(&r).unwrap();
        assert_eq!(
            pool.upstream,
            UpstreamSpec::Target(TargetSpec::Pool {
                purpose: "vpn-exit".into(),
                port: "vpn".into(),
                countries: vec!["DE".into(), "FI".into()],
            })
        );
        let mut fleet = r.clone();
        fleet.upstream = Upstream::Target {
            target: RouteTarget::Pool {
                purpose: "vpn-exit".into(),
                port: "vpn".into(),
                countries: vec![],
            },
        };
        let p: EnvoyRoutePatch = serde_json::from_str(r#"{"listen_port": 1001}"#).unwrap();
        assert_eq!(
            p.apply(&fleet).unwrap().upstream,
            UpstreamSpec::from(&fleet.upstream)
        );
        // Half a backend is not enough to leave a fleet target.
        let p: EnvoyRoutePatch = serde_json::from_str(r#"{"backend_host": "10.0.0.9"}"#).unwrap();
        assert!(p.apply(&fleet).unwrap_err().0.contains_key("backend_port"));
        let p: EnvoyRoutePatch =
            serde_json::from_str(r#"{"backend_host": "10.0.0.9", "backend_port": 22}"#).unwrap();
        assert!(matches!(
            p.apply(&fleet).unwrap().upstream,
            UpstreamSpec::Backend { port: 22, .. }
        ));
    }

    #[test]
    fn fleet_targets_name_their_fields() {
        let check = |v: serde_json::Value| {
            let mut e = FieldErrors::new();
            let s = create(v).spec("", &mut e);
            (s, e)
        };
        let (s, e) = check(serde_json::json!({"name": "r", "listen_port": 443,
            "target": {"vps": "Exit-1.Example", "port": "vpn"}}));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            s.unwrap().upstream,
            UpstreamSpec::Target(TargetSpec::Vps {
                vps: VpsRef::Hostname("exit-1.example".into()),
                port: "vpn".into()
            })
        );
        let id = Uuid::new_v4();
        let (s, _) = check(serde_json::json!({"name": "r", "listen_port": 443,
            "target": {"vps": id.to_string(), "port": "vpn"}}));
        assert!(matches!(
            s.unwrap().upstream,
            UpstreamSpec::Target(TargetSpec::Vps { vps: VpsRef::Id(i), .. }) if i == id
        ));
        for (v, field) in [
            (serde_json::json!({"port": "vpn"}), "target"),
            (
                serde_json::json!({"vps": "a", "purpose": "b", "port": "vpn"}),
                "target.purpose",
            ),
            (
                serde_json::json!({"vps": "a b", "port": "vpn"}),
                "target.vps",
            ),
            (
                serde_json::json!({"vps": "a", "port": "Not A Label"}),
                "target.port",
            ),
            (
                serde_json::json!({"vps": "a", "port": "vpn", "countries": ["DE"]}),
                "target.countries",
            ),
            (
                serde_json::json!({"purpose": "vpn-exit", "port": "vpn", "countries": ["DE", "Germany"]}),
                "target.countries[1]",
            ),
            (
                serde_json::json!({"purpose": "Bad Purpose", "port": "vpn"}),
                "target.purpose",
            ),
        ] {
            let (_, e) = check(serde_json::json!({"name": "r", "listen_port": 443, "target": v}));
            assert!(e.0.contains_key(field), "{field}: {e:?}");
        }
        // A backend and a target at once, or a cluster type for a target.
        let (_, e) = check(
            serde_json::json!({"name": "r", "listen_port": 443, "backend_host": "10.0.0.1",
            "backend_port": 1, "cluster_type": "static", "target": {"vps": "a", "port": "vpn"}}),
        );
        for f in ["backend_host", "backend_port", "cluster_type"] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        // Neither.
        let (_, e) = check(serde_json::json!({"name": "r", "listen_port": 443}));
        assert!(
            e.0.contains_key("backend_host") && e.0.contains_key("backend_port"),
            "{e:?}"
        );
    }

    #[test]
    fn routes_serialize_flat_for_both_kinds() {
        let backend = Upstream::Backend {
            backend_host: "10.0.0.1".into(),
            backend_port: 80,
            cluster_type: ClusterType::Static,
        };
        assert_eq!(
            serde_json::to_value(&backend).unwrap(),
            serde_json::json!({"backend_host": "10.0.0.1", "backend_port": 80, "cluster_type": "static"})
        );
        let id = Uuid::nil();
        let vps = Upstream::Target {
            target: RouteTarget::Vps {
                vps_id: id,
                hostname: "exit-1".into(),
                port: "vpn".into(),
            },
        };
        let json = serde_json::to_value(&vps).unwrap();
        assert_eq!(json["target"]["kind"], "vps");
        assert_eq!(serde_json::from_value::<Upstream>(json).unwrap(), vps);
        assert_eq!(
            serde_json::from_value::<Upstream>(serde_json::to_value(&backend).unwrap()).unwrap(),
            backend
        );
    }
}

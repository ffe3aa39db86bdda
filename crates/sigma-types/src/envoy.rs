//! Envoy routes of the classic mode: "listen on port P, forward TCP to backend H:Q", kept per
//! VPS in sigma-api and served to the VPS's Envoy by sigma-agent over xDS.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::patch::{double_option, non_null};
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
    /// Backend IP address or DNS name.
    pub backend_host: String,
    /// Backend port.
    pub backend_port: u16,
    /// How Envoy resolves the backend.
    pub cluster_type: ClusterType,
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
    /// Backend IP address or DNS name.
    pub backend_host: String,
    /// Backend port.
    pub backend_port: i64,
    /// Default: `static` for an IP address, `strict_dns` for a name.
    #[serde(default)]
    pub cluster_type: Option<ClusterType>,
    /// Default 5000.
    #[serde(default)]
    pub connect_timeout_ms: Option<i64>,
    /// Default `none`.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Default `active`.
    #[serde(default)]
    pub status: Option<RouteStatus>,
}

/// A checked route, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Name.
    pub name: String,
    /// Listen port.
    pub listen_port: u16,
    /// Backend host.
    pub backend_host: String,
    /// Backend port.
    pub backend_port: u16,
    /// Cluster type.
    pub cluster_type: ClusterType,
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
            backend_host: r.backend_host.clone(),
            backend_port: r.backend_port,
            cluster_type: r.cluster_type,
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
        let backend_host = e.check(&f("backend_host"), backend_host(&self.backend_host));
        let backend_port = e.check(&f("backend_port"), v::port(self.backend_port));
        let timeout = e.check(
            &f("connect_timeout_ms"),
            timeout(
                self.connect_timeout_ms
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            ),
        );
        let backend_host = backend_host?;
        let cluster_type =
            self.cluster_type
                .unwrap_or(if backend_host.parse::<std::net::IpAddr>().is_ok() {
                    ClusterType::Static
                } else {
                    ClusterType::StrictDns
                });
        check_type_and_host(cluster_type, &backend_host, &f("backend_host"), e);
        Some(RouteSpec {
            name: name?,
            listen_port: listen_port?,
            backend_host,
            backend_port: backend_port?,
            cluster_type,
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
    /// Applies the patch to a stored route and checks the result.
    pub fn apply(&self, r: &EnvoyRoute) -> Result<RouteSpec, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = non_null(self.name.clone(), "name", &mut e).unwrap_or_else(|| r.name.clone());
        let listen_port =
            non_null(self.listen_port, "listen_port", &mut e).unwrap_or(i64::from(r.listen_port));
        let backend_host = non_null(self.backend_host.clone(), "backend_host", &mut e)
            .unwrap_or_else(|| r.backend_host.clone());
        let backend_port = non_null(self.backend_port, "backend_port", &mut e)
            .unwrap_or(i64::from(r.backend_port));
        // A new backend host without a new type re-derives the type from the host's form.
        let cluster_type = non_null(self.cluster_type, "cluster_type", &mut e).or(
            if self.backend_host.is_some() {
                None
            } else {
                Some(r.cluster_type)
            },
        );
        let connect_timeout_ms = non_null(self.connect_timeout_ms, "connect_timeout_ms", &mut e)
            .unwrap_or(i64::from(r.connect_timeout_ms));
        let proxy_protocol =
            non_null(self.proxy_protocol, "proxy_protocol", &mut e).unwrap_or(r.proxy_protocol);
        let status = non_null(self.status, "status", &mut e).unwrap_or(r.status);
        let spec = EnvoyRouteCreate {
            name,
            listen_port,
            backend_host,
            backend_port,
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
        Ok(EnvoyRouteCreate {
            name: s.name,
            listen_port: i64::from(s.listen_port),
            backend_host: s.backend_host,
            backend_port: i64::from(s.backend_port),
            cluster_type: Some(s.cluster_type),
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
    /// Changes in the same transaction as any change of the VPS's routes.
    pub version: i64,
    /// Active routes, by name.
    pub routes: Vec<EnvoyRoute>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.cluster_type, ClusterType::Static);
        assert_eq!(s.connect_timeout_ms, 5000);
        assert_eq!(s.proxy_protocol, ProxyProtocol::None);
        let s = create(serde_json::json!({"name": "r2", "listen_port": 443, "backend_host": "Backend.Example.com", "backend_port": 8443}))
            .spec("", &mut e)
            .unwrap();
        assert_eq!(s.cluster_type, ClusterType::StrictDns);
        assert_eq!(s.backend_host, "backend.example.com");
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
            backend_host: "10.0.0.1".into(),
            backend_port: 80,
            cluster_type: ClusterType::Static,
            connect_timeout_ms: 5000,
            proxy_protocol: ProxyProtocol::None,
            status: RouteStatus::Active,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        let p: EnvoyRoutePatch =
            serde_json::from_str(r#"{"backend_host": "db.example.com"}"#).unwrap();
        assert_eq!(p.apply(&r).unwrap().cluster_type, ClusterType::StrictDns);
        let p: EnvoyRoutePatch =
            serde_json::from_str(r#"{"cluster_type": "logical_dns"}"#).unwrap();
        assert_eq!(p.apply(&r).unwrap().cluster_type, ClusterType::LogicalDns);
        let p: EnvoyRoutePatch = serde_json::from_str(r#"{"listen_port": null}"#).unwrap();
        assert!(p.apply(&r).unwrap_err().0.contains_key("listen_port"));
    }
}

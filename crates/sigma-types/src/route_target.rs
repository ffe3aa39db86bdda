//! Where an Envoy route forwards to: a backend outside the fleet, or a target inside it (one
//! VPS, or the pool of a purpose's VPS, at a named port its purpose serves), as stored and
//! shown ([`Upstream`], [`RouteTarget`]), as operators write it ([`RouteTargetInput`]), checked
//! ([`UpstreamSpec`]) and resolved for a classic-mode agent ([`RouteEndpoint`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::envoy::ClusterType;
use crate::validate::{self as v, FieldErrors};

/// Where a route forwards to.
///
/// Serialized flat into the route: a backend route has `backend_host`, `backend_port` and
/// `cluster_type` (as before fleet targets existed, so existing clients read it unchanged), a
/// fleet route has `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Upstream {
    /// An address or DNS name outside the fleet.
    Backend {
        /// Backend IP address or DNS name.
        backend_host: String,
        /// Backend port.
        backend_port: u16,
        /// How Envoy resolves the backend.
        cluster_type: ClusterType,
    },
    /// A VPS or a pool of VPS of the fleet.
    Target {
        /// The target.
        target: RouteTarget,
    },
}

/// A target inside the fleet, named by what it is rather than by address: sigma-api resolves
/// it (classic mode) or renders it as mesh configuration (mesh mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteTarget {
    /// One VPS, at a port its purpose serves.
    Vps {
        /// The VPS.
        vps_id: Uuid,
        /// Its hostname (current, for people).
        hostname: String,
        /// Name of the port (one of its purpose's `mesh.ports`).
        port: String,
    },
    /// Every active VPS of a purpose whose agent is heard from, at a port the purpose serves.
    Pool {
        /// The purpose.
        purpose: String,
        /// Name of the port (one of the purpose's `mesh.ports`).
        port: String,
        /// Only VPS in these countries (ISO 3166-1 alpha-2); empty: every country.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        countries: Vec<String>,
    },
}

impl std::fmt::Display for Upstream {
    /// `host:port` (`[v6]:port`), `vps exit-1:vpn` or `pool vpn-exit:vpn (DE,FI)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Backend {
                backend_host,
                backend_port,
                ..
            } if backend_host.contains(':') => write!(f, "[{backend_host}]:{backend_port}"),
            Upstream::Backend {
                backend_host,
                backend_port,
                ..
            } => write!(f, "{backend_host}:{backend_port}"),
            Upstream::Target {
                target: RouteTarget::Vps { hostname, port, .. },
            } => write!(f, "vps {hostname}:{port}"),
            Upstream::Target {
                target:
                    RouteTarget::Pool {
                        purpose,
                        port,
                        countries,
                    },
            } => {
                write!(f, "pool {purpose}:{port}")?;
                if !countries.is_empty() {
                    write!(f, " ({})", countries.join(","))?;
                }
                Ok(())
            }
        }
    }
}

impl Upstream {
    /// The backend's cluster type, or `fleet` for a target sigma resolves.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Upstream::Backend { cluster_type, .. } => cluster_type.as_str(),
            Upstream::Target { .. } => "fleet",
        }
    }
}

impl RouteTarget {
    /// The name of the target's port.
    pub fn port(&self) -> &str {
        match self {
            RouteTarget::Vps { port, .. } | RouteTarget::Pool { port, .. } => port,
        }
    }
}

/// A fleet target as an operator writes it: exactly one of `vps` (id or hostname) and
/// `purpose`, and the name of the port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTargetInput {
    /// A VPS by id or hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vps: Option<String>,
    /// A purpose: the pool of its active, healthy VPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Name of a port the target's purpose serves (its `mesh.ports[].name`).
    pub port: String,
    /// With `purpose`: only VPS in these countries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
}

/// A VPS named by an operator: by id, or by hostname (looked up among live VPS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VpsRef {
    /// By id.
    Id(Uuid),
    /// By hostname (lower case).
    Hostname(String),
}

/// A checked fleet target, its VPS not yet looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetSpec {
    /// One VPS.
    Vps {
        /// The VPS.
        vps: VpsRef,
        /// Port name.
        port: String,
    },
    /// A pool.
    Pool {
        /// Purpose.
        purpose: String,
        /// Port name.
        port: String,
        /// Countries (sorted, unique); empty: all.
        countries: Vec<String>,
    },
}

/// A checked upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamSpec {
    /// Outside the fleet.
    Backend {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cluster type.
        cluster_type: ClusterType,
    },
    /// Inside the fleet.
    Target(TargetSpec),
}

impl From<&Upstream> for UpstreamSpec {
    fn from(u: &Upstream) -> Self {
        match u {
            Upstream::Backend {
                backend_host,
                backend_port,
                cluster_type,
            } => UpstreamSpec::Backend {
                host: backend_host.clone(),
                port: *backend_port,
                cluster_type: *cluster_type,
            },
            Upstream::Target {
                target: RouteTarget::Vps { vps_id, port, .. },
            } => UpstreamSpec::Target(TargetSpec::Vps {
                vps: VpsRef::Id(*vps_id),
                port: port.clone(),
            }),
            Upstream::Target {
                target:
                    RouteTarget::Pool {
                        purpose,
                        port,
                        countries,
                    },
            } => UpstreamSpec::Target(TargetSpec::Pool {
                purpose: purpose.clone(),
                port: port.clone(),
                countries: countries.clone(),
            }),
        }
    }
}

/// Most countries one pool may name.
pub const MAX_POOL_COUNTRIES: usize = 64;

impl RouteTargetInput {
    /// Checks the target, naming fields under `prefix` (`"target."`).
    pub fn spec(&self, prefix: &str, e: &mut FieldErrors) -> Option<TargetSpec> {
        let f = |n: &str| format!("{prefix}{n}");
        let port = e.check(&f("port"), v::dns_label(&self.port));
        match (&self.vps, &self.purpose) {
            (Some(_), Some(_)) => {
                e.add(f("purpose"), "give either vps or purpose, not both");
                None
            }
            (None, None) => {
                e.add(
                    prefix.trim_end_matches('.'),
                    "needs vps (a VPS by id or hostname) or purpose (a pool)",
                );
                None
            }
            (Some(vps), None) => {
                if self.countries.is_some() {
                    e.add(
                        f("countries"),
                        "only a pool (purpose) is narrowed by countries",
                    );
                }
                let vps = match Uuid::parse_str(vps.trim()) {
                    Ok(id) => Some(VpsRef::Id(id)),
                    Err(_) => e.check(&f("vps"), v::hostname(vps)).map(VpsRef::Hostname),
                };
                Some(TargetSpec::Vps {
                    vps: vps?,
                    port: port?,
                })
            }
            (None, Some(purpose)) => {
                let purpose = e.check(&f("purpose"), v::dns_label(purpose));
                let mut countries = Vec::new();
                let given = self.countries.as_deref().unwrap_or_default();
                if given.len() > MAX_POOL_COUNTRIES {
                    e.add(f("countries"), format!("at most {MAX_POOL_COUNTRIES}"));
                }
                for (i, c) in given.iter().enumerate() {
                    if let Some(c) = e.check(&f(&format!("countries[{i}]")), v::country(c)) {
                        countries.push(c);
                    }
                }
                countries.sort();
                countries.dedup();
                Some(TargetSpec::Pool {
                    purpose: purpose?,
                    port: port?,
                    countries,
                })
            }
        }
    }
}

/// One address of a fleet target, as sigma-api resolved it for a classic-mode agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct RouteEndpoint {
    /// The target VPS's address (the one its WorkloadEntry would carry).
    #[schema(value_type = String)]
    pub address: std::net::IpAddr,
    /// The application's port on it.
    pub port: u16,
    /// The VPS's hostname (for logs and people).
    pub hostname: String,
}

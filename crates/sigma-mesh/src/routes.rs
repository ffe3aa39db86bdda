//! Envoy routes of meshed VPS as Istio configuration.
//!
//! A route (sigma-api's `envoy_routes`) forwards TCP connections that users open to a VPS's
//! `listen_port` to an upstream: a backend outside the fleet, one VPS of the fleet, or a pool
//! (the VPS of a purpose, optionally of some countries). In classic mode sigma-agent's own xDS
//! serves it. When the VPS is in the mesh, istiod configures its Envoy, so the route becomes
//! Istio objects:
//!
//! * a **ServiceEntry** per route with the host `route-<listen_port>.<entry name>.<domain>` and
//!   one port numbered `listen_port`: for a fleet target `MESH_INTERNAL`, selecting the target
//!   VPS (`sigma.io/vps-id`) or the pool (`app`, and `country` for one country) and named like
//!   the target's port, so each endpoint is the target VPS's mesh-facing ingress listener (its
//!   WorkloadEntry `ports`); for a backend `MESH_EXTERNAL` with the backend inline (`STATIC`
//!   for an IP, `DNS`/`DNS_ROUND_ROBIN` for a name) at `targetPort` = the backend's port;
//! * a **DestinationRule** per route: `ISTIO_MUTUAL` toward the fleet (each hop is mTLS between
//!   the two VPS's istiod-issued identities), plain TCP toward a backend, the route's connect
//!   timeout, and its PROXY header toward a backend;
//! * an **egress listener** on the route's VPS only, bound to the VPS's mesh address (its
//!   WorkloadEntry address: the public one when it has one) and `listen_port`, capture mode
//!   `NONE`, importing just the route's host. Istio allows one Sidecar per workload, so a
//!   purpose whose VPS carry routes gets one Sidecar per VPS (named like its WorkloadEntry,
//!   selecting its `sigma.io/vps-id`) holding the purpose's listeners plus that VPS's routes,
//!   instead of the purpose's Sidecar. The selector label is on every entry already, so no
//!   label, bundle or proxy restart changes when a VPS gains or loses routes.
//!
//! What the mesh cannot carry is reported per route ([`RouteIssue`]), never dropped silently:
//! a PROXY header toward a fleet target (it would reach the target's Envoy inside the mTLS
//! stream, not the application), a pool of several countries (a workload selector matches one
//! value per label), a target outside the mesh or without such a TCP port, a listen port of
//! Istio's proxy or sigma-agent, or one taken by the VPS's own egress or ingress listeners
//! (Istio allows one egress listener per port number, whatever its bind).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use sigma_types::{ClusterType, EnvoyRoute, ProxyProtocol, RouteStatus, RouteTarget, Upstream};
use uuid::Uuid;

use crate::model::Prepared;
use crate::names;
use crate::objects::*;
use crate::settings::{AGENT_PORTS, ISTIO_GATEWAY_PORT, ISTIO_RESERVED_PORTS, MeshTemplate};

/// Why the mesh cannot carry a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteIssue {
    /// The route's own VPS would not be in the mesh (only in a plan for mesh mode), and why.
    VpsNotMeshed(String),
    /// A PROXY header toward a fleet target: it would be sent inside the mTLS stream to the
    /// target's Envoy, not to the application.
    ProxyProtocolToFleet(ProxyProtocol),
    /// The listen port is one of the ports Istio's proxy or sigma-agent binds on the VPS.
    ReservedPort(u16),
    /// The listen port is the port of one of the purpose's egress listeners (Istio allows one
    /// egress listener per port number, whatever address it binds).
    EgressPort {
        /// The port.
        port: u16,
        /// The egress entry's host.
        host: String,
    },
    /// The listen port is the VPS's mesh-facing listener of one of its purpose's ports.
    IngressPort {
        /// The port.
        port: u16,
        /// The purpose port's name.
        name: String,
    },
    /// The target VPS is not in the mesh.
    TargetNotMeshed {
        /// The target (`vps exit-1:vpn`).
        target: String,
        /// Why.
        reason: String,
    },
    /// The target's purpose does not serve that port to the mesh.
    TargetPort {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// A pool narrowed to several countries: a workload selector matches one value per label.
    ManyCountries(Vec<String>),
    /// The objects made for the route break an Istio rule (a bug in sigma; reported, not
    /// applied).
    Invalid(String),
}

impl RouteIssue {
    /// A stable code (closed set) for tools and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            RouteIssue::VpsNotMeshed(_) => "vps_not_meshed",
            RouteIssue::ProxyProtocolToFleet(_) => "proxy_protocol_to_fleet",
            RouteIssue::ReservedPort(_) => "reserved_port",
            RouteIssue::EgressPort { .. } => "egress_port",
            RouteIssue::IngressPort { .. } => "ingress_port",
            RouteIssue::TargetNotMeshed { .. } => "target_not_meshed",
            RouteIssue::TargetPort { .. } => "target_port",
            RouteIssue::ManyCountries(_) => "many_countries",
            RouteIssue::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for RouteIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteIssue::VpsNotMeshed(r) => write!(f, "the VPS would not be in the mesh: {r}"),
            RouteIssue::ProxyProtocolToFleet(v) => write!(
                f,
                "PROXY protocol {} toward a fleet target cannot be carried: the header would reach the target's Envoy inside mTLS, not its application",
                v.as_str()
            ),
            RouteIssue::ReservedPort(p) => write!(
                f,
                "listen port {p} is used by Istio's proxy or sigma-agent on a meshed VPS"
            ),
            RouteIssue::EgressPort { port, host } => write!(
                f,
                "listen port {port} is the port of the purpose's egress listener for {host} (Istio allows one egress listener per port)"
            ),
            RouteIssue::IngressPort { port, name } => write!(
                f,
                "listen port {port} is the VPS's mesh-facing listener of its port {name:?}"
            ),
            RouteIssue::TargetNotMeshed { target, reason } => {
                write!(f, "target {target} is not in the mesh: {reason}")
            }
            RouteIssue::TargetPort { target, reason } => write!(f, "target {target}: {reason}"),
            RouteIssue::ManyCountries(c) => write!(
                f,
                "a pool of several countries ({}) cannot be selected in the mesh; narrow it to one country or none",
                c.join(",")
            ),
            RouteIssue::Invalid(r) => write!(f, "generated configuration is invalid: {r}"),
        }
    }
}

/// Where a route runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The VPS is not in the mesh: sigma-agent's own Envoy serves the route.
    Classic,
    /// The VPS is in the mesh and istiod configures the route's listener.
    Mesh {
        /// The route's mesh service host.
        host: String,
        /// The address the listener binds (with the route's `listen_port`).
        bind: IpAddr,
    },
    /// The VPS is in the mesh (or would be, in a plan) but the mesh cannot carry the route.
    NotCarried(Vec<RouteIssue>),
}

impl Placement {
    /// `classic`, `mesh` or `not_carried`.
    pub fn mode(&self) -> &'static str {
        match self {
            Placement::Classic => "classic",
            Placement::Mesh { .. } => "mesh",
            Placement::NotCarried(_) => "not_carried",
        }
    }
}

/// One active route and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlacement {
    /// The route.
    pub route_id: Uuid,
    /// Its VPS.
    pub vps_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its listen port.
    pub listen_port: u16,
    /// Where it runs.
    pub placement: Placement,
}

/// A VPS that has (or, in a plan, would have) a WorkloadEntry.
#[derive(Debug, Clone)]
pub(crate) struct Meshed<'a> {
    /// Its WorkloadEntry address.
    pub address: IpAddr,
    /// Its WorkloadEntry name.
    pub entry_name: String,
    /// Its purpose.
    pub purpose: &'a str,
    /// Its hostname.
    pub hostname: &'a str,
}

/// A route the mesh carries: its listener on the VPS and its two objects.
#[derive(Debug, Clone)]
pub(crate) struct Carried {
    pub listener: EgressListener,
    pub service_entry: MeshObject,
    pub destination_rule: MeshObject,
    pub host: String,
    pub bind: IpAddr,
}

/// The route's mesh service host: `route-<listen_port>.<entry name>.<domain>`.
pub fn route_host(entry_name: &str, listen_port: u16, template: &MeshTemplate) -> String {
    format!(
        "route-{listen_port}.{entry_name}.{}",
        template.service_domain
    )
}

/// The name of a route's ServiceEntry and DestinationRule.
pub fn route_object_name(entry_name: &str, listen_port: u16) -> String {
    let name = format!("route-{listen_port}-{entry_name}");
    // Entry names are unique labels already (hashed where needed): prefixing keeps them
    // unique, so only a name grown too long is hashed again.
    if names::is_dns_label(&name) {
        name
    } else {
        names::dns_label(&name)
    }
}

/// Checks a route of a meshed VPS and renders it, or lists what the mesh cannot carry.
/// `target_meshed` says, for a VPS id, whether it is in the mesh (its entry) or why not.
pub(crate) fn carry<'a>(
    template: &MeshTemplate,
    prepared: &HashMap<&str, Prepared<'_>>,
    owner: &Meshed<'_>,
    route: &EnvoyRoute,
    target_meshed: &dyn Fn(Uuid) -> Result<Meshed<'a>, String>,
) -> Result<Carried, Vec<RouteIssue>> {
    let mut issues = Vec::new();
    let port = route.listen_port;
    if ISTIO_RESERVED_PORTS.contains(&port)
        || AGENT_PORTS.contains(&port)
        || port == ISTIO_GATEWAY_PORT
    {
        issues.push(RouteIssue::ReservedPort(port));
    }
    if let Some(p) = prepared.get(owner.purpose) {
        if let Some(g) = p.settings.egress.iter().find(|g| g.port == port) {
            issues.push(RouteIssue::EgressPort {
                port,
                host: g.host.clone(),
            });
        }
        if let Some(b) = p.ingress.iter().find(|b| b.mesh_port == port) {
            issues.push(RouteIssue::IngressPort {
                port,
                name: b.name.clone(),
            });
        }
    }
    let host = route_host(&owner.entry_name, port, template);
    let name = route_object_name(&owner.entry_name, port);
    let mut annotations = BTreeMap::from([
        (MANAGED_ANNOTATION.to_string(), "true".to_string()),
        (ROUTE_ANNOTATION.to_string(), route.id.to_string()),
    ]);
    annotations.insert(HOSTNAME_ANNOTATION.into(), owner.hostname.to_string());
    let meta = ObjectMeta {
        name,
        namespace: template.namespace.clone(),
        labels: BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (VPS_ID_LABEL.to_string(), route.vps_id.to_string()),
        ]),
        annotations,
    };
    let connect_timeout = Some(ConnectionPool {
        tcp: Some(TcpSettings {
            connect_timeout: Some(format!("{}ms", route.connect_timeout_ms.max(1))),
        }),
    });
    let (se, tp) = match &route.upstream {
        Upstream::Backend {
            backend_host,
            backend_port,
            cluster_type,
        } => {
            let resolution = match cluster_type {
                ClusterType::Static => Resolution::Static,
                ClusterType::StrictDns => Resolution::Dns,
                ClusterType::LogicalDns => Resolution::DnsRoundRobin,
            };
            let port_name = "tcp-route".to_string();
            let se = ServiceEntrySpec {
                hosts: vec![host.clone()],
                location: Some(Location::MeshExternal),
                resolution: Some(resolution),
                ports: vec![ServiceEntryPort {
                    number: u32::from(port),
                    protocol: "TCP".into(),
                    name: port_name.clone(),
                    target_port: Some(u32::from(*backend_port)),
                }],
                workload_selector: None,
                endpoints: vec![WorkloadEntrySpec {
                    address: backend_host.clone(),
                    ports: BTreeMap::from([(port_name, u32::from(*backend_port))]),
                    ..WorkloadEntrySpec::default()
                }],
                export_to: vec![".".into()],
            };
            let proxy_protocol = match route.proxy_protocol {
                ProxyProtocol::None => None,
                ProxyProtocol::V1 => Some(ProxyProtocolVersion::V1),
                ProxyProtocol::V2 => Some(ProxyProtocolVersion::V2),
            };
            let tp = TrafficPolicy {
                tls: Some(ClientTlsSettings {
                    mode: Some(TlsMode::Disable),
                }),
                connection_pool: connect_timeout,
                proxy_protocol: proxy_protocol.map(|v| ProxyProtocolSettings { version: Some(v) }),
            };
            (Some(se), tp)
        }
        Upstream::Target { target } => {
            if route.proxy_protocol != ProxyProtocol::None {
                issues.push(RouteIssue::ProxyProtocolToFleet(route.proxy_protocol));
            }
            let text = route.upstream.to_string();
            let (purpose, selector) = match target {
                RouteTarget::Vps { vps_id, .. } => match target_meshed(*vps_id) {
                    Ok(m) => (
                        Some(m.purpose),
                        BTreeMap::from([(VPS_ID_LABEL.to_string(), vps_id.to_string())]),
                    ),
                    Err(reason) => {
                        issues.push(RouteIssue::TargetNotMeshed {
                            target: text.clone(),
                            reason,
                        });
                        (None, BTreeMap::new())
                    }
                },
                RouteTarget::Pool {
                    purpose, countries, ..
                } => {
                    let mut sel = BTreeMap::from([("app".to_string(), purpose.clone())]);
                    match countries.as_slice() {
                        [] => {}
                        [c] => {
                            sel.insert("country".into(), names::label_value(c.trim()));
                        }
                        many => issues.push(RouteIssue::ManyCountries(many.to_vec())),
                    }
                    (Some(purpose.as_str()), sel)
                }
            };
            let mut se = None;
            if let Some(purpose) = purpose {
                match prepared.get(purpose) {
                    None => issues.push(RouteIssue::TargetPort {
                        target: text.clone(),
                        reason: format!("purpose {purpose:?} does not have the mesh enabled"),
                    }),
                    Some(p) => match p.ingress.iter().find(|b| b.name == target.port()) {
                        None => issues.push(RouteIssue::TargetPort {
                            target: text.clone(),
                            reason: format!(
                                "purpose {purpose:?} serves no TCP port {:?} to the mesh",
                                target.port()
                            ),
                        }),
                        Some(b) => {
                            se = Some(ServiceEntrySpec {
                                hosts: vec![host.clone()],
                                location: Some(Location::MeshInternal),
                                resolution: Some(Resolution::Static),
                                // Named like the target's port, so each endpoint's port is the
                                // target VPS's ingress listener (its WorkloadEntry `ports`);
                                // `targetPort` says the same for tools that read only this.
                                ports: vec![ServiceEntryPort {
                                    number: u32::from(port),
                                    protocol: "TCP".into(),
                                    name: b.name.clone(),
                                    target_port: Some(u32::from(b.mesh_port)),
                                }],
                                workload_selector: Some(WorkloadSelector { labels: selector }),
                                endpoints: Vec::new(),
                                export_to: vec![".".into()],
                            });
                        }
                    },
                }
            }
            let tp = TrafficPolicy {
                tls: Some(ClientTlsSettings {
                    mode: Some(TlsMode::IstioMutual),
                }),
                connection_pool: connect_timeout,
                proxy_protocol: None,
            };
            (se, tp)
        }
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    let Some(se) = se else {
        return Err(vec![RouteIssue::Invalid("no service entry".into())]);
    };
    let service_entry = MeshObject::ServiceEntry(resource(Kind::ServiceEntry, meta.clone(), se));
    let destination_rule = MeshObject::DestinationRule(resource(
        Kind::DestinationRule,
        meta,
        DestinationRuleSpec {
            host: host.clone(),
            traffic_policy: Some(tp),
            export_to: vec![".".into()],
        },
    ));
    for o in [&service_entry, &destination_rule] {
        if let Err(r) = check_object(o) {
            return Err(vec![RouteIssue::Invalid(format!(
                "{}: {}",
                o.kind(),
                r.join("; ")
            ))]);
        }
    }
    let listener = EgressListener {
        port: Some(SidecarPort {
            number: u32::from(port),
            protocol: "TCP".into(),
            name: format!("route-{port}"),
        }),
        bind: Some(owner.address.to_string()),
        capture_mode: Some(CaptureMode::None),
        hosts: vec![format!("{}/{host}", template.namespace)],
    };
    Ok(Carried {
        listener,
        service_entry,
        destination_rule,
        host,
        bind: owner.address,
    })
}

/// The active routes among `routes`, grouped by VPS, each VPS's in listen-port order.
pub(crate) fn active_by_vps(routes: &[EnvoyRoute]) -> BTreeMap<Uuid, Vec<&EnvoyRoute>> {
    let mut by: BTreeMap<Uuid, Vec<&EnvoyRoute>> = BTreeMap::new();
    for r in routes.iter().filter(|r| r.status == RouteStatus::Active) {
        by.entry(r.vps_id).or_default().push(r);
    }
    for v in by.values_mut() {
        v.sort_by_key(|r| r.listen_port);
    }
    by
}

/// A placement entry for a route.
pub(crate) fn placed(r: &EnvoyRoute, placement: Placement) -> RoutePlacement {
    RoutePlacement {
        route_id: r.id,
        vps_id: r.vps_id,
        name: r.name.clone(),
        listen_port: r.listen_port,
        placement,
    }
}

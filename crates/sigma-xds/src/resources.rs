//! Envoy resources built from sigma's routes: one TCP-proxy listener and one cluster per
//! active route. A backend route's cluster resolves its one host as the route says; a fleet
//! route's cluster is static, holding the addresses sigma-api resolved for its target.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ProxyProtocolConfig, SocketAddress, TransportSocket, address,
    proxy_protocol_config::Version, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;
use sigma_types::{ClusterType, EnvoyRoute, ProxyProtocol, RouteEndpoint, RouteStatus, Upstream};

/// Type URL of CDS resources.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of LDS resources.
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const UPSTREAM_PROXY_PROTOCOL: &str = "envoy.transport_sockets.upstream_proxy_protocol";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";

/// How routes become Envoy resources, beyond what a route says itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceOptions {
    /// Address every listener binds (with the route's `listen_port`).
    pub listen_address: IpAddr,
}

impl Default for ResourceOptions {
    /// Listeners on all IPv4 addresses: routes are the VPS's public ports.
    fn default() -> Self {
        ResourceOptions {
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// Name of the listener and of the cluster of a route.
///
/// The prefix keeps dynamic names apart from the bootstrap's static xDS cluster whatever a
/// route is called; the name is also the stat prefix, so it stays stable across versions.
pub fn resource_name(route_name: &str) -> String {
    format!("route_{route_name}")
}

fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The TCP-proxy listener of a route.
pub fn build_listener(route: &EnvoyRoute, options: &ResourceOptions) -> Listener {
    let name = resource_name(&route.name);
    let tcp_proxy = TcpProxy {
        stat_prefix: name.clone(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name.clone())),
        ..Default::default()
    };
    Listener {
        name: name.clone(),
        stat_prefix: name,
        address: Some(socket_address(
            &options.listen_address.to_string(),
            route.listen_port,
        )),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: TCP_PROXY_FILTER.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(tcp_proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The cluster of a route: its backend and how it is resolved, or the resolved addresses of
/// its fleet target (`endpoints`; none while no target VPS is active and heard from, so
/// connections are refused rather than sent somewhere stale), and the PROXY protocol header
/// sent upstream.
pub fn build_cluster(route: &EnvoyRoute, endpoints: &[RouteEndpoint]) -> Cluster {
    let name = resource_name(&route.name);
    let (cluster_type, addresses): (ClusterType, Vec<(String, u16)>) = match &route.upstream {
        Upstream::Backend {
            backend_host,
            backend_port,
            cluster_type,
        } => (*cluster_type, vec![(backend_host.clone(), *backend_port)]),
        Upstream::Target { .. } => (
            ClusterType::Static,
            endpoints
                .iter()
                .map(|e| (e.address.to_string(), e.port))
                .collect(),
        ),
    };
    let discovery = match cluster_type {
        ClusterType::Static => DiscoveryType::Static,
        ClusterType::StrictDns => DiscoveryType::StrictDns,
        ClusterType::LogicalDns => DiscoveryType::LogicalDns,
    };
    let ms = route.connect_timeout_ms;
    let transport_socket = match route.proxy_protocol {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(proxy_protocol_socket(Version::V1)),
        ProxyProtocol::V2 => Some(proxy_protocol_socket(Version::V2)),
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(Duration {
            seconds: i64::from(ms / 1000),
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        // VPSes often have an IPv6 address but no IPv6 route; Envoy's default (AUTO) would
        // try AAAA first. A name with only AAAA records still works.
        dns_lookup_family: match cluster_type {
            ClusterType::Static => DnsLookupFamily::Auto as i32,
            _ => DnsLookupFamily::V4Preferred as i32,
        },
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: addresses
                    .iter()
                    .map(|(host, port)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket_address(host, *port)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket,
        ..Default::default()
    }
}

fn proxy_protocol_socket(version: Version) -> TransportSocket {
    let upstream = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: version as i32,
            ..Default::default()
        }),
        transport_socket: Some(TransportSocket {
            name: RAW_BUFFER.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                RawBuffer {},
            ))),
        }),
        ..Default::default()
    };
    TransportSocket {
        name: UPSTREAM_PROXY_PROTOCOL.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            upstream,
        ))),
    }
}

/// One published version: the packed clusters and listeners of its active routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The routes' version in sigma-api.
    pub version: i64,
    /// Packed `Cluster`s, sorted by name.
    pub clusters: Vec<Any>,
    /// Packed `Listener`s, sorted by name.
    pub listeners: Vec<Any>,
}

impl Snapshot {
    /// Builds the resources of the active routes; disabled routes produce nothing. Fleet
    /// routes get no endpoints: see [`Snapshot::build_with`].
    pub fn build(version: i64, routes: &[EnvoyRoute], options: &ResourceOptions) -> Self {
        Self::build_with(version, routes, &BTreeMap::new(), options)
    }

    /// Builds the resources of the active routes, fleet routes with their resolved
    /// `endpoints` (by route name).
    pub fn build_with(
        version: i64,
        routes: &[EnvoyRoute],
        endpoints: &BTreeMap<String, Vec<RouteEndpoint>>,
        options: &ResourceOptions,
    ) -> Self {
        let mut active: Vec<&EnvoyRoute> = routes
            .iter()
            .filter(|r| r.status == RouteStatus::Active)
            .collect();
        // Sorted so that one set of routes always gives the same bytes, whatever order
        // sigma-api listed them in.
        active.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            version,
            clusters: active
                .iter()
                .map(|r| {
                    let eps = endpoints
                        .get(&r.name)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    pack_any(build_cluster(r, eps))
                })
                .collect(),
            listeners: active
                .iter()
                .map(|r| pack_any(build_listener(r, options)))
                .collect(),
        }
    }

    /// The `version_info` sent with this snapshot.
    pub fn version_info(&self) -> String {
        self.version.to_string()
    }

    /// The resources of one type URL, if this server serves that type.
    pub fn resources(&self, type_url: &str) -> Option<&[Any]> {
        match type_url {
            CLUSTER_TYPE_URL => Some(&self.clusters),
            LISTENER_TYPE_URL => Some(&self.listeners),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    use prost::{Message, Name};
    use time::OffsetDateTime;

    pub(crate) fn route(name: &str, port: u16) -> EnvoyRoute {
        EnvoyRoute {
            id: uuid::Uuid::nil(),
            vps_id: uuid::Uuid::nil(),
            name: name.into(),
            listen_port: port,
            upstream: Upstream::Backend {
                backend_host: "10.1.2.3".into(),
                backend_port: 8080,
                cluster_type: ClusterType::Static,
            },
            connect_timeout_ms: 1500,
            proxy_protocol: ProxyProtocol::None,
            status: RouteStatus::Active,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn unpack<T: Message + Name + Default>(any: &Any) -> T {
        assert_eq!(any.type_url, T::type_url());
        T::decode(any.value.as_slice()).unwrap()
    }

    fn port_of(a: &Option<Address>) -> (String, u32) {
        match a.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => (s.address.clone(), p),
                _ => panic!("no port"),
            },
            other => panic!("not a socket address: {other:?}"),
        }
    }

    #[test]
    fn type_urls_match_the_packed_messages() {
        assert_eq!(Cluster::type_url(), CLUSTER_TYPE_URL);
        assert_eq!(Listener::type_url(), LISTENER_TYPE_URL);
    }

    #[test]
    fn listener_proxies_tcp_to_the_route_cluster() {
        let opts = ResourceOptions {
            listen_address: "127.0.0.1".parse().unwrap(),
        };
        let l = build_listener(&route("web.v2", 8443), &opts);
        assert_eq!(l.name, "route_web.v2");
        assert_eq!(port_of(&l.address), ("127.0.0.1".into(), 8443));
        let f = &l.filter_chains[0].filters[0];
        assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("no typed config")
        };
        let tp: TcpProxy = unpack(any);
        assert_eq!(tp.stat_prefix, "route_web.v2");
        assert_eq!(
            tp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster("route_web.v2".into()))
        );
        assert_eq!(
            port_of(&build_listener(&route("a", 1), &ResourceOptions::default()).address).0,
            "0.0.0.0"
        );
    }

    #[test]
    fn cluster_carries_type_timeout_and_backend() {
        let mut r = route("db", 5432);
        let backend = |t: ClusterType| Upstream::Backend {
            backend_host: "db.internal".into(),
            backend_port: 5433,
            cluster_type: t,
        };
        r.upstream = backend(ClusterType::LogicalDns);
        r.connect_timeout_ms = 2250;
        let c = build_cluster(&r, &[]);
        assert_eq!(c.name, "route_db");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32))
        );
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 2,
                nanos: 250_000_000
            })
        );
        let la = c.load_assignment.unwrap();
        assert_eq!(la.cluster_name, "route_db");
        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
            &la.endpoints[0].lb_endpoints[0].host_identifier
        else {
            panic!("no endpoint")
        };
        assert_eq!(port_of(&e.address), ("db.internal".into(), 5433));
        assert!(c.transport_socket.is_none());
        for (t, d) in [
            (ClusterType::Static, DiscoveryType::Static),
            (ClusterType::StrictDns, DiscoveryType::StrictDns),
        ] {
            r.upstream = backend(t);
            assert_eq!(
                build_cluster(&r, &[]).cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(d as i32))
            );
        }
    }

    #[test]
    fn proxy_protocol_wraps_raw_buffer() {
        for (p, v) in [
            (ProxyProtocol::V1, Version::V1),
            (ProxyProtocol::V2, Version::V2),
        ] {
            let mut r = route("pp", 1);
            r.proxy_protocol = p;
            let ts = build_cluster(&r, &[]).transport_socket.unwrap();
            assert_eq!(ts.name, "envoy.transport_sockets.upstream_proxy_protocol");
            let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
                panic!("no typed config")
            };
            let up: ProxyProtocolUpstreamTransport = unpack(any);
            assert_eq!(up.config.unwrap().version, v as i32);
            let inner = up.transport_socket.unwrap();
            assert_eq!(inner.name, "envoy.transport_sockets.raw_buffer");
        }
    }

    #[test]
    fn fleet_routes_get_the_resolved_addresses_as_a_static_cluster() {
        let mut r = route("exit", 443);
        r.upstream = Upstream::Target {
            target: sigma_types::RouteTarget::Pool {
                purpose: "vpn-exit".into(),
                port: "vpn".into(),
                countries: vec![],
            },
        };
        let eps = vec![
            RouteEndpoint {
                address: "10.77.1.2".parse().unwrap(),
                port: 1194,
                hostname: "exit-1".into(),
            },
            RouteEndpoint {
                address: "10.77.2.2".parse().unwrap(),
                port: 1194,
                hostname: "exit-2".into(),
            },
        ];
        let c = build_cluster(&r, &eps);
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        let got: Vec<(String, u32)> = c.load_assignment.unwrap().endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => port_of(&e.address),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [("10.77.1.2".into(), 1194), ("10.77.2.2".into(), 1194)]
        );
        // No target VPS: a cluster without endpoints (connections refused, never stale).
        let c = build_cluster(&r, &[]);
        assert!(
            c.load_assignment.unwrap().endpoints[0]
                .lb_endpoints
                .is_empty()
        );
        // The snapshot takes each route's endpoints by name.
        let snap = Snapshot::build_with(
            1,
            std::slice::from_ref(&r),
            &BTreeMap::from([("exit".to_string(), eps)]),
            &ResourceOptions::default(),
        );
        let c: Cluster = unpack(&snap.clusters[0]);
        assert_eq!(
            c.load_assignment.unwrap().endpoints[0].lb_endpoints.len(),
            2
        );
    }

    #[test]
    fn snapshot_skips_disabled_routes_and_is_order_independent() {
        let mut off = route("off", 3);
        off.status = RouteStatus::Disabled;
        let opts = ResourceOptions::default();
        let a = Snapshot::build(7, &[route("b", 2), off.clone(), route("a", 1)], &opts);
        let b = Snapshot::build(7, &[route("a", 1), route("b", 2), off], &opts);
        assert_eq!(a, b);
        assert_eq!(a.version_info(), "7");
        let names: Vec<String> = a
            .listeners
            .iter()
            .map(|l| unpack::<Listener>(l).name)
            .collect();
        assert_eq!(names, ["route_a", "route_b"]);
        assert_eq!(a.resources(CLUSTER_TYPE_URL).unwrap().len(), 2);
        assert_eq!(
            unpack::<Cluster>(&a.resources(CLUSTER_TYPE_URL).unwrap()[1]).name,
            "route_b"
        );
        assert!(
            a.resources("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
                .is_none()
        );
    }
}

//! The inputs an operator writes: the fleet-wide [`MeshTemplate`] and the per-purpose
//! [`MeshSettings`] (the purpose's `mesh` JSON object), with validation that names every bad
//! field the way sigma-api reports errors (`ports[1].protocol`, `egress[0].bind`, …).
//!
//! The protocols and port decoding are in the submodule `protocol`, the template in `template`.
//! The per-purpose settings stay one file (about 640 lines) with their field checks, because the
//! checks are what [`MeshSettings`]' validation runs and name fields by the settings' paths.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use sigma_types::validate as v;
use sigma_types::{FieldErrors, Normalize};

use crate::names;

mod protocol;
mod template;

pub use protocol::*;
pub use template::*;

/// Ports the Istio sidecar itself listens on (admin, capture, health, telemetry, DNS, HBONE).
/// A VPS service or an egress listener on one of them would fail to bind next to the proxy.
pub const ISTIO_RESERVED_PORTS: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];

/// Istio's block of ports for its own components (15000-15099: the sidecar's admin, capture,
/// health and telemetry ports, istiod's 15010/15012/15014/15017, HBONE 15008/15009, DNS 15053,
/// …). A mesh-facing port is never placed there, even on a port today's sidecar leaves free,
/// because Istio adds its new ports to this block.
pub const ISTIO_PORT_BLOCK: std::ops::RangeInclusive<u16> = 15000..=15099;

/// The east-west gateway's `AUTO_PASSTHROUGH` port. Not bound on a VPS, but a mesh-facing port
/// of 15443 would be indistinguishable from the gateway's in every tool that reads ports.
pub const ISTIO_GATEWAY_PORT: u16 = 15443;

/// Ports sigma-agent itself uses on a VPS: 9102 its metrics and health endpoint (the mesh
/// template's default `health_port`, `AGENT_METRICS_LISTEN`), 9901 the Envoy admin port of
/// classic mode (`sigma-agent envoy-bootstrap --admin`) and 18000 its xDS server
/// (`AGENT_XDS_LISTEN`).
pub const AGENT_PORTS: [u16; 3] = [9102, 9901, 18000];

/// The lowest port a mesh-facing listener may use: the proxy runs unprivileged, and sigma-agent
/// grants Envoy `CAP_NET_BIND_SERVICE` for egress listeners only.
pub const MIN_MESH_PORT: u16 = 1024;

/// Where sigma places a port's mesh-facing listener when `mesh_port` is not given
/// (see [`ServicePort::mesh_port`]): just above Istio's block, 15100-16099 without 15443.
pub const DEFAULT_MESH_PORTS: std::ops::RangeInclusive<u16> = 15100..=16099;

/// Most ports one purpose may serve: a WorkloadEntry holds at most 128 named ports.
pub const MAX_PORTS: usize = 128;

/// Most egress entries one purpose may declare; far above any real use, it bounds the work a
/// single stored object can cause.
pub const MAX_EGRESS: usize = 256;

/// Most service CIDRs in iptables interception mode.
pub const MAX_SERVICE_CIDRS: usize = 64;

/// Longest port name. Istio wants a DNS-1123 label (≤ 63) for ServiceEntry ports, but the
/// WorkloadEntry/WorkloadGroup CRDs require `size(key) < 63` for the names in `ports`, so only
/// names of at most 62 characters are usable everywhere a port name travels.
pub const MAX_PORT_NAME_LEN: usize = 62;

/// Longest HTTP probe path accepted.
pub const MAX_PROBE_PATH_LEN: usize = 1024;

// ---------------------------------------------------------------------------------------------
// MeshSettings

/// A port a purpose's VPS serve to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// DNS-1123 label of at most 62 characters, unique within the purpose.
    pub name: String,
    /// Port clients connect to, unique within the purpose.
    #[serde(deserialize_with = "de_port")]
    pub number: u16,
    /// Istio protocol.
    pub protocol: Protocol,
    /// Port the service really listens on at the VPS, when it differs from `number`.
    #[serde(
        default,
        deserialize_with = "de_opt_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_port: Option<u16>,
    /// Port of the VPS's Envoy listener that serves this port to the mesh: it terminates the
    /// mesh's mTLS and forwards to the application on `127.0.0.1:<target_port or number>`.
    /// When absent sigma picks one in [`DEFAULT_MESH_PORTS`] from the port's name (see
    /// [`crate::ingress::ingress_bindings`]). Not allowed on a UDP port (Envoy carries no UDP).
    #[serde(
        default,
        deserialize_with = "de_opt_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh_port: Option<u16>,
}

impl ServicePort {
    /// The port the application listens on at the VPS: `target_port`, else `number`.
    pub fn app_port(&self) -> u16 {
        self.target_port.unwrap_or(self.number)
    }

    /// Whether the port can be served through an Envoy listener: Istio builds no listener
    /// for UDP (its protocol maps to no filter chain), so UDP ports stay direct.
    pub fn meshable(&self) -> bool {
        self.protocol != Protocol::Udp
    }
}

/// A mesh service a purpose's VPS call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Fully qualified name of the service (`xboard.sigma.svc.cluster.local`).
    pub host: String,
    /// Service port; unique among one purpose's egress entries, because Istio requires the
    /// ports of a Sidecar's IP-bound egress listeners to be unique.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Istio protocol of that port.
    pub protocol: Protocol,
    /// Loopback address the proxy listens on for this host (127.0.0.0/8 except 127.0.0.1);
    /// allocated by sigma when absent. Every entry of one host shares one address, since the
    /// application resolves one name to one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Ipv4Addr>,
}

/// HTTP GET health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGetProbe {
    /// Absolute path, e.g. `/healthz`.
    pub path: String,
    /// Port on the VPS.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
}

/// TCP connect health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketProbe {
    /// Port on the VPS.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
}

/// How the sidecar decides a VPS is healthy, replacing the default check of sigma's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// `{"http_get": {"path": "/healthz", "port": 8080}}`
    HttpGet(HttpGetProbe),
    /// `{"tcp_socket": {"port": 22}}`
    TcpSocket(TcpSocketProbe),
}

/// Whether the sidecar captures traffic with iptables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "RawInterception")]
pub enum Interception {
    /// No capture: applications call mesh services through the Sidecar's loopback listeners.
    #[default]
    None,
    /// Capture outbound traffic to these CIDRs (the cluster's service ranges).
    Iptables {
        /// Canonical CIDRs (`10.96.0.0/12`), IPv4 or IPv6.
        service_cidrs: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum InterceptionMode {
    None,
    Iptables,
}

/// The wire form, decoded flat because serde ignores unknown fields next to the tag of a unit
/// variant even with `deny_unknown_fields`, and a stray `service_cidrs` must not pass silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterception {
    mode: InterceptionMode,
    #[serde(default)]
    service_cidrs: Option<Vec<String>>,
}

impl TryFrom<RawInterception> for Interception {
    type Error = String;

    fn try_from(r: RawInterception) -> Result<Self, String> {
        match (r.mode, r.service_cidrs) {
            (InterceptionMode::None, None) => Ok(Interception::None),
            (InterceptionMode::None, Some(_)) => {
                Err("service_cidrs only applies to mode \"iptables\"".into())
            }
            (InterceptionMode::Iptables, cidrs) => Ok(Interception::Iptables {
                service_cidrs: cidrs.unwrap_or_default(),
            }),
        }
    }
}

/// A purpose's `mesh` object: whether and how its VPS join the mesh.
///
/// ```json
/// {
///   "enabled": true,
///   "service_account": "xrayr",
///   "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP", "mesh_port": 15180}],
///   "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}],
///   "probe": {"http_get": {"path": "/healthz", "port": 9102}},
///   "network": "vpn",
///   "interception": {"mode": "none"}
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSettings {
    /// Whether this purpose's VPS join the mesh.
    #[serde(default)]
    pub enabled: bool,
    /// Kubernetes service account (identity) of the workloads; the template's default when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Ports served to the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Mesh services called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Egress>,
    /// Health check replacing the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// Istio network of all VPS of this purpose, replacing the template's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Traffic capture mode.
    #[serde(default)]
    pub interception: Interception,
}

impl MeshSettings {
    /// Parses and checks a stored or submitted `mesh` object. Structural problems (unknown
    /// field, wrong type, a port range, a misspelt protocol) are reported for the first field
    /// where decoding stopped; semantic problems are all reported at once.
    ///
    /// Paths are relative to the `mesh` object (`ports[1].protocol`); the empty path is the
    /// object itself.
    pub fn from_json(value: &serde_json::Value) -> Result<MeshSettings, FieldErrors> {
        if !value.is_object() {
            let mut errors = FieldErrors::new();
            errors.add("", "must be a JSON object");
            return Err(errors);
        }
        let parsed: MeshSettings = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let mut errors = FieldErrors::new();
            // serde_path_to_error prints the root as "."; the empty path is the object itself.
            let field = if path == "." { String::new() } else { path };
            errors.add(field, e.into_inner().to_string());
            errors
        })?;
        parsed.normalize()
    }
}

fn check_port_number(port: u16) -> Result<u16, String> {
    if ISTIO_RESERVED_PORTS.contains(&port) {
        return Err(format!(
            "{port} is reserved by the Istio sidecar ({})",
            ISTIO_RESERVED_PORTS.map(|p| p.to_string()).join(", ")
        ));
    }
    Ok(port)
}

/// Whether a port may carry a mesh-facing listener regardless of the purpose's other ports:
/// not privileged, not Istio's, not sigma-agent's.
pub fn check_mesh_port(port: u16) -> Result<u16, String> {
    if port < MIN_MESH_PORT {
        return Err(format!(
            "{port} is below {MIN_MESH_PORT}: the VPS's Envoy runs unprivileged and may not bind it"
        ));
    }
    if ISTIO_PORT_BLOCK.contains(&port) || port == ISTIO_GATEWAY_PORT {
        return Err(format!(
            "{port} is reserved by Istio ({}-{} and {ISTIO_GATEWAY_PORT})",
            ISTIO_PORT_BLOCK.start(),
            ISTIO_PORT_BLOCK.end()
        ));
    }
    if AGENT_PORTS.contains(&port) {
        return Err(format!(
            "{port} is used by sigma-agent ({})",
            AGENT_PORTS.map(|p| p.to_string()).join(", ")
        ));
    }
    Ok(port)
}

/// The port a purpose's probe connects to on the VPS.
pub(crate) fn probe_port(probe: Option<&Probe>) -> Option<u16> {
    probe.map(|p| match p {
        Probe::HttpGet(h) => h.port,
        Probe::TcpSocket(t) => t.port,
    })
}

/// Every explicit `mesh_port` must be a port the VPS's Envoy can bind next to everything else
/// the purpose runs there: not an application port (`number` or `target_port` of any port),
/// not another port's listener, not an egress listener's port, not the probe's port.
fn check_mesh_ports(
    ports: &[ServicePort],
    egress_ports: &BTreeMap<u16, usize>,
    probe: Option<&Probe>,
    e: &mut FieldErrors,
) {
    let mut app: BTreeMap<u16, String> = BTreeMap::new();
    for (j, p) in ports.iter().enumerate() {
        app.entry(p.number)
            .or_insert_with(|| format!("ports[{j}].number"));
        if let Some(t) = p.target_port {
            app.entry(t)
                .or_insert_with(|| format!("ports[{j}].target_port"));
        }
    }
    let probe = probe_port(probe);
    let mut listeners: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let Some(m) = p.mesh_port else { continue };
        let f = format!("ports[{i}].mesh_port");
        if !p.meshable() {
            e.add(
                f,
                "a UDP port is not served through Envoy (Istio builds no UDP listener); remove mesh_port",
            );
            continue;
        }
        if e.check(&f, check_mesh_port(m)).is_none() {
            continue;
        }
        if let Some(owner) = app.get(&m) {
            e.add(
                f,
                format!("{m} is an application port ({owner}); the mesh-facing port must differ from every port the application listens on"),
            );
        } else if let Some(j) = listeners.insert(m, i) {
            e.add(f, format!("{m} is already the mesh_port of ports[{j}]"));
        } else if let Some(k) = egress_ports.get(&m) {
            e.add(f, format!("{m} is the port of egress[{k}]'s listener"));
        } else if probe == Some(m) {
            e.add(f, format!("{m} is the probe's port"));
        }
    }
}

/// A port name Istio accepts everywhere it is used (see [`MAX_PORT_NAME_LEN`]).
pub fn check_port_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_PORT_NAME_LEN {
        return Err(format!("longer than {MAX_PORT_NAME_LEN} characters"));
    }
    if !names::is_dns_label(s) {
        return Err(
            "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// A service account name: a DNS-1123 subdomain, as Kubernetes requires.
pub fn check_service_account(s: &str) -> Result<(), String> {
    if names::is_dns_subdomain(s) {
        Ok(())
    } else {
        Err("must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', at most 253 characters".into())
    }
}

/// An Istio network name; it also ends up as the value of the `topology.istio.io/network`
/// label on gateways, so it must be a non-empty label value.
pub fn check_network(s: &str) -> Result<(), String> {
    if !s.is_empty() && names::is_label_value(s) {
        Ok(())
    } else {
        Err("must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

fn check_probe_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if s.len() > MAX_PROBE_PATH_LEN {
        return Err(format!("longer than {MAX_PROBE_PATH_LEN} characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// A mesh service host: a fully qualified DNS name (two labels or more, not an IP address),
/// returned lower-cased without a trailing dot.
pub fn check_mesh_host(s: &str) -> Result<String, String> {
    if s.contains('*') {
        return Err("wildcards are not allowed; name one service".into());
    }
    if s.contains('/') {
        return Err("write the bare DNS name; sigma adds Istio's namespace prefix".into());
    }
    let h = v::hostname(s)?;
    let labels: Vec<&str> = h.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "{h:?} is not fully qualified (e.g. xboard.sigma.svc.cluster.local)"
        ));
    }
    if h.parse::<IpAddr>().is_ok()
        || labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{h:?} is an address; name the service by its DNS name"
        ));
    }
    Ok(h)
}

fn check_bind(ip: Ipv4Addr) -> Result<(), String> {
    let o = ip.octets();
    if o[0] != 127 {
        return Err(format!("{ip} is not a loopback address (127.0.0.0/8)"));
    }
    if ip == Ipv4Addr::new(127, 0, 0, 1) {
        return Err("127.0.0.1 is left to the VPS's own services; pick another 127.x.y.z".into());
    }
    if ip == Ipv4Addr::new(127, 0, 0, 0) || ip == Ipv4Addr::new(127, 255, 255, 255) {
        return Err(format!(
            "{ip} is the network or broadcast address of 127.0.0.0/8"
        ));
    }
    Ok(())
}

/// A CIDR in canonical form (no host bits set), IPv4 or IPv6.
pub fn check_cidr(s: &str) -> Result<String, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (e.g. 10.96.0.0/12)"))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.96.0.0/12)"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?} has an invalid prefix length"))?;
    let (bits, max) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32u8),
        IpAddr::V6(a) => (u128::from(a), 128u8),
    };
    if len > max {
        return Err(format!("{s:?}: prefix length {len} exceeds {max}"));
    }
    let mask: u128 = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    let network = bits & mask;
    if network != bits {
        let canon = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((network >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::V6(network.into()),
        };
        return Err(format!(
            "{s:?} has host bits set; did you mean {canon}/{len}?"
        ));
    }
    Ok(format!("{ip}/{len}"))
}

impl Normalize for MeshSettings {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();

        if let Some(sa) = &self.service_account {
            e.check("service_account", check_service_account(sa));
        }
        let service_account = self.service_account;

        if self.ports.len() > MAX_PORTS {
            e.add("ports", format!("at most {MAX_PORTS} ports"));
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut numbers: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            let f = |k: &str| format!("ports[{i}].{k}");
            if e.check(&f("name"), check_port_name(&p.name)).is_some()
                && let Some(j) = names.insert(&p.name, i)
            {
                e.add(
                    f("name"),
                    format!("{:?} is already the name of ports[{j}]", p.name),
                );
            }
            if let Some(j) = numbers.insert(p.number, i) {
                e.add(
                    f("number"),
                    format!("{} is already served by ports[{j}]", p.number),
                );
            }
            match p.target_port {
                Some(t) => e.check(&f("target_port"), check_port_number(t)),
                None => e.check(&f("number"), check_port_number(p.number)),
            };
        }

        if self.egress.len() > MAX_EGRESS {
            e.add("egress", format!("at most {MAX_EGRESS} egress entries"));
        }
        let mut egress = Vec::with_capacity(self.egress.len());
        let mut seen: BTreeMap<(String, u16), usize> = BTreeMap::new();
        let mut egress_ports: BTreeMap<u16, usize> = BTreeMap::new();
        let mut host_bind: BTreeMap<String, (Ipv4Addr, usize)> = BTreeMap::new();
        let mut bind_host: BTreeMap<Ipv4Addr, (String, usize)> = BTreeMap::new();
        for (i, g) in self.egress.into_iter().enumerate() {
            let f = |k: &str| format!("egress[{i}].{k}");
            let host = e.check(&f("host"), check_mesh_host(&g.host));
            if let Some(j) = egress_ports.insert(g.port, i) {
                e.add(
                    f("port"),
                    format!(
                        "{} is already used by egress[{j}]; Istio requires the ports of a Sidecar's egress listeners to be unique",
                        g.port
                    ),
                );
            }
            e.check(&f("port"), check_port_number(g.port));
            if let Some(b) = g.bind {
                e.check(&f("bind"), check_bind(b));
            }
            let Some(host) = host else { continue };
            if let Some(j) = seen.insert((host.clone(), g.port), i) {
                e.add(
                    f("host"),
                    format!("{host}:{} is already listed as egress[{j}]", g.port),
                );
            }
            if let Some(b) = g.bind {
                match host_bind.get(&host) {
                    Some((other, j)) if *other != b => e.add(
                        f("bind"),
                        format!("{host} is already bound to {other} by egress[{j}]; one host has one address"),
                    ),
                    _ => {
                        host_bind.insert(host.clone(), (b, i));
                    }
                }
                match bind_host.get(&b) {
                    Some((other, j)) if *other != host => e.add(
                        f("bind"),
                        format!("{b} is already the address of {other} (egress[{j}])"),
                    ),
                    _ => {
                        bind_host.insert(b, (host.clone(), i));
                    }
                }
            }
            egress.push(Egress { host, ..g });
        }
        // An explicit bind on one entry of a host applies to the host's other entries too.
        for g in &mut egress {
            if g.bind.is_none() {
                g.bind = host_bind.get(&g.host).map(|(b, _)| *b);
            }
        }

        if let Some(probe) = &self.probe {
            match probe {
                Probe::HttpGet(h) => {
                    e.check("probe.http_get.path", check_probe_path(&h.path));
                }
                Probe::TcpSocket(_) => {}
            }
        }

        check_mesh_ports(&self.ports, &egress_ports, self.probe.as_ref(), &mut e);

        if let Some(n) = &self.network {
            e.check("network", check_network(n));
        }

        let interception = match self.interception {
            Interception::None => Interception::None,
            Interception::Iptables { service_cidrs } => {
                if service_cidrs.is_empty() {
                    e.add(
                        "interception.service_cidrs",
                        "list the cluster's service CIDRs to capture",
                    );
                }
                if service_cidrs.len() > MAX_SERVICE_CIDRS {
                    e.add(
                        "interception.service_cidrs",
                        format!("at most {MAX_SERVICE_CIDRS} CIDRs"),
                    );
                }
                let mut out = Vec::with_capacity(service_cidrs.len());
                let mut uniq = BTreeSet::new();
                for (i, c) in service_cidrs.iter().enumerate() {
                    let f = format!("interception.service_cidrs[{i}]");
                    if let Some(c) = e.check(&f, check_cidr(c.trim())) {
                        if !uniq.insert(c.clone()) {
                            e.add(f, format!("{c} is listed twice"));
                        }
                        out.push(c);
                    }
                }
                Interception::Iptables { service_cidrs: out }
            }
        };

        e.into_result()?;
        Ok(MeshSettings {
            enabled: self.enabled,
            service_account,
            ports: self.ports,
            egress,
            probe: self.probe,
            network: self.network,
            interception,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: serde_json::Value) -> BTreeMap<String, String> {
        MeshSettings::from_json(&v).unwrap_err().0
    }

    #[test]
    fn empty_object_is_disabled() {
        let s = MeshSettings::from_json(&json!({})).unwrap();
        assert_eq!(s, MeshSettings::default());
        assert!(!s.enabled);
    }

    #[test]
    fn full_example_round_trips() {
        let v = json!({
            "enabled": true,
            "service_account": "xrayr",
            "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP", "target_port": 18080}],
            "egress": [
                {"host": "XBoard.sigma.svc.cluster.local.", "port": 443, "protocol": "HTTPS"},
                {"host": "redis.sigma.svc.cluster.local", "port": 6379, "protocol": "Redis", "bind": "127.0.0.9"}
            ],
            "probe": {"http_get": {"path": "/healthz", "port": 9102}},
            "network": "vpn",
            "interception": {"mode": "iptables", "service_cidrs": ["10.96.0.0/12", "fd00::/108"]}
        });
        let s = MeshSettings::from_json(&v).unwrap();
        assert_eq!(s.egress[0].host, "xboard.sigma.svc.cluster.local");
        assert_eq!(s.egress[1].bind, Some(Ipv4Addr::new(127, 0, 0, 9)));
        assert_eq!(s.ports[0].target_port, Some(18080));
        let back = MeshSettings::from_json(&serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn port_range_is_rejected_naming_the_field() {
        let e = errors(json!({"ports": [
            {"name": "a", "number": 80, "protocol": "HTTP"},
            {"name": "b", "number": "10000-30000", "protocol": "TCP"}
        ]}));
        let r = &e["ports[1].number"];
        assert!(r.contains("port range"), "{r}");
    }

    #[test]
    fn misspelt_protocol_is_rejected_naming_the_field() {
        let e = errors(json!({"ports": [
            {"name": "a", "number": 80, "protocol": "HTTP"},
            {"name": "b", "number": 81, "protocol": "HTPP"}
        ]}));
        assert!(
            e["ports[1].protocol"].contains("Istio accepts only TCP, UDP"),
            "{e:?}"
        );
        let e = errors(json!({"ports": [{"name": "a", "number": 80, "protocol": "http"}]}));
        assert!(
            e["ports[0].protocol"].contains("did you mean \"HTTP\""),
            "{e:?}"
        );
        let e = errors(json!({"ports": [{"name": "a", "number": 80, "protocol": "grpc-web"}]}));
        assert!(e["ports[0].protocol"].contains("\"GRPC-Web\""), "{e:?}");
    }

    #[test]
    fn every_istio_protocol_parses() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>().unwrap(), p);
        }
        assert_eq!(Protocol::GrpcWeb.name_token(), "grpc-web");
        assert_eq!(Protocol::HttpProxy.name_token(), "http-proxy");
    }

    #[test]
    fn bad_port_numbers() {
        for (n, want) in [
            (json!(0), "not a port"),
            (json!(70000), "not a port"),
            (json!(-1), "not a port"),
            (json!(80.5), "not a port"),
            (json!("80"), "write the port as a number"),
            (json!("8000:8100"), "port range"),
        ] {
            let e = errors(json!({"ports": [{"name": "a", "number": n, "protocol": "TCP"}]}));
            assert!(e["ports[0].number"].contains(want), "{n}: {e:?}");
        }
        let e = errors(
            json!({"ports": [{"name": "a", "number": 80, "protocol": "TCP", "target_port": 0}]}),
        );
        assert!(e.contains_key("ports[0].target_port"), "{e:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = errors(json!({"enabled": true, "portz": []}));
        assert!(
            e.values().any(|r| r.contains("unknown field `portz`")),
            "{e:?}"
        );
        let e =
            errors(json!({"ports": [{"name": "a", "number": 80, "protocol": "TCP", "nmae": "x"}]}));
        assert!(
            e.values().any(|r| r.contains("unknown field `nmae`")),
            "{e:?}"
        );
        let e = errors(json!({"probe": {"exec": {"command": ["true"]}}}));
        assert!(
            e.values().any(|r| r.contains("unknown variant `exec`")),
            "{e:?}"
        );
        let e = errors(json!({"interception": {"mode": "ebpf"}}));
        assert!(e.values().any(|r| r.contains("ebpf")), "{e:?}");
        let e = errors(json!({"interception": {"mode": "none", "service_cidrs": []}}));
        assert!(e.values().any(|r| r.contains("service_cidrs")), "{e:?}");
        let e = errors(json!([1, 2]));
        assert_eq!(e[""], "must be a JSON object");
        let e = errors(
            json!({"egress": [{"host": "a.b", "port": 1, "protocol": "TCP", "bind": "::1"}]}),
        );
        assert!(e.contains_key("egress[0].bind"), "{e:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = errors(json!({
            "service_account": "Bad_SA",
            "ports": [
                {"name": "http", "number": 80, "protocol": "HTTP"},
                {"name": "http", "number": 80, "protocol": "HTTP"},
                {"name": "Web", "number": 81, "protocol": "HTTP"},
                {"name": "x".repeat(63), "number": 82, "protocol": "HTTP"},
                {"name": "admin", "number": 15000, "protocol": "HTTP"},
                {"name": "ok", "number": 83, "protocol": "HTTP", "target_port": 15021}
            ],
            "egress": [
                {"host": "xboard", "port": 443, "protocol": "HTTPS"},
                {"host": "a.example.com", "port": 443, "protocol": "HTTPS"},
                {"host": "*.example.com", "port": 444, "protocol": "HTTPS"},
                {"host": "10.0.0.1", "port": 445, "protocol": "TCP"},
                {"host": "b.example.com", "port": 446, "protocol": "TCP", "bind": "127.0.0.1"},
                {"host": "c.example.com", "port": 447, "protocol": "TCP", "bind": "10.0.0.2"},
                {"host": "ns/d.example.com", "port": 448, "protocol": "TCP"}
            ],
            "probe": {"http_get": {"path": "healthz", "port": 80}},
            "network": "has space",
            "interception": {"mode": "iptables", "service_cidrs": ["10.96.0.1/12", "nonsense", "10.0.0.0/8", "10.0.0.0/8"]}
        }));
        for k in [
            "service_account",
            "ports[1].name",
            "ports[1].number",
            "ports[2].name",
            "ports[3].name",
            "ports[4].number",
            "ports[5].target_port",
            "egress[0].host",
            "egress[1].port",
            "egress[2].host",
            "egress[3].host",
            "egress[4].bind",
            "egress[5].bind",
            "egress[6].host",
            "probe.http_get.path",
            "network",
            "interception.service_cidrs[0]",
            "interception.service_cidrs[1]",
            "interception.service_cidrs[3]",
        ] {
            assert!(e.contains_key(k), "missing {k}: {e:#?}");
        }
        assert!(e["interception.service_cidrs[0]"].contains("10.96.0.0/12"));
        assert!(e["ports[3].name"].contains("62"));
        assert_eq!(e.len(), 19, "{e:#?}");
    }

    #[test]
    fn mesh_port_is_optional_and_round_trips() {
        // Settings stored before mesh_port existed stay valid and serialize as they were.
        let old = json!({"enabled": true, "ports": [{"name": "vless", "number": 443, "protocol": "TCP"}]});
        let s = MeshSettings::from_json(&old).unwrap();
        assert_eq!(s.ports[0].mesh_port, None);
        assert_eq!(serde_json::to_value(&s).unwrap()["ports"], old["ports"]);
        let v = json!({"enabled": true, "ports": [
            {"name": "vless", "number": 443, "protocol": "TCP", "mesh_port": 15443 + 1},
            {"name": "api", "number": 8443, "protocol": "HTTPS", "target_port": 18443, "mesh_port": 28443}
        ]});
        let s = MeshSettings::from_json(&v).unwrap();
        assert_eq!(s.ports[0].mesh_port, Some(15444));
        assert_eq!(s.ports[1].app_port(), 18443);
        assert_eq!(serde_json::to_value(&s).unwrap()["ports"], v["ports"]);
        assert_eq!(
            MeshSettings::from_json(&serde_json::to_value(&s).unwrap()).unwrap(),
            s
        );
    }

    #[test]
    fn bad_mesh_ports_name_the_field() {
        let port = |m: serde_json::Value| json!({"name": "a", "number": 8443, "protocol": "TCP", "mesh_port": m});
        for (m, want) in [
            (json!(0), "not a port"),
            (json!(70000), "not a port"),
            (json!("15100"), "write the port as a number"),
            (json!("15100-15200"), "port range"),
            (json!(443), "below 1024"),
            (json!(15000), "reserved by Istio"),
            (json!(15006), "reserved by Istio"),
            (json!(15012), "reserved by Istio"),
            (json!(15099), "reserved by Istio"),
            (json!(15443), "reserved by Istio"),
            (json!(9102), "sigma-agent"),
            (json!(9901), "sigma-agent"),
            (json!(18000), "sigma-agent"),
            (json!(8443), "application port (ports[0].number)"),
        ] {
            let e = errors(json!({"ports": [port(m.clone())]}));
            assert!(
                e.get("ports[0].mesh_port")
                    .is_some_and(|r| r.contains(want)),
                "{m}: {e:?}"
            );
            assert_eq!(e.len(), 1, "{m}: {e:?}");
        }
    }

    #[test]
    fn mesh_ports_clash_with_nothing_the_purpose_runs() {
        let e = errors(json!({
            "ports": [
                {"name": "a", "number": 8443, "protocol": "TCP", "target_port": 18443, "mesh_port": 20000},
                {"name": "b", "number": 8444, "protocol": "TCP", "mesh_port": 18443},
                {"name": "c", "number": 8445, "protocol": "TCP", "mesh_port": 20000},
                {"name": "d", "number": 8446, "protocol": "TCP", "mesh_port": 6379},
                {"name": "e", "number": 8447, "protocol": "TCP", "mesh_port": 9000},
                {"name": "f", "number": 53, "protocol": "UDP", "mesh_port": 20053},
                {"name": "g", "number": 8448, "protocol": "TCP", "mesh_port": 8445}
            ],
            "egress": [{"host": "redis.example.com", "port": 6379, "protocol": "Redis"}],
            "probe": {"http_get": {"path": "/healthz", "port": 9000}}
        }));
        assert!(
            e["ports[1].mesh_port"].contains("ports[0].target_port"),
            "{e:?}"
        );
        assert!(
            e["ports[2].mesh_port"].contains("already the mesh_port of ports[0]"),
            "{e:?}"
        );
        assert!(e["ports[3].mesh_port"].contains("egress[0]"), "{e:?}");
        assert!(e["ports[4].mesh_port"].contains("probe"), "{e:?}");
        assert!(e["ports[5].mesh_port"].contains("UDP"), "{e:?}");
        assert!(e["ports[6].mesh_port"].contains("ports[2].number"), "{e:?}");
        assert_eq!(e.len(), 6, "{e:#?}");
    }

    #[test]
    fn port_name_of_62_is_accepted() {
        let v = json!({"ports": [{"name": "x".repeat(62), "number": 80, "protocol": "TCP"}]});
        assert!(MeshSettings::from_json(&v).is_ok());
    }

    #[test]
    fn egress_binds_are_consistent_per_host() {
        let e = errors(json!({"egress": [
            {"host": "a.example.com", "port": 1, "protocol": "TCP", "bind": "127.0.0.2"},
            {"host": "a.example.com", "port": 2, "protocol": "TCP", "bind": "127.0.0.3"},
            {"host": "b.example.com", "port": 3, "protocol": "TCP", "bind": "127.0.0.2"},
            {"host": "c.example.com", "port": 4, "protocol": "TCP", "bind": "127.255.255.255"},
            {"host": "c.example.com", "port": 4, "protocol": "HTTP"}
        ]}));
        assert!(e["egress[1].bind"].contains("already bound"), "{e:?}");
        assert!(e["egress[2].bind"].contains("already the address"), "{e:?}");
        assert!(e["egress[3].bind"].contains("broadcast"), "{e:?}");
        assert!(e["egress[4].port"].contains("unique"), "{e:?}");
        assert!(e["egress[4].host"].contains("already listed"), "{e:?}");

        let ok = MeshSettings::from_json(&json!({"egress": [
            {"host": "a.example.com", "port": 1, "protocol": "TCP"},
            {"host": "a.example.com", "port": 2, "protocol": "TCP", "bind": "127.0.0.2"}
        ]}))
        .unwrap();
        assert_eq!(ok.egress[0].bind, Some(Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[test]
    fn iptables_needs_cidrs() {
        let e = errors(json!({"interception": {"mode": "iptables", "service_cidrs": []}}));
        assert!(e.contains_key("interception.service_cidrs"));
        let ok = MeshSettings::from_json(
            &json!({"interception": {"mode": "iptables", "service_cidrs": [" 10.96.0.0/12 ", "FD00::/108"]}}),
        )
        .unwrap();
        assert_eq!(
            ok.interception,
            Interception::Iptables {
                service_cidrs: vec!["10.96.0.0/12".into(), "fd00::/108".into()]
            }
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(check_cidr("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert!(check_cidr("10.0.0.0/33").is_err());
        assert!(check_cidr("10.0.0.0").is_err());
        assert!(check_cidr("10.0.0.0/x").is_err());
        assert!(
            check_cidr("2001:db8::1/64")
                .unwrap_err()
                .contains("2001:db8::/64")
        );
    }

    #[test]
    fn template_defaults_and_validation() {
        let t = MeshTemplate::default();
        t.validate().unwrap();
        assert_eq!(t.namespace, "sigma");
        assert_eq!(t.health_port, 9102);
        let t: MeshTemplate = serde_json::from_value(json!({"network": {"fixed": "vpn"}})).unwrap();
        assert_eq!(t.network, NetworkMode::Fixed("vpn".into()));
        assert_eq!(t.service_domain, "sigma.mesh");
        let bad = MeshTemplate {
            namespace: "Sigma".into(),
            service_domain: "mesh".into(),
            service_account: "A".into(),
            network: NetworkMode::Fixed("".into()),
            health_port: 0,
            health_path: "healthz".into(),
            version: "".into(),
        };
        let e = bad.validate().unwrap_err().0;
        assert_eq!(e.len(), 7, "{e:?}");
    }
}

//! Where a VPS and its egress hosts are reached, and what the generated objects are named: the
//! loopback address of each egress listener, the VPS's address, locality and network, and the
//! names, labels and metadata sigma's objects carry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};
use sigma_types::IpAddress;

use crate::names;
use crate::objects::*;
use crate::settings::{MeshSettings, MeshTemplate, NetworkMode, Protocol};

/// An egress entry with its listener address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressBinding {
    /// Service host.
    pub host: String,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Loopback address the proxy listens on; the agent maps `host` to it.
    pub bind: Ipv4Addr,
    /// Listener port name (`<protocol>-<port>`).
    pub name: String,
}

/// Number of addresses in 127.0.0.2 ..= 127.255.255.254.
const LOOPBACK_SLOTS: u32 = (1 << 24) - 3;

fn loopback_slot(host: &str) -> u32 {
    let d = Sha256::digest(host.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % LOOPBACK_SLOTS
}

fn slot_addr(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from((127u32 << 24) + 2 + slot)
}

/// The listener address of every egress entry of (normalized) settings.
///
/// An explicit `bind` wins. Otherwise a host's address is derived from a hash of the host name
/// alone (somewhere in 127.0.0.2–127.255.255.254), so it does not depend on the other entries:
/// adding, removing or reordering entries never moves an existing host, and the same host gets
/// the same address in every purpose. Positional schemes (list order, or sorted order) move
/// addresses on insertion. Only when two hosts of one purpose hash to the same address (about
/// one chance in 16 million per pair) does the later one in host order take the next free
/// address. Entries of one host share its address.
pub fn egress_bindings(settings: &MeshSettings) -> Vec<EgressBinding> {
    let mut by_host: BTreeMap<&str, Option<Ipv4Addr>> = BTreeMap::new();
    for g in &settings.egress {
        let e = by_host.entry(g.host.as_str()).or_insert(None);
        if e.is_none() {
            *e = g.bind;
        }
    }
    let mut used: HashSet<Ipv4Addr> = by_host.values().flatten().copied().collect();
    let mut addr: HashMap<&str, Ipv4Addr> = HashMap::with_capacity(by_host.len());
    for (host, bind) in &by_host {
        let a = match bind {
            Some(b) => *b,
            None => {
                let mut slot = loopback_slot(host);
                while used.contains(&slot_addr(slot)) {
                    slot = (slot + 1) % LOOPBACK_SLOTS;
                }
                let a = slot_addr(slot);
                used.insert(a);
                a
            }
        };
        addr.insert(host, a);
    }
    let mut out: Vec<EgressBinding> = settings
        .egress
        .iter()
        .map(|g| EgressBinding {
            host: g.host.clone(),
            port: g.port,
            protocol: g.protocol,
            bind: addr[g.host.as_str()],
            name: format!("{}-{}", g.protocol.name_token(), g.port),
        })
        .collect();
    out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    out
}

/// Whether an address is in a range that is never routed on the internet: RFC 1918, CGNAT
/// (100.64.0.0/10) and IPv6 unique-local (fc00::/7).
fn is_private_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Whether an address can never be an endpoint other hosts reach.
fn is_unusable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some()
        }
    }
}

/// The address a VPS is reached at in the mesh, or `None` when it has no usable one.
///
/// Preference: public IPv4, public IPv6, private IPv4, private IPv6; ties go to the smallest
/// address, so the choice does not depend on the order addresses are listed in. An address is
/// private when labelled `private` or in a private range (RFC 1918, CGNAT, fc00::/7): a `public`
/// label cannot make 10.0.0.5 reachable. A private address is used only when the VPS has no
/// public one (its network's east-west gateway then has to reach it).
pub fn select_address(ips: &[IpAddress]) -> Option<IpAddr> {
    ips.iter()
        .filter_map(|a| {
            let ip: IpAddr = a.ip.trim().parse().ok()?;
            if is_unusable(ip) {
                return None;
            }
            let private = a.label == "private" || is_private_range(ip);
            Some(((private, ip.is_ipv6()), ip))
        })
        .min()
        .map(|(_, ip)| ip)
}

/// The `region/zone` locality of a VPS (`fr/paris`), or `None` without a usable country.
pub fn locality(country: Option<&str>, city: Option<&str>) -> Option<String> {
    let region = names::locality_component(country?)?;
    Some(match city.and_then(names::locality_component) {
        Some(zone) => format!("{region}/{zone}"),
        None => region,
    })
}

/// The name of a VPS's WorkloadEntry: `vps-<hostname>` as a DNS-1123 label (see
/// [`names::dns_label`]).
pub fn workload_entry_name(hostname: &str) -> String {
    names::dns_label(&format!("vps-{hostname}"))
}

/// The name of the DestinationRule for a called host.
pub fn destination_rule_name(host: &str) -> String {
    const SUFFIX: &str = "-mtls";
    format!(
        "{}{SUFFIX}",
        names::dns_label_within(host, names::MAX_LABEL_LEN - SUFFIX.len())
    )
}

/// The host of a purpose's ServiceEntry.
pub fn service_host(purpose: &str, template: &MeshTemplate) -> String {
    format!("{purpose}.{}", template.service_domain)
}

/// The Istio network of a VPS: the purpose's override, else the template's fixed network, else
/// `provider-<provider>` (cleaned into a label value), else none.
pub fn vps_network(
    template: &MeshTemplate,
    settings: &MeshSettings,
    provider: Option<&str>,
) -> Option<String> {
    choose_network(template, settings, || {
        provider
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(provider_network)
    })
}

pub(super) fn choose_network(
    template: &MeshTemplate,
    settings: &MeshSettings,
    per_provider: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if let Some(n) = &settings.network {
        return Some(n.clone());
    }
    match &template.network {
        NetworkMode::Fixed(n) => Some(n.clone()),
        NetworkMode::PerProvider => per_provider(),
    }
}

/// `provider-<provider>`, cleaned like the `provider` label so that both carry the same hash
/// when one is needed.
pub(super) fn provider_network(provider: &str) -> String {
    const PREFIX: &str = "provider-";
    let max = names::MAX_LABEL_LEN - PREFIX.len();
    format!("{PREFIX}{}", names::label_value_within(provider, max))
}

pub(super) fn managed_meta(
    name: String,
    template: &MeshTemplate,
    mut labels: BTreeMap<String, String>,
) -> ObjectMeta {
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut annotations = BTreeMap::new();
    annotations.insert(MANAGED_ANNOTATION.into(), "true".into());
    ObjectMeta {
        name,
        namespace: template.namespace.clone(),
        labels,
        annotations,
    }
}

pub(super) fn app_labels(purpose: &str, template: &MeshTemplate) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), purpose.to_string()),
        ("version".to_string(), template.version.clone()),
    ])
}

pub(super) fn selector(purpose: &str) -> WorkloadSelector {
    WorkloadSelector {
        labels: BTreeMap::from([("app".to_string(), purpose.to_string())]),
    }
}

//! Serving a purpose's ports to the mesh without interception: each port gets an ingress
//! listener on the VPS's Envoy, on a mesh-facing port that differs from the application's, which
//! terminates the mesh's mTLS and forwards to the application on loopback. The application keeps
//! its own port, and users who connect to it directly pass no Envoy.
//!
//! [`ingress_bindings`] decides the mesh-facing ports; the Sidecar's `ingress`, the
//! ServiceEntry's `targetPort` and the WorkloadEntry's `ports` are all made from its result, so
//! they cannot disagree.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use sigma_types::FieldErrors;

use crate::objects::{CaptureMode, IngressListener, SidecarPort};
use crate::settings::{
    AGENT_PORTS, DEFAULT_MESH_PORTS, ISTIO_GATEWAY_PORT, MAX_EGRESS, MAX_PORTS, MeshSettings,
    Protocol, ServicePort, probe_port,
};

/// A served port with its mesh-facing listener resolved: what the Sidecar's ingress listener,
/// the ServiceEntry's `targetPort` and the WorkloadEntry's `ports` are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressBinding {
    /// Port name (the key of the WorkloadEntry's `ports`).
    pub name: String,
    /// Service port clients call (`<purpose>.<service domain>:<number>`).
    pub number: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Port the application listens on at the VPS (`target_port`, else `number`).
    pub app_port: u16,
    /// Port of the VPS's Envoy listener that terminates mTLS for it.
    pub mesh_port: u16,
}

/// Number of ports in [`DEFAULT_MESH_PORTS`].
const MESH_PORT_SLOTS: u32 =
    *DEFAULT_MESH_PORTS.end() as u32 - *DEFAULT_MESH_PORTS.start() as u32 + 1;

// The range always has a free port: at most 128 ports take 3 ports each (number, target_port,
// mesh_port), 256 egress listeners one each, the probe, the health port and 15443 one each.
const _: () = assert!(MESH_PORT_SLOTS as usize > 3 * MAX_PORTS + MAX_EGRESS + 3);

fn mesh_port_slot(name: &str) -> u32 {
    let d = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % MESH_PORT_SLOTS
}

/// The mesh-facing listener of every port of (normalized) settings that Envoy can carry (all
/// but UDP), sorted by mesh port; `health_port` is the template's, where the agent's health
/// endpoint listens.
///
/// An explicit `mesh_port` wins. Otherwise a port's listener is placed in
/// [`DEFAULT_MESH_PORTS`] (15100-16099) by a hash of its name alone, so adding, removing or
/// reordering other ports never moves it, and the same name gets the same port in every
/// purpose. A port already taken on the VPS — an application port, an explicit mesh port, an
/// egress listener's port, the probe's or the health port, 15443 — pushes it to the next free
/// one (names in order, so the result does not depend on list order either).
///
/// Fails, naming `ports[i].mesh_port`, only when an explicit mesh port is the template's
/// health port (the settings alone cannot know it).
pub fn ingress_bindings(
    settings: &MeshSettings,
    health_port: u16,
) -> std::result::Result<Vec<IngressBinding>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut taken: HashSet<u16> = HashSet::new();
    taken.insert(health_port);
    taken.insert(ISTIO_GATEWAY_PORT);
    taken.extend(AGENT_PORTS);
    taken.extend(settings.egress.iter().map(|g| g.port));
    taken.extend(probe_port(settings.probe.as_ref()));
    for (i, p) in settings.ports.iter().enumerate() {
        taken.insert(p.number);
        taken.extend(p.target_port);
        if let Some(m) = p.mesh_port {
            if m == health_port && p.meshable() {
                errors.add(
                    format!("ports[{i}].mesh_port"),
                    format!(
                        "{m} is the health port of sigma-agent (the mesh template's health_port)"
                    ),
                );
            }
            taken.insert(m);
        }
    }
    errors.into_result()?;

    let mut defaults: Vec<&ServicePort> = settings
        .ports
        .iter()
        .filter(|p| p.meshable() && p.mesh_port.is_none())
        .collect();
    defaults.sort_by(|a, b| a.name.cmp(&b.name));
    let mut chosen: HashMap<&str, u16> = HashMap::with_capacity(defaults.len());
    for p in defaults {
        let mut slot = mesh_port_slot(&p.name);
        let mut port = None;
        for _ in 0..MESH_PORT_SLOTS {
            let candidate = *DEFAULT_MESH_PORTS.start() + slot as u16;
            if !taken.contains(&candidate) {
                port = Some(candidate);
                break;
            }
            slot = (slot + 1) % MESH_PORT_SLOTS;
        }
        // Unreachable by the assertion on MESH_PORT_SLOTS, but reported rather than assumed.
        let Some(port) = port else {
            let mut e = FieldErrors::new();
            e.add(
                "ports",
                "no free mesh port left in 15100-16099; set mesh_port",
            );
            return Err(e);
        };
        taken.insert(port);
        chosen.insert(&p.name, port);
    }

    let mut out: Vec<IngressBinding> = settings
        .ports
        .iter()
        .filter(|p| p.meshable())
        .filter_map(|p| {
            let mesh_port = p
                .mesh_port
                .or_else(|| chosen.get(p.name.as_str()).copied())?;
            Some(IngressBinding {
                name: p.name.clone(),
                number: p.number,
                protocol: p.protocol,
                app_port: p.app_port(),
                mesh_port,
            })
        })
        .collect();
    out.sort_by_key(|b| b.mesh_port);
    Ok(out)
}

/// The Sidecar ingress listeners of a purpose's bindings, in mesh-port order.
///
/// What istiod makes of them, read in Istio's source of the built commit
/// (istio.io/istio@v0.0.0-20260826214018-9739e10eb9d7):
///
/// * **No listener without them.** With interception NONE and no `ingress`, istiod builds no
///   inbound listener at all (pilot/pkg/networking/core/listener_inbound.go:434-441,
///   buildInboundChainConfigs: "Users are required to provide the sidecar config to define the
///   inbound listeners").
/// * **Bind.** `bind` is left empty on purpose. One Sidecar serves every VPS of the purpose (a
///   Sidecar per VPS would make istiod match 100k selectors against 100k proxies), so it cannot
///   name each VPS's address. For an empty bind istiod takes, per proxy,
///   `getSidecarInboundBindIPs(node)` (listener_inbound.go:489-495), which is
///   `node.GlobalUnicastIP` when set, else the wildcard `0.0.0.0` (plus `[::]` when
///   dual-stack) (listener_address.go:89-96). `GlobalUnicastIP` is the first global unicast
///   address of the proxy's `INSTANCE_IPS` (pilot/pkg/model/context.go:647-650 and 731-732,
///   pilot/pkg/util/network/ip.go:225-238), and pilot-agent lists its `INSTANCE_IP` variable
///   first (pilot/cmd/pilot-agent/app/cmd.go:241-265, initProxy), which sigma-agent sets from
///   the bundle's `ISTIO_SVC_IP`, the WorkloadEntry's address, as istio-start.sh does.
///   [`crate::select_address`] only picks global unicast addresses (private ranges included),
///   so the listener binds exactly the VPS's mesh address. istiod never reads the
///   WorkloadEntry for the bind: a VPS whose mesh address is not on one of its interfaces
///   (behind 1:1 NAT) cannot bind the listener. A bind set in the Sidecar would be used as is
///   (listener_inbound.go:471-485), for every VPS alike.
/// * **Capture NONE** makes Envoy bind the port itself (`getBindToPort`,
///   listener_inbound.go:527-534) instead of waiting for redirected traffic.
/// * **defaultEndpoint** `127.0.0.1:<application port>` sends accepted connections to the
///   application on loopback (cluster.go:794-860, buildInboundClustersFromSidecar).
///   `0.0.0.0:<port>` would mean the proxy's first IPv4 address (INSTANCE_IP), `[::1]`/`[::]`
///   their IPv6 forms, `unix://<path>` a socket; without one Envoy would forward to the
///   original destination, i.e. the listener itself. Istio's validation accepts exactly these
///   forms (pkg/config/validation/validation.go:825-845), as does [`crate::check_object`].
///
/// mTLS is terminated by this listener as PeerAuthentication says (PERMISSIVE by default,
/// STRICT refuses plaintext). The application keeps its own port and address, so users who
/// connect to it directly pass no Envoy.
pub fn ingress_listeners(bindings: &[IngressBinding]) -> Vec<IngressListener> {
    bindings
        .iter()
        .map(|b| IngressListener {
            port: SidecarPort {
                number: u32::from(b.mesh_port),
                protocol: b.protocol.as_str().to_string(),
                name: b.name.clone(),
            },
            bind: None,
            capture_mode: Some(CaptureMode::None),
            default_endpoint: Some(format!("127.0.0.1:{}", b.app_port)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: serde_json::Value) -> MeshSettings {
        MeshSettings::from_json(&v).unwrap()
    }

    fn by_name(b: &[IngressBinding]) -> HashMap<&str, u16> {
        b.iter().map(|b| (b.name.as_str(), b.mesh_port)).collect()
    }

    #[test]
    fn defaults_come_from_the_name_and_do_not_move() {
        let one = settings(json!({"ports": [{"name": "vless", "number": 443, "protocol": "TCP"}]}));
        let b = ingress_bindings(&one, 9102).unwrap();
        let vless = b[0].mesh_port;
        assert!(DEFAULT_MESH_PORTS.contains(&vless));
        assert_eq!(
            vless,
            DEFAULT_MESH_PORTS.start() + mesh_port_slot("vless") as u16
        );
        assert_eq!(b[0].app_port, 443);
        assert_eq!(b[0].number, 443);
        // Adding, reordering and removing other ports leaves it where it is.
        let more = settings(json!({"ports": [
            {"name": "metrics", "number": 9100, "protocol": "HTTP", "target_port": 19100},
            {"name": "api", "number": 8443, "protocol": "HTTPS"},
            {"name": "vless", "number": 443, "protocol": "TCP"}
        ]}));
        let bm = ingress_bindings(&more, 9102).unwrap();
        assert_eq!(by_name(&bm)["vless"], vless);
        let mut reordered = more.clone();
        reordered.ports.reverse();
        assert_eq!(ingress_bindings(&reordered, 9102).unwrap(), bm);
        // Sorted by mesh port, each port once, all in the range and distinct.
        let ports: Vec<u16> = bm.iter().map(|b| b.mesh_port).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ports, sorted);
        assert_eq!(ports.len(), 3);
        assert_eq!(by_name(&bm).len(), 3);
        let metrics = bm.iter().find(|b| b.name == "metrics").unwrap();
        assert_eq!(metrics.app_port, 19100);
    }

    #[test]
    fn the_guides_example_port() {
        // docs/operator-guide.md ("Serve a port to the mesh") quotes this default.
        let s =
            settings(json!({"ports": [{"name": "tcp-vpn", "number": 8443, "protocol": "TCP"}]}));
        assert_eq!(ingress_bindings(&s, 9102).unwrap()[0].mesh_port, 15130);
    }

    #[test]
    fn a_taken_default_moves_to_the_next_free_port() {
        let vless = DEFAULT_MESH_PORTS.start() + mesh_port_slot("vless") as u16;
        // Its hashed port is the application's port of another entry, the target port of a
        // third, an egress port, the probe's port: each pushes it one further.
        let s = settings(json!({
            "ports": [
                {"name": "vless", "number": 443, "protocol": "TCP"},
                {"name": "a", "number": vless, "protocol": "TCP", "mesh_port": 20000},
                {"name": "b", "number": 80, "protocol": "TCP", "target_port": vless + 1, "mesh_port": 20001}
            ],
            "egress": [{"host": "x.example.com", "port": vless + 2, "protocol": "TCP"}],
            "probe": {"tcp_socket": {"port": vless + 3}}
        }));
        let b = ingress_bindings(&s, vless + 4).unwrap();
        assert_eq!(by_name(&b)["vless"], vless + 5);
        assert_eq!(by_name(&b)["a"], 20000, "explicit mesh_port wins");
        // The same inputs give the same answer.
        assert_eq!(ingress_bindings(&s, vless + 4).unwrap(), b);
    }

    #[test]
    fn two_names_with_one_hash_slot_are_both_served() {
        // Find two names sharing a slot; the one first in name order keeps it.
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0..100_000)
            .find_map(|i| {
                let n = format!("p{i}");
                let slot = mesh_port_slot(&n);
                match seen.get(&slot) {
                    Some(o) => Some((o.clone(), n)),
                    None => {
                        seen.insert(slot, n);
                        None
                    }
                }
            })
            .unwrap();
        let s = settings(json!({"ports": [
            {"name": b, "number": 1, "protocol": "TCP"},
            {"name": a, "number": 2, "protocol": "TCP"}
        ]}));
        let got = by_name(&ingress_bindings(&s, 9102).unwrap())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>();
        let base = DEFAULT_MESH_PORTS.start() + mesh_port_slot(&a) as u16;
        let (first, second) = if a < b { (&a, &b) } else { (&b, &a) };
        assert_eq!(got[first], base);
        assert_eq!(got[second], base + 1);
    }

    #[test]
    fn udp_ports_get_no_listener() {
        let s = settings(json!({"ports": [
            {"name": "dns", "number": 53, "protocol": "UDP"},
            {"name": "web", "number": 8080, "protocol": "HTTP"}
        ]}));
        let b = ingress_bindings(&s, 9102).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].name, "web");
    }

    #[test]
    fn explicit_mesh_port_on_the_templates_health_port_names_the_field() {
        let s = settings(json!({"ports": [
            {"name": "web", "number": 8080, "protocol": "HTTP", "mesh_port": 19000}
        ]}));
        let e = ingress_bindings(&s, 19000).unwrap_err().0;
        assert!(e["ports[0].mesh_port"].contains("health port"), "{e:?}");
        // A default never lands on the health port.
        let s = settings(json!({"ports": [{"name": "vless", "number": 443, "protocol": "TCP"}]}));
        let hashed = DEFAULT_MESH_PORTS.start() + mesh_port_slot("vless") as u16;
        assert_eq!(
            ingress_bindings(&s, hashed).unwrap()[0].mesh_port,
            hashed + 1
        );
    }

    #[test]
    fn the_default_range_avoids_istio_and_the_agent() {
        assert!(*DEFAULT_MESH_PORTS.start() > 15099);
        for p in AGENT_PORTS {
            assert!(!DEFAULT_MESH_PORTS.contains(&p));
        }
        // 15443 is in the range and must be skipped: force a name onto it.
        let name = (0..100_000)
            .map(|i| format!("p{i}"))
            .find(|n| DEFAULT_MESH_PORTS.start() + mesh_port_slot(n) as u16 == ISTIO_GATEWAY_PORT)
            .unwrap();
        let s = settings(json!({"ports": [{"name": name, "number": 80, "protocol": "TCP"}]}));
        assert_eq!(
            ingress_bindings(&s, 9102).unwrap()[0].mesh_port,
            ISTIO_GATEWAY_PORT + 1
        );
    }

    #[test]
    fn listeners_terminate_on_the_mesh_port_and_forward_to_loopback() {
        let s = settings(json!({"ports": [
            {"name": "metrics", "number": 9100, "protocol": "HTTP", "target_port": 19100, "mesh_port": 19101}
        ]}));
        let l = ingress_listeners(&ingress_bindings(&s, 9102).unwrap());
        assert_eq!(
            l,
            vec![IngressListener {
                port: SidecarPort {
                    number: 19101,
                    protocol: "HTTP".into(),
                    name: "metrics".into()
                },
                bind: None,
                capture_mode: Some(CaptureMode::None),
                default_endpoint: Some("127.0.0.1:19100".into()),
            }]
        );
    }
}

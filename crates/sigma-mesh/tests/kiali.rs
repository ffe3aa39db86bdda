//! Kiali's model of the mesh, applied to what sigma generates: every meshed VPS must be a
//! workload of its own, named as its proxy names itself, holding exactly its WorkloadEntry,
//! under its purpose as app and canonical service; and the purpose-wide objects that select
//! by label must still select every VPS of the purpose.
//!
//! [`kiali_workloads`] re-implements, independently of the model, the rule of Kiali 2.x
//! (kiali/kiali `business/workloads.go` `fetchWorkloadsFromCluster`, `kubernetes/filters.go`
//! `FilterWorkloadEntriesBySelector`): every WorkloadGroup of a namespace is listed as a
//! workload named like the group, whose labels are the group's `spec.metadata.labels`, and whose
//! entries are the WorkloadEntries of the namespace whose `spec.labels` hold every one of those
//! labels — none at all when the group has no labels (`selector.Empty()`). An entry no group
//! selects is not listed as a workload.

mod fixtures;

use std::collections::BTreeMap;
use std::net::IpAddr;

use fixtures::{id, ip, purpose, vps};
use serde_json::json;
use sigma_mesh::bundle::{BundleInput, ControlPlane, bundle_workload, render_bundle};
use sigma_mesh::objects::*;
use sigma_mesh::{MeshObject, MeshPurpose, MeshTemplate, MeshVps, NetworkMode, desired_state};

/// A self-signed P-256 certificate (`openssl req -x509 -subj /O=cluster.local`).
const ROOT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUF3GR9qK/V/q7AyjZ9Jt22RTjzE8wCgYIKoZIzj0EAwIw
GDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDAgFw0yNjExMjcwMjQ2NDlaGA8yMTI2
MTEwMzAyNDY0OVowGDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKCj5FPx6lbeMHXeZCE1DjCjJEwBLxg9LzHwU+Y+nTg6
csjnQmo6U6mnpQwkAwpGyK3MhuBl7xMHti4N7O4qNoGjUzBRMB0GA1UdDgQWBBSG
m61CjObOZ0DJdWZCwS0zAWt1iDAfBgNVHSMEGDAWgBSGm61CjObOZ0DJdWZCwS0z
AWt1iDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIFtphA51vsd4
XaOZXbuAWlki+vLef93o4sV9DAsvKZ8KAiEAyYF2wORf5h/hZiOZVsLEoK340CiN
vyVeKa5+VNr6gQ8=
-----END CERTIFICATE-----
";

const MESH_CONFIG: &str = "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n";

/// A workload as Kiali lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KialiWorkload {
    /// The group's name.
    name: String,
    /// The group's `spec.metadata.labels`.
    labels: BTreeMap<String, String>,
    /// Names of the entries attached to it.
    entries: Vec<String>,
}

/// Whether every label of `selector` is in `labels` with the same value — Kubernetes'
/// `labels.Set(selector).AsSelector().Matches(labels)`, which Kiali and Istio's workload
/// selectors both use. An empty selector matches everything here; callers decide what that
/// means.
fn subset(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kiali's workloads of namespace `ns`, by name.
fn kiali_workloads(objects: &[MeshObject], ns: &str) -> BTreeMap<String, KialiWorkload> {
    let entries: Vec<&Resource<WorkloadEntrySpec>> = objects
        .iter()
        .filter_map(|o| match o {
            MeshObject::WorkloadEntry(r) if r.metadata.namespace == ns => Some(r),
            _ => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for o in objects {
        let MeshObject::WorkloadGroup(g) = o else {
            continue;
        };
        if g.metadata.namespace != ns {
            continue;
        }
        let labels = g
            .spec
            .metadata
            .as_ref()
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        let attached = if labels.is_empty() {
            Vec::new()
        } else {
            entries
                .iter()
                .filter(|e| subset(&labels, &e.spec.labels))
                .map(|e| e.metadata.name.clone())
                .collect()
        };
        out.insert(
            g.metadata.name.clone(),
            KialiWorkload {
                name: g.metadata.name.clone(),
                labels,
                entries: attached,
            },
        );
    }
    out
}

/// `ISTIO_META_WORKLOAD_NAME` and the canonical service and revision of the VPS's bundle —
/// what its pilot-agent reports, and so what its telemetry's `source_workload`,
/// `source_canonical_service` and `source_canonical_revision` hold.
fn proxy_identity(
    t: &MeshTemplate,
    p: &MeshPurpose,
    v: &MeshVps,
) -> Option<(String, String, String)> {
    let w = bundle_workload(t, p, v).ok()?;
    let b = render_bundle(&BundleInput {
        control_plane: &ControlPlane::default(),
        workload: &w,
        root_cert_pem: ROOT_CERT,
        mesh_config: MESH_CONFIG,
        eastwest: "198.51.100.50".parse::<IpAddr>().unwrap(),
        istio_proxy: None,
    })
    .unwrap();
    let env: BTreeMap<&str, &str> = b
        .files
        .cluster_env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('\'')))
        .collect();
    Some((
        env["ISTIO_META_WORKLOAD_NAME"].to_string(),
        env["CANONICAL_SERVICE"].to_string(),
        env["CANONICAL_REVISION"].to_string(),
    ))
}

fn purposes() -> Vec<MeshPurpose> {
    vec![
        purpose(
            "xrayr",
            json!({"enabled": true,
                   "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 80, "protocol": "HTTP"}]}),
        ),
        purpose(
            "vpn-exit",
            json!({"enabled": true, "network": "overlay",
                   "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP"}],
                   "probe": {"tcp_socket": {"port": 8080}}}),
        ),
        purpose(
            "vpn-relay",
            json!({"enabled": true, "service_account": "sigma-vpn-relay",
                   "ports": [{"name": "tcp-relay", "number": 9000, "protocol": "TCP"}]}),
        ),
    ]
}

/// Every kind of VPS the fleet has, by what it exercises.
fn fleet() -> Vec<(&'static str, MeshVps)> {
    let plain = vps(1, "xrayr-de-1", "xrayr", vec![ip("203.0.113.10", "public")]);
    let mut no_provider = vps(2, "xrayr-de-2", "xrayr", vec![ip("203.0.113.11", "public")]);
    no_provider.provider = None;
    no_provider.country = None;
    no_provider.city = None;
    let ipv6_only = vps(3, "xrayr-v6", "xrayr", vec![ip("2001:db8::3", "public")]);
    let mut opted_out = vps(4, "xrayr-out", "xrayr", vec![ip("203.0.113.14", "public")]);
    opted_out.mesh_opt_out = true;
    let mut cleaned = vps(
        5,
        "Exit_NL-1.Example.NET",
        "vpn-exit",
        vec![ip("198.51.100.5", "public")],
    );
    cleaned.provider = Some("Hetzner Online GmbH".into());
    cleaned.city = Some("São Paulo".into());
    let long = vps(
        6,
        &format!("relay-{}.example.net", "x".repeat(80)),
        "vpn-relay",
        vec![ip("10.0.0.6", "private")],
    );
    let mut retired = vps(
        7,
        "relay-old",
        "vpn-relay",
        vec![ip("203.0.113.17", "public")],
    );
    retired.status = sigma_types::VpsStatus::Retired;
    let no_address = vps(8, "relay-lo", "vpn-relay", vec![ip("127.0.0.1", "public")]);
    vec![
        ("plain", plain),
        ("no provider", no_provider),
        ("IPv6 only", ipv6_only),
        ("opted out", opted_out),
        ("hostname needing cleaning", cleaned),
        ("hostname too long, private address", long),
        ("retired", retired),
        ("no usable address", no_address),
    ]
}

fn check_fleet(t: &MeshTemplate) {
    let ps = purposes();
    let fleet = fleet();
    let all: Vec<MeshVps> = fleet.iter().map(|(_, v)| v.clone()).collect();
    let s = desired_state(t, &ps, &all).unwrap();
    let ns = &t.namespace;
    let workloads = kiali_workloads(&s.objects, ns);

    let mut meshed = 0;
    for (what, v) in &fleet {
        let p = ps.iter().find(|p| p.name == v.purpose).unwrap();
        let identity = proxy_identity(t, p, v);
        let entry = s.objects.iter().find_map(|o| match o {
            MeshObject::WorkloadEntry(e) if e.spec.labels[VPS_ID_LABEL] == v.id.to_string() => {
                Some(e)
            }
            _ => None,
        });
        let Some((workload_name, canonical_service, canonical_revision)) = identity else {
            // Not meshed: no proxy, so no entry and no workload of its own in Kiali.
            assert!(entry.is_none(), "{what}: an entry without a bundle");
            assert!(
                workloads
                    .values()
                    .all(|w| w.labels.get(VPS_ID_LABEL) != Some(&v.id.to_string())),
                "{what}: a workload for a VPS without a proxy"
            );
            continue;
        };
        meshed += 1;
        let entry = entry.unwrap_or_else(|| panic!("{what}: no WorkloadEntry"));
        // The graph node is named from the proxy's workload name; Kiali lists a workload of
        // exactly that name, and it holds this VPS's entry and nothing else.
        let w = workloads
            .get(&workload_name)
            .unwrap_or_else(|| panic!("{what}: Kiali lists no workload {workload_name}"));
        assert_eq!(w.entries, vec![entry.metadata.name.clone()], "{what}");
        assert_eq!(entry.metadata.name, workload_name, "{what}");
        // Grouped under its purpose as app and canonical service, with one version.
        assert_eq!(w.labels["app"], v.purpose, "{what}");
        assert_eq!(w.labels[CANONICAL_NAME_LABEL], v.purpose, "{what}");
        assert_eq!(w.labels["version"], t.version, "{what}");
        assert_eq!(w.labels[CANONICAL_REVISION_LABEL], t.version, "{what}");
        assert_eq!(canonical_service, v.purpose, "{what}");
        assert_eq!(canonical_revision, t.version, "{what}");
        assert!(subset(&w.labels, &entry.spec.labels), "{what}");
        // What the graph's workload-entry appender matches on (app and version) agrees too.
        assert_eq!(entry.spec.labels["app"], w.labels["app"], "{what}");
        assert_eq!(entry.spec.labels["version"], w.labels["version"], "{what}");

        // Istio's selections are untouched: the purpose's Sidecar and ServiceEntry select the
        // entry, and Kiali finds the Sidecar for the workload (FilterSidecarsBySelector).
        for o in &s.objects {
            let (sel, what_obj) = match o {
                MeshObject::Sidecar(r) if r.metadata.name == v.purpose => {
                    (&r.spec.workload_selector, "Sidecar")
                }
                MeshObject::ServiceEntry(r) if r.metadata.name == v.purpose => {
                    (&r.spec.workload_selector, "ServiceEntry")
                }
                _ => continue,
            };
            let sel = &sel.as_ref().unwrap().labels;
            assert!(!sel.is_empty());
            assert!(
                subset(sel, &entry.spec.labels),
                "{what}: {what_obj} does not select the entry"
            );
            assert!(
                subset(sel, &w.labels),
                "{what}: Kiali does not link {what_obj} to the workload"
            );
        }
    }
    assert_eq!(meshed, 5, "the fixture's meshed VPS");
    // No other workload: no purpose-wide group that would collect every entry of a purpose.
    assert_eq!(workloads.len(), meshed, "{:?}", workloads.keys());
    for w in workloads.values() {
        assert_eq!(w.entries.len(), 1, "{w:?}");
    }
}

#[test]
fn every_meshed_vps_is_a_kiali_workload_of_its_own() {
    check_fleet(&MeshTemplate::default());
}

#[test]
fn the_rule_holds_with_a_fixed_network_another_namespace_and_version() {
    check_fleet(&MeshTemplate {
        network: NetworkMode::Fixed("fleet".into()),
        namespace: "mesh-vms".into(),
        version: "v2".into(),
        ..MeshTemplate::default()
    });
}

#[test]
fn the_rule_tells_a_shared_group_from_a_per_vps_one() {
    // The rule itself, on hand-made objects: it is what makes the tests above able to fail.
    let t = MeshTemplate::default();
    let ps = purposes();
    let vs = [
        vps(1, "a", "xrayr", vec![ip("203.0.113.1", "public")]),
        vps(2, "b", "xrayr", vec![ip("203.0.113.2", "public")]),
    ];
    let s = desired_state(&t, &ps, &vs).unwrap();
    let mut objects = s.objects.clone();
    let template_group = objects
        .iter()
        .find_map(|o| match o {
            MeshObject::WorkloadGroup(g) => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    // A group per purpose selecting by app and version (sigma's former scheme) collects every
    // entry of the purpose, and no proxy reports its name.
    let mut shared = template_group.clone();
    shared.metadata.name = "xrayr".into();
    shared.spec.metadata = Some(WorkloadGroupMetadata {
        labels: BTreeMap::from([
            ("app".into(), "xrayr".into()),
            ("version".into(), "v1".into()),
        ]),
        annotations: BTreeMap::new(),
    });
    // A group without labels attaches nothing (Kiali's `selector.Empty()` guard).
    let mut bare = template_group;
    bare.metadata.name = "bare".into();
    bare.spec.metadata = None;
    objects.push(MeshObject::WorkloadGroup(shared));
    objects.push(MeshObject::WorkloadGroup(bare));
    let w = kiali_workloads(&objects, &t.namespace);
    assert_eq!(w["xrayr"].entries, vec!["vps-a", "vps-b"]);
    assert!(w["bare"].entries.is_empty());
    assert_eq!(w["vps-a"].entries, vec!["vps-a"]);
    assert_eq!(w["vps-b"].entries, vec!["vps-b"]);
    // Another namespace's entries are never attached.
    assert!(kiali_workloads(&objects, "elsewhere").is_empty());
    // The group's labels are exactly what the model says a VPS's workload carries.
    assert_eq!(
        w["vps-a"].labels,
        sigma_mesh::model::workload_group_labels("xrayr", &t, id(1))
    );
}

//! The desired-state model, the diff and the YAML export, through the public API.

mod fixtures;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use fixtures::{id, ip, purpose, rich_purposes, rich_vps, vps};
use serde_json::json;
use sigma_mesh::names::{is_dns_label, is_label_value};
use sigma_mesh::objects::*;
use sigma_mesh::{
    DesiredState, Error, Kind, MeshObject, MeshPurpose, MeshSettings, MeshTemplate, MeshVps,
    NetworkMode, SkipReason, desired_state, diff, egress_bindings, to_yaml,
};
use sigma_types::VpsStatus;

fn state(purposes: &[MeshPurpose], vps: &[MeshVps]) -> DesiredState {
    desired_state(&MeshTemplate::default(), purposes, vps).unwrap()
}

fn entries(s: &DesiredState) -> Vec<&Resource<WorkloadEntrySpec>> {
    s.objects
        .iter()
        .filter_map(|o| match o {
            MeshObject::WorkloadEntry(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn find<'a>(s: &'a DesiredState, kind: Kind, name: &str) -> &'a MeshObject {
    s.objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}: {:?}", keys(s)))
}

fn keys(s: &DesiredState) -> Vec<String> {
    s.objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect()
}

fn web() -> MeshPurpose {
    purpose(
        "web",
        json!({"enabled": true, "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}]}),
    )
}

/// The WorkloadGroup of VPS `n` (the one whose workload labels carry its id).
fn group_of(s: &DesiredState, n: u128) -> &Resource<WorkloadGroupSpec> {
    s.objects
        .iter()
        .find_map(|o| match o {
            MeshObject::WorkloadGroup(r)
                if r.spec
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.get(VPS_ID_LABEL))
                    == Some(&id(n).to_string()) =>
            {
                Some(r)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no group for VPS {n}: {:?}", keys(s)))
}

fn entry_of(s: &DesiredState, n: u128) -> &Resource<WorkloadEntrySpec> {
    entries(s)
        .into_iter()
        .find(|e| e.spec.labels[VPS_ID_LABEL] == id(n).to_string())
        .unwrap_or_else(|| panic!("no entry for VPS {n}: {:?}", s.skipped))
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn awkward_hostnames_become_distinct_valid_names() {
    let hosts = [
        "node1",
        "NODE1",
        "Node1",
        "node1.example.com",
        "node1-example-com",
        "node1_example_com",
        "node1--example.com",
        &"a".repeat(300),
        &format!("{}b", "a".repeat(299)),
        "ñandú.東京",
        "東京",
        "",
        "vps-node1",
        "-leading.trailing-",
    ];
    let vps: Vec<MeshVps> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            vps(
                i as u128 + 1,
                h,
                "web",
                vec![ip(&format!("192.0.2.{}", i + 1), "public")],
            )
        })
        .collect();
    let s = state(&[web()], &vps);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let names: BTreeSet<&str> = entries(&s)
        .iter()
        .map(|e| e.metadata.name.as_str())
        .collect();
    assert_eq!(names.len(), hosts.len(), "{names:#?}");
    for n in &names {
        assert!(is_dns_label(n), "{n}");
        assert!(n.len() <= 63);
    }
    assert!(
        names.contains("vps-node1"),
        "valid names are kept: {names:?}"
    );
    // The original hostname stays visible.
    let e = entry_of(&s, 4);
    assert_eq!(
        e.metadata.annotations[HOSTNAME_ANNOTATION],
        "node1.example.com"
    );
    assert!(
        e.metadata.name.starts_with("vps-node1-example-com--"),
        "{}",
        e.metadata.name
    );
    // Stable across runs.
    let again = state(&[web()], &vps);
    assert_eq!(s, again);
}

#[test]
fn hash_collision_of_two_hostnames_is_reported_not_merged() {
    // These two clean to the same body and share the first 32 bits of their SHA-256 (found by
    // search); only the desired-state duplicate check can tell them apart.
    let (a, b) = ("x-_--_-....y", "x_---._._-.y");
    assert_eq!(
        sigma_mesh::model::workload_entry_name(a),
        sigma_mesh::model::workload_entry_name(b)
    );
    let s = state(
        &[web()],
        &[
            vps(2, b, "web", vec![ip("192.0.2.2", "public")]),
            vps(1, a, "web", vec![ip("192.0.2.1", "public")]),
        ],
    );
    assert_eq!(entries(&s).len(), 1);
    assert_eq!(entry_of(&s, 1).metadata.annotations[HOSTNAME_ANNOTATION], a);
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].id, id(2));
    assert!(
        matches!(&s.skipped[0].reason, SkipReason::NameCollision { with, .. } if *with == id(1))
    );
}

// ---------------------------------------------------------------------------------------------
// Addresses

#[test]
fn address_selection() {
    let cases: Vec<(Vec<sigma_types::IpAddress>, Option<&str>)> = vec![
        (vec![ip("2001:db8::5", "public")], Some("2001:db8::5")),
        (vec![ip("10.0.0.5", "private")], Some("10.0.0.5")),
        (
            vec![ip("10.0.0.5", "private"), ip("203.0.113.5", "public")],
            Some("203.0.113.5"),
        ),
        (
            vec![ip("203.0.113.5", "public"), ip("10.0.0.5", "private")],
            Some("203.0.113.5"),
        ),
        (
            vec![ip("2001:db8::5", "public"), ip("203.0.113.9", "public")],
            Some("203.0.113.9"),
        ),
        (
            vec![ip("2001:db8::5", "public"), ip("10.1.1.1", "private")],
            Some("2001:db8::5"),
        ),
        // A public label cannot make an RFC 1918 address public.
        (
            vec![ip("10.0.0.5", "public"), ip("198.51.100.1", "wan")],
            Some("198.51.100.1"),
        ),
        (
            vec![ip("100.64.0.1", "public"), ip("fd00::1", "private")],
            Some("100.64.0.1"),
        ),
        (
            vec![ip("203.0.113.7", "public"), ip("203.0.113.6", "public")],
            Some("203.0.113.6"),
        ),
        (vec![ip(" 2001:DB8::7 ", "public")], Some("2001:db8::7")),
        (vec![], None),
        (vec![ip("127.0.0.1", "public"), ip("::1", "public")], None),
        (
            vec![ip("169.254.1.1", "public"), ip("fe80::1", "private")],
            None,
        ),
        (
            vec![
                ip("0.0.0.0", "public"),
                ip("224.0.0.1", "public"),
                ip("not-an-ip", "public"),
            ],
            None,
        ),
    ];
    for (ips, want) in cases {
        let got = sigma_mesh::select_address(&ips).map(|a| a.to_string());
        assert_eq!(got.as_deref(), want, "{ips:?}");
    }
}

#[test]
fn ipv6_only_private_only_and_addressless_vps() {
    let s = state(
        &[web()],
        &[
            vps(1, "v6", "web", vec![ip("2001:db8::1", "public")]),
            vps(2, "private", "web", vec![ip("192.168.1.2", "private")]),
            vps(3, "none", "web", vec![]),
            vps(4, "loop", "web", vec![ip("127.0.0.1", "public")]),
        ],
    );
    assert_eq!(entry_of(&s, 1).spec.address, "2001:db8::1");
    assert_eq!(entry_of(&s, 2).spec.address, "192.168.1.2");
    let skipped: Vec<(uuid::Uuid, &SkipReason)> =
        s.skipped.iter().map(|k| (k.id, &k.reason)).collect();
    assert_eq!(
        skipped,
        vec![
            (id(3), &SkipReason::NoUsableAddress),
            (id(4), &SkipReason::NoUsableAddress)
        ]
    );
    assert_eq!(s.skipped[0].hostname, "none");
    assert!(s.skipped[0].reason.to_string().contains("no address"));
}

// ---------------------------------------------------------------------------------------------
// Who is in the mesh

#[test]
fn only_active_enabled_not_opted_out_vps_get_entries() {
    let mut all = Vec::new();
    for (i, st) in VpsStatus::ALL.iter().enumerate() {
        let mut v = vps(
            i as u128 + 1,
            &format!("s{i}"),
            "web",
            vec![ip("192.0.2.1", "public")],
        );
        v.status = *st;
        all.push(v);
    }
    let mut opted = vps(10, "opted", "web", vec![ip("192.0.2.10", "public")]);
    opted.mesh_opt_out = true;
    all.push(opted);
    all.push(vps(11, "off", "legacy", vec![ip("192.0.2.11", "public")]));
    all.push(vps(12, "ghost", "nope", vec![ip("192.0.2.12", "public")]));
    let legacy = purpose(
        "legacy",
        json!({"enabled": false, "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}]}),
    );
    let s = state(&[web(), legacy], &all);
    let es = entries(&s);
    assert_eq!(es.len(), 1, "{:?}", keys(&s));
    assert_eq!(es[0].metadata.name, format!("vps-s{}", 1));
    assert_eq!(
        entry_of(&s, 2).metadata.annotations[HOSTNAME_ANNOTATION],
        "s1"
    );
    // Excluded VPS are not problems; a VPS whose purpose does not exist is.
    assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
    assert_eq!(
        s.skipped[0].reason,
        SkipReason::UnknownPurpose("nope".into())
    );
    // The disabled purpose produced nothing at all.
    assert!(
        s.objects.iter().all(|o| !o.name().contains("legacy")),
        "{:?}",
        keys(&s)
    );
}

#[test]
fn disabled_purposes_produce_nothing() {
    let p = purpose(
        "off",
        json!({"enabled": false, "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}],
               "egress": [{"host": "a.example.com", "port": 1, "protocol": "TCP"}]}),
    );
    let s = state(&[p], &[vps(1, "a", "off", vec![ip("192.0.2.1", "public")])]);
    assert!(s.objects.is_empty(), "{:?}", keys(&s));
    assert!(s.skipped.is_empty());
}

#[test]
fn duplicate_vps_ids_are_reported() {
    let s = state(
        &[web()],
        &[
            vps(1, "a", "web", vec![ip("192.0.2.1", "public")]),
            vps(1, "b", "web", vec![ip("192.0.2.2", "public")]),
        ],
    );
    assert_eq!(entries(&s).len(), 1);
    assert_eq!(s.skipped[0].reason, SkipReason::DuplicateId);
}

#[test]
fn bad_inputs_fail_the_whole_computation() {
    let t = MeshTemplate::default();
    let bad_settings = MeshPurpose {
        name: "web".into(),
        settings: MeshSettings {
            enabled: true,
            ports: vec![sigma_mesh::ServicePort {
                name: "Bad Name".into(),
                number: 80,
                protocol: sigma_mesh::Protocol::Http,
                target_port: None,
                mesh_port: None,
            }],
            ..Default::default()
        },
    };
    match desired_state(&t, &[bad_settings], &[]) {
        Err(Error::InvalidPurpose { purpose, errors }) => {
            assert_eq!(purpose, "web");
            assert!(errors.0.contains_key("ports[0].name"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    let bad_name = MeshPurpose {
        name: "Web".into(),
        settings: MeshSettings::default(),
    };
    assert!(matches!(
        desired_state(&t, &[bad_name], &[]),
        Err(Error::InvalidPurpose { .. })
    ));
    assert!(matches!(
        desired_state(&t, &[web(), web()], &[]),
        Err(Error::DuplicatePurpose(p)) if p == "web"
    ));
    let bad_template = MeshTemplate {
        namespace: "Not Valid".into(),
        ..MeshTemplate::default()
    };
    let err = desired_state(&bad_template, &[web()], &[]).unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Object contents

#[test]
fn workload_entry_contents() {
    let mut v = vps(
        7,
        "edge-7",
        "web",
        vec![ip("203.0.113.7", "public"), ip("10.0.0.7", "private")],
    );
    v.provider = Some("Hetzner Online GmbH".into());
    v.country = Some("BR".into());
    v.city = Some("São Paulo".into());
    let s = state(&[web()], &[v]);
    let e = entry_of(&s, 7);
    assert_eq!(e.api_version, "networking.istio.io/v1");
    assert_eq!(e.kind, "WorkloadEntry");
    assert_eq!(e.metadata.name, "vps-edge-7");
    assert_eq!(e.metadata.namespace, "sigma");
    let l = &e.spec.labels;
    assert_eq!(l["app"], "web");
    assert_eq!(l["version"], "v1");
    assert_eq!(l["country"], "BR");
    assert!(
        l["provider"].starts_with("Hetzner-Online-GmbH--"),
        "{}",
        l["provider"]
    );
    assert_eq!(l[VPS_ID_LABEL], id(7).to_string());
    assert_eq!(l[MANAGED_BY_LABEL], "sigma");
    assert_eq!(l[CANONICAL_NAME_LABEL], "web");
    assert_eq!(l[CANONICAL_REVISION_LABEL], "v1");
    for (k, val) in l {
        assert!(is_label_value(val), "{k}={val}");
    }
    assert_eq!(&e.metadata.labels, l);
    assert_eq!(e.metadata.annotations[HEALTH_CHECKS_ANNOTATION], "true");
    assert_eq!(e.metadata.annotations[MANAGED_ANNOTATION], "true");
    assert_eq!(e.spec.address, "203.0.113.7");
    assert_eq!(e.spec.locality.as_deref(), Some("br/sao-paulo"));
    assert_eq!(e.spec.service_account.as_deref(), Some("sigma-vm"));
    let net = e.spec.network.as_deref().unwrap();
    assert_eq!(net, format!("provider-{}", l["provider"]));
    assert!(is_label_value(net));
}

#[test]
fn networks_follow_override_then_template_then_provider() {
    let mut a = vps(1, "a", "web", vec![ip("192.0.2.1", "public")]);
    a.provider = Some("ovh".into());
    let mut b = vps(2, "b", "web", vec![ip("192.0.2.2", "public")]);
    b.provider = None;
    b.country = None;
    let s = state(&[web()], &[a.clone(), b.clone()]);
    assert_eq!(
        entry_of(&s, 1).spec.network.as_deref(),
        Some("provider-ovh")
    );
    assert_eq!(entry_of(&s, 2).spec.network, None);
    assert_eq!(entry_of(&s, 2).spec.locality, None);
    assert!(!entry_of(&s, 2).spec.labels.contains_key("provider"));
    assert!(!entry_of(&s, 2).spec.labels.contains_key("country"));
    let wg = group_of(&s, 1);
    assert_eq!(
        wg.spec.template.network, None,
        "per-provider networks differ per VPS"
    );

    let fixed = MeshTemplate {
        network: NetworkMode::Fixed("fleet".into()),
        ..MeshTemplate::default()
    };
    let s = desired_state(&fixed, &[web()], &[a.clone(), b.clone()]).unwrap();
    assert_eq!(entry_of(&s, 1).spec.network.as_deref(), Some("fleet"));
    assert_eq!(entry_of(&s, 2).spec.network.as_deref(), Some("fleet"));
    let wg = group_of(&s, 2);
    assert_eq!(wg.spec.template.network.as_deref(), Some("fleet"));

    let over = purpose("web", json!({"enabled": true, "network": "overlay"}));
    let s = desired_state(&fixed, &[over], &[a, b]).unwrap();
    assert_eq!(entry_of(&s, 1).spec.network.as_deref(), Some("overlay"));
}

#[test]
fn workload_group_contents() {
    let s = state(&rich_purposes(), &rich_vps());
    // One group per VPS, named like its entry; none for the purposes themselves.
    let groups: Vec<&str> = s
        .objects
        .iter()
        .filter(|o| o.kind() == Kind::WorkloadGroup)
        .map(MeshObject::name)
        .collect();
    let mut names: Vec<&str> = entries(&s)
        .iter()
        .map(|e| e.metadata.name.as_str())
        .collect();
    names.sort();
    assert_eq!(groups, names);
    let wg = group_of(&s, 1);
    assert_eq!(wg.metadata.name, entry_of(&s, 1).metadata.name);
    assert_eq!(wg.metadata.labels["app"], "xrayr");
    assert_eq!(wg.metadata.labels["version"], "v1");
    assert_eq!(wg.metadata.labels[VPS_ID_LABEL], id(1).to_string());
    assert_eq!(wg.metadata.labels[MANAGED_BY_LABEL], "sigma");
    assert_eq!(wg.metadata.annotations[MANAGED_ANNOTATION], "true");
    assert_eq!(
        wg.metadata.annotations[HOSTNAME_ANNOTATION],
        "node-1.example.com"
    );
    let md = wg.spec.metadata.as_ref().unwrap();
    assert_eq!(
        md.labels,
        BTreeMap::from([
            ("app".into(), "xrayr".into()),
            ("version".into(), "v1".into()),
            (CANONICAL_NAME_LABEL.into(), "xrayr".into()),
            (CANONICAL_REVISION_LABEL.into(), "v1".into()),
            (VPS_ID_LABEL.into(), id(1).to_string()),
        ])
    );
    // The template is the purpose's: the same for every VPS of it.
    assert_eq!(wg.spec.template, group_of(&s, 2).spec.template);
    assert_eq!(wg.spec.probe, group_of(&s, 2).spec.probe);
    assert_eq!(
        wg.spec.template.service_account.as_deref(),
        Some("sigma-vm")
    );
    assert_eq!(wg.spec.template.address, "");
    // Healthy exactly when the agent is.
    let probe = wg.spec.probe.as_ref().unwrap();
    assert_eq!(
        probe.http_get,
        Some(HttpGetAction {
            path: "/healthz".into(),
            port: 9102
        })
    );
    assert_eq!(probe.tcp_socket, None);

    let wg = group_of(&s, 3);
    assert_eq!(
        wg.spec.template.service_account.as_deref(),
        Some("vpn.exit")
    );
    assert_eq!(wg.spec.template.network.as_deref(), Some("overlay"));
    let probe = wg.spec.probe.as_ref().unwrap();
    assert_eq!(probe.tcp_socket, Some(TcpSocketAction { port: 7443 }));
    assert_eq!(probe.http_get, None);

    let wg = group_of(&s, 4);
    assert_eq!(
        wg.spec.probe.as_ref().unwrap().http_get,
        Some(HttpGetAction {
            path: "/ready".into(),
            port: 8080
        })
    );

    let custom = MeshTemplate {
        health_port: 9200,
        health_path: "/live".into(),
        version: "v2".into(),
        service_account: "fleet".into(),
        namespace: "mesh-vms".into(),
        ..MeshTemplate::default()
    };
    let s = desired_state(
        &custom,
        &[web()],
        &[vps(1, "a", "web", vec![ip("192.0.2.1", "public")])],
    )
    .unwrap();
    let wg = group_of(&s, 1);
    assert_eq!(
        wg.spec.probe.as_ref().unwrap().http_get,
        Some(HttpGetAction {
            path: "/live".into(),
            port: 9200
        })
    );
    assert_eq!(wg.spec.template.service_account.as_deref(), Some("fleet"));
    assert_eq!(wg.metadata.labels["version"], "v2");
    assert_eq!(entry_of(&s, 1).spec.labels[CANONICAL_REVISION_LABEL], "v2");
    assert!(
        s.objects
            .iter()
            .all(|o| o.metadata().namespace == "mesh-vms")
    );
}

#[test]
fn service_entries() {
    let s = state(&rich_purposes(), &rich_vps());
    let MeshObject::ServiceEntry(se) = find(&s, Kind::ServiceEntry, "xrayr") else {
        unreachable!()
    };
    assert_eq!(se.spec.hosts, vec!["xrayr.sigma.mesh".to_string()]);
    assert_eq!(se.spec.location, Some(Location::MeshInternal));
    assert_eq!(se.spec.resolution, Some(Resolution::Static));
    assert_eq!(
        se.spec.workload_selector.as_ref().unwrap().labels["app"],
        "xrayr"
    );
    let ports: Vec<(u32, &str, &str, Option<u32>)> = se
        .spec
        .ports
        .iter()
        .map(|p| {
            (
                p.number,
                p.name.as_str(),
                p.protocol.as_str(),
                p.target_port,
            )
        })
        .collect();
    // Clients call the service port; the endpoint port is the VPS's ingress listener (sigma's
    // default mesh ports for these names), never the application's own port.
    assert_eq!(
        ports,
        vec![
            (443, "vless", "TCP", Some(15379)),
            (9100, "metrics", "HTTP", Some(15879))
        ]
    );
    // Purposes that serve nothing publish nothing: Istio needs ports on a ServiceEntry.
    let ses: Vec<&str> = s
        .objects
        .iter()
        .filter(|o| o.kind() == Kind::ServiceEntry)
        .map(MeshObject::name)
        .collect();
    assert_eq!(ses, vec!["vpn-exit", "xrayr"]);
}

#[test]
fn sidecars_and_destination_rules() {
    let s = state(&rich_purposes(), &rich_vps());
    let MeshObject::Sidecar(sc) = find(&s, Kind::Sidecar, "xrayr") else {
        unreachable!()
    };
    assert_eq!(
        sc.spec.workload_selector.as_ref().unwrap().labels["app"],
        "xrayr"
    );
    assert_eq!(
        sc.spec.outbound_traffic_policy.as_ref().unwrap().mode,
        Some(OutboundMode::RegistryOnly)
    );
    let ls = &sc.spec.egress;
    assert_eq!(ls.len(), 3);
    for l in ls {
        assert_eq!(l.capture_mode, Some(CaptureMode::None));
        assert_eq!(l.hosts.len(), 1);
        assert!(l.hosts[0].starts_with("*/"));
        let b: Ipv4Addr = l.bind.as_ref().unwrap().parse().unwrap();
        assert_eq!(b.octets()[0], 127);
        assert_ne!(b, Ipv4Addr::new(127, 0, 0, 1));
    }
    let by_host = |h: &str| -> Vec<&EgressListener> {
        ls.iter()
            .filter(|l| l.hosts[0] == format!("*/{h}"))
            .collect()
    };
    let xb = by_host("xboard.sigma.svc.cluster.local");
    assert_eq!(xb.len(), 2);
    assert_eq!(xb[0].bind, xb[1].bind, "one host, one address");
    let names: Vec<&str> = xb
        .iter()
        .map(|l| l.port.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, vec!["http-80", "https-443"]);
    let redis = by_host("redis.sigma.svc.cluster.local");
    assert_eq!(
        redis[0].bind.as_deref(),
        Some("127.0.0.7"),
        "explicit bind wins"
    );
    assert_eq!(
        redis[0].port,
        Some(SidecarPort {
            number: 6379,
            protocol: "Redis".into(),
            name: "redis-6379".into()
        })
    );

    // The same host gets the same address in another purpose.
    let MeshObject::Sidecar(scr) = find(&s, Kind::Sidecar, "scraper") else {
        unreachable!()
    };
    assert_eq!(scr.spec.egress[0].bind, xb[0].bind);

    // A purpose that calls nothing imports nothing.
    let MeshObject::Sidecar(idle) = find(&s, Kind::Sidecar, "idle") else {
        unreachable!()
    };
    assert_eq!(idle.spec.egress.len(), 1);
    assert_eq!(idle.spec.egress[0].hosts, vec!["~/*".to_string()]);
    assert_eq!(idle.spec.egress[0].port, None);

    // One DestinationRule per called host, across purposes.
    let drs: Vec<&Resource<DestinationRuleSpec>> = s
        .objects
        .iter()
        .filter_map(|o| match o {
            MeshObject::DestinationRule(r) => Some(r),
            _ => None,
        })
        .collect();
    let hosts: Vec<&str> = drs.iter().map(|d| d.spec.host.as_str()).collect();
    assert_eq!(
        hosts,
        vec![
            "redis.sigma.svc.cluster.local",
            "xboard.sigma.svc.cluster.local"
        ]
    );
    for d in drs {
        assert_eq!(
            d.spec
                .traffic_policy
                .as_ref()
                .unwrap()
                .tls
                .as_ref()
                .unwrap()
                .mode,
            Some(TlsMode::IstioMutual)
        );
        assert!(d.metadata.name.ends_with("-mtls"), "{}", d.metadata.name);
        assert!(is_dns_label(&d.metadata.name));
        assert_eq!(d.spec.export_to, vec![".".to_string()]);
    }
}

/// Every served port is one ingress listener of the purpose's Sidecar, and the ServiceEntry's
/// `targetPort` and each WorkloadEntry's `ports` name that listener's port.
fn assert_served_through_ingress(s: &DesiredState, purpose: &str, vps: &[u128]) {
    let MeshObject::Sidecar(sc) = find(s, Kind::Sidecar, purpose) else {
        unreachable!()
    };
    let MeshObject::ServiceEntry(se) = find(s, Kind::ServiceEntry, purpose) else {
        unreachable!()
    };
    let served: Vec<&ServiceEntryPort> = se
        .spec
        .ports
        .iter()
        .filter(|p| p.protocol != "UDP")
        .collect();
    assert_eq!(sc.spec.ingress.len(), served.len(), "{purpose}");
    for p in served {
        let mesh_port = p.target_port.expect("targetPort");
        assert_ne!(mesh_port, p.number, "{purpose}/{}", p.name);
        let l = sc
            .spec
            .ingress
            .iter()
            .find(|l| l.port.name == p.name)
            .unwrap_or_else(|| panic!("no ingress listener for {}", p.name));
        assert_eq!(l.port.number, mesh_port);
        assert_eq!(l.port.protocol, p.protocol);
        assert_eq!(l.capture_mode, Some(CaptureMode::None));
        assert_eq!(l.bind, None, "istiod binds the VPS's own address");
        let app: u32 = l
            .default_endpoint
            .as_deref()
            .and_then(|e| e.strip_prefix("127.0.0.1:"))
            .expect("loopback endpoint")
            .parse()
            .unwrap();
        assert_ne!(app, mesh_port);
        for n in vps {
            assert_eq!(entry_of(s, *n).spec.ports[&p.name], mesh_port, "VPS {n}");
        }
    }
    for n in vps {
        assert_eq!(entry_of(s, *n).spec.ports.len(), sc.spec.ingress.len());
    }
}

#[test]
fn served_ports_get_ingress_listeners_merged_into_the_one_sidecar() {
    let s = state(&rich_purposes(), &rich_vps());
    // With egress: one Sidecar holds both the three egress listeners and the two ingress ones.
    assert_served_through_ingress(&s, "xrayr", &[1, 2]);
    let MeshObject::Sidecar(x) = find(&s, Kind::Sidecar, "xrayr") else {
        unreachable!()
    };
    assert_eq!(x.spec.egress.len(), 3);
    let endpoints: Vec<(&str, &str)> = x
        .spec
        .ingress
        .iter()
        .map(|l| (l.port.name.as_str(), l.default_endpoint.as_deref().unwrap()))
        .collect();
    assert_eq!(
        endpoints,
        vec![("vless", "127.0.0.1:443"), ("metrics", "127.0.0.1:19100")]
    );
    // Without egress: still one Sidecar, importing nothing, with the ingress listener.
    assert_served_through_ingress(&s, "vpn-exit", &[3]);
    let MeshObject::Sidecar(v) = find(&s, Kind::Sidecar, "vpn-exit") else {
        unreachable!()
    };
    assert_eq!(v.spec.egress.len(), 1);
    assert_eq!(v.spec.egress[0].hosts, vec!["~/*".to_string()]);
    // A purpose serving nothing gets no ingress and its entries no ports.
    let MeshObject::Sidecar(c) = find(&s, Kind::Sidecar, "scraper") else {
        unreachable!()
    };
    assert!(c.spec.ingress.is_empty());
    assert!(entry_of(&s, 4).spec.ports.is_empty());
    // One Sidecar per purpose, whatever it serves or calls.
    let sidecars = s
        .objects
        .iter()
        .filter(|o| o.kind() == Kind::Sidecar)
        .count();
    assert_eq!(sidecars, 4);
    // WorkloadGroup templates carry no ports.
    assert!(group_of(&s, 1).spec.template.ports.is_empty());
}

#[test]
fn explicit_mesh_ports_and_udp_ports() {
    let p = purpose(
        "edge",
        json!({"enabled": true, "ports": [
            {"name": "tcp-vpn", "number": 8443, "protocol": "TCP", "mesh_port": 18443},
            {"name": "dns", "number": 53, "protocol": "UDP", "target_port": 5353},
            {"name": "web", "number": 80, "protocol": "HTTP", "target_port": 8080}
        ]}),
    );
    let s = state(
        &[p],
        &[vps(1, "e1", "edge", vec![ip("203.0.113.1", "public")])],
    );
    assert_served_through_ingress(&s, "edge", &[1]);
    let MeshObject::ServiceEntry(se) = find(&s, Kind::ServiceEntry, "edge") else {
        unreachable!()
    };
    let by_name = |n: &str| se.spec.ports.iter().find(|p| p.name == n).unwrap();
    assert_eq!(by_name("tcp-vpn").number, 8443);
    assert_eq!(by_name("tcp-vpn").target_port, Some(18443));
    // Envoy carries no UDP: that port keeps pointing at the application.
    assert_eq!(by_name("dns").target_port, Some(5353));
    assert!(!entry_of(&s, 1).spec.ports.contains_key("dns"));
    let web = by_name("web").target_port.unwrap();
    assert!((15100..=16099).contains(&web), "{web}");
}

#[test]
fn an_explicit_mesh_port_on_a_moved_health_port_fails_the_purpose() {
    let t = MeshTemplate {
        health_port: 19000,
        ..MeshTemplate::default()
    };
    let p = purpose(
        "edge",
        json!({"enabled": true, "ports": [{"name": "a", "number": 8443, "protocol": "TCP", "mesh_port": 19000}]}),
    );
    match desired_state(&t, &[p], &[]) {
        Err(Error::InvalidPurpose { purpose, errors }) => {
            assert_eq!(purpose, "edge");
            assert!(errors.0.contains_key("ports[0].mesh_port"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn egress_binds_do_not_move_when_entries_are_added_or_removed() {
    let hosts: Vec<String> = (0..40)
        .map(|i| format!("svc{i}.sigma.svc.cluster.local"))
        .collect();
    let settings = |hs: &[&String]| -> MeshSettings {
        let egress: Vec<serde_json::Value> = hs
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"host": h, "port": 1000 + i, "protocol": "TCP"}))
            .collect();
        MeshSettings::from_json(&json!({"enabled": true, "egress": egress})).unwrap()
    };
    let binds = |s: &MeshSettings| -> BTreeMap<String, Ipv4Addr> {
        egress_bindings(s)
            .into_iter()
            .map(|b| (b.host, b.bind))
            .collect()
    };
    let base: Vec<&String> = hosts[..30].iter().collect();
    let before = binds(&settings(&base));
    assert_eq!(before.len(), 30);
    let distinct: BTreeSet<&Ipv4Addr> = before.values().collect();
    assert_eq!(distinct.len(), 30, "every host has its own address");

    // New entries at the front, in the middle and at the end.
    let mut grown: Vec<&String> = vec![&hosts[35]];
    grown.extend(&base[..10]);
    grown.extend(&hosts[30..35]);
    grown.extend(&base[10..]);
    grown.push(&hosts[39]);
    let after = binds(&settings(&grown));
    for (h, b) in &before {
        assert_eq!(after[h], *b, "{h} moved");
    }
    // Removing entries and reversing the list moves nothing either.
    let mut shrunk: Vec<&String> = base.iter().copied().step_by(2).collect();
    shrunk.reverse();
    let after = binds(&settings(&shrunk));
    for (h, b) in &after {
        assert_eq!(before[h], *b, "{h} moved");
    }
}

#[test]
fn explicit_bind_that_equals_a_hashed_address_pushes_the_hashed_host_aside() {
    let auto = MeshSettings::from_json(
        &json!({"egress": [{"host": "a.example.com", "port": 1, "protocol": "TCP"}]}),
    )
    .unwrap();
    let taken = egress_bindings(&auto)[0].bind;
    let s = MeshSettings::from_json(&json!({"egress": [
        {"host": "a.example.com", "port": 1, "protocol": "TCP"},
        {"host": "b.example.com", "port": 2, "protocol": "TCP", "bind": taken.to_string()}
    ]}))
    .unwrap();
    let b = egress_bindings(&s);
    assert_eq!(b[1].bind, taken);
    assert_ne!(b[0].bind, taken);
}

#[test]
fn every_object_is_managed_and_sorted() {
    let s = state(&rich_purposes(), &rich_vps());
    assert!(s.objects.iter().all(MeshObject::is_managed));
    assert!(
        s.objects
            .iter()
            .all(|o| o.metadata().annotations[MANAGED_ANNOTATION] == "true")
    );
    let order: Vec<(Kind, &str)> = s.objects.iter().map(|o| (o.kind(), o.name())).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    for o in &s.objects {
        sigma_mesh::check_object(o).unwrap();
    }
}

#[test]
fn input_order_does_not_matter() {
    let a = state(&rich_purposes(), &rich_vps());
    let mut p = rich_purposes();
    p.reverse();
    let mut v = rich_vps();
    v.reverse();
    for x in &mut v {
        x.ip_addresses.reverse();
    }
    let b = state(&p, &v);
    assert_eq!(a, b);
    assert_eq!(to_yaml(&a.objects).unwrap(), to_yaml(&b.objects).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Diff

fn fleet(n: u128) -> (Vec<MeshPurpose>, Vec<MeshVps>) {
    let vps = (1..=n)
        .map(|i| {
            vps(
                i,
                &format!("n{i}"),
                "web",
                vec![ip(&format!("198.51.100.{}", i % 250 + 1), "public")],
            )
        })
        .collect();
    (vec![web()], vps)
}

#[test]
fn steady_state_needs_no_writes() {
    let (p, v) = fleet(50);
    let d = state(&p, &v).objects;
    let plan = diff(&d, &d);
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(plan.writes(), 0);
}

#[test]
fn first_run_creates_everything() {
    let (p, v) = fleet(5);
    let d = state(&p, &v).objects;
    let plan = diff(&d, &[]);
    assert_eq!(plan.apply, d);
    assert!(plan.delete.is_empty());
}

#[test]
fn changes_and_removals_are_planned() {
    let (p, mut v) = fleet(5);
    let before = state(&p, &v).objects;
    v[0].ip_addresses = vec![ip("203.0.113.99", "public")];
    v[1].provider = None;
    v.remove(4);
    let after = state(&p, &v).objects;
    let plan = diff(&after, &before);
    // An address or provider change rewrites the entry only: the group holds the purpose's
    // template and labels that never change for a VPS.
    let applied: Vec<(Kind, &str)> = plan.apply.iter().map(|o| (o.kind(), o.name())).collect();
    assert_eq!(
        applied,
        vec![
            (Kind::WorkloadEntry, "vps-n1"),
            (Kind::WorkloadEntry, "vps-n2")
        ]
    );
    // A VPS leaving takes its group with its entry.
    let deleted: Vec<(Kind, &str)> = plan
        .delete
        .iter()
        .map(|k| (k.kind, k.name.as_str()))
        .collect();
    assert_eq!(
        deleted,
        vec![
            (Kind::WorkloadGroup, "vps-n5"),
            (Kind::WorkloadEntry, "vps-n5")
        ]
    );
    // Applying the plan converges.
    let mut actual: Vec<MeshObject> = before
        .into_iter()
        .filter(|o| {
            !plan.delete.contains(&o.key()) && !plan.apply.iter().any(|a| a.key() == o.key())
        })
        .collect();
    actual.extend(plan.apply.iter().cloned());
    assert!(diff(&after, &actual).is_empty());
}

#[test]
fn unmanaged_objects_are_never_deleted_or_overwritten() {
    let (p, v) = fleet(2);
    let d = state(&p, &v).objects;
    let mut actual = d.clone();
    // A hand-made object with no managed-by label, and one that squats a desired name.
    let mut foreign = d[0].clone();
    foreign.metadata_mut().name = "hand-made".into();
    foreign.metadata_mut().labels.remove(MANAGED_BY_LABEL);
    actual.push(foreign);
    let squat_key = actual[1].key();
    actual[1]
        .metadata_mut()
        .labels
        .insert(MANAGED_BY_LABEL.into(), "helm".into());
    let plan = diff(&d, &actual);
    assert!(plan.delete.is_empty(), "{plan:?}");
    assert!(plan.apply.is_empty(), "{plan:?}");
    assert_eq!(plan.conflicts, vec![squat_key]);
    // An obsolete sigma object is deleted, an obsolete foreign one is not.
    let plan = diff(&[], &actual);
    assert_eq!(plan.delete.len(), d.len() - 1);
}

#[test]
fn foreign_labels_are_ignored_but_owned_ones_are_enforced() {
    let (p, v) = fleet(1);
    let d = state(&p, &v).objects;
    let mut actual = d.clone();
    for o in &mut actual {
        let m = o.metadata_mut();
        m.labels
            .insert("argocd.argoproj.io/instance".into(), "mesh".into());
        m.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
    }
    assert!(diff(&d, &actual).is_empty());

    // A label sigma owns but no longer sets (e.g. the VPS lost its provider) is stale.
    let we = actual
        .iter_mut()
        .find(|o| o.kind() == Kind::WorkloadEntry)
        .unwrap();
    we.metadata_mut()
        .labels
        .insert("country".into(), "XX".into());
    let plan = diff(&d, &actual);
    assert_eq!(plan.apply.len(), 1);
    assert_eq!(plan.apply[0].kind(), Kind::WorkloadEntry);
}

#[test]
fn spec_drift_is_corrected_but_unmodelled_fields_are_ignored() {
    let (p, v) = fleet(1);
    let d = state(&p, &v).objects;
    let we = d.iter().find(|o| o.kind() == Kind::WorkloadEntry).unwrap();
    let mut json = serde_json::to_value(we).unwrap();
    // What the API server returns: server fields, status, a weight set by someone else.
    json["metadata"]["uid"] = json!("0b5c");
    json["metadata"]["resourceVersion"] = json!("42");
    json["metadata"]["managedFields"] = json!([{"manager": "sigma"}]);
    json["spec"]["weight"] = json!(3);
    json["status"] = json!({"conditions": [{"type": "Healthy", "status": "True"}]});
    let decoded = MeshObject::from_json(json.clone()).unwrap();
    assert!(diff(std::slice::from_ref(we), std::slice::from_ref(&decoded)).is_empty());

    json["spec"]["address"] = json!("192.0.2.200");
    let drifted = MeshObject::from_json(json).unwrap();
    let plan = diff(std::slice::from_ref(we), &[drifted]);
    assert_eq!(plan.apply, vec![we.clone()]);
}

#[test]
fn moving_the_namespace_deletes_the_old_objects() {
    let (p, v) = fleet(1);
    let old = state(&p, &v).objects;
    let t = MeshTemplate {
        namespace: "mesh2".into(),
        ..MeshTemplate::default()
    };
    let new = desired_state(&t, &p, &v).unwrap().objects;
    let plan = diff(&new, &old);
    assert_eq!(plan.apply.len(), new.len());
    assert_eq!(plan.delete.len(), old.len());
    assert!(plan.delete.iter().all(|k| k.namespace == "sigma"));
}

#[test]
fn decoding_rejects_what_sigma_does_not_manage() {
    assert!(matches!(
        MeshObject::from_json(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}, "spec": {}})
        ),
        Err(Error::UnsupportedObject(_))
    ));
    assert!(matches!(
        MeshObject::from_json(
            json!({"apiVersion": "v1", "kind": "Sidecar", "metadata": {"name": "x"}, "spec": {}})
        ),
        Err(Error::UnsupportedObject(_))
    ));
    assert!(matches!(
        MeshObject::from_json(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "x"}, "spec": {"hosts": "a"}})
        ),
        Err(Error::Decode {
            kind: Kind::ServiceEntry,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// YAML

#[test]
fn yaml_is_deterministic_and_sorted() {
    let s = state(&rich_purposes(), &rich_vps());
    let mut shuffled = s.objects.clone();
    shuffled.reverse();
    let a = to_yaml(&s.objects).unwrap();
    let b = to_yaml(&shuffled).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.matches("---\n").count(), s.objects.len());
    let kinds: Vec<&str> = a.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    let mut expected: Vec<&str> = s.objects.iter().map(|o| o.kind().as_str()).collect();
    expected.dedup();
    let mut seen = kinds.clone();
    seen.dedup();
    assert_eq!(seen, expected);
    assert!(
        a.starts_with("---\napiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n"),
        "{a}"
    );
}

#[test]
fn yaml_matches_the_golden_export() {
    let s = state(&rich_purposes(), &rich_vps());
    let yaml = to_yaml(&s.objects).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/rich.yaml");
    if std::env::var_os("SIGMA_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &yaml).unwrap();
    }
    let golden =
        std::fs::read_to_string(&path).expect("golden file (SIGMA_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        yaml, golden,
        "export changed; review and rerun with SIGMA_UPDATE_GOLDEN=1"
    );
}

#[test]
fn diff_does_not_depend_on_listing_order() {
    let (p, v) = fleet(30);
    let d = state(&p, &v).objects;
    let mut actual = d.clone();
    actual.reverse();
    actual.swap(3, 17);
    assert!(diff(&d, &actual).is_empty());
    let mut desired = d.clone();
    desired.rotate_left(7);
    let plan = diff(&desired, &actual[5..]);
    let mut want: Vec<ObjectKey> = actual[..5].iter().map(MeshObject::key).collect();
    want.sort();
    let got: Vec<ObjectKey> = plan.apply.iter().map(MeshObject::key).collect();
    assert_eq!(got, want, "apply comes out sorted");
}

#[test]
fn public_network_helper_matches_the_entries() {
    let mut v = vps(1, "a", "web", vec![ip("192.0.2.1", "public")]);
    v.provider = Some(" Vultr LLC ".into());
    let s = state(&[web()], std::slice::from_ref(&v));
    let t = MeshTemplate::default();
    assert_eq!(
        entry_of(&s, 1).spec.network,
        sigma_mesh::model::vps_network(&t, &web().settings, v.provider.as_deref())
    );
}

#[test]
fn norway_stays_a_string_for_yaml_1_1_readers() {
    // Kubernetes reads YAML 1.1, where a plain NO is the boolean false.
    let mut v = vps(1, "oslo-1", "web", vec![ip("192.0.2.1", "public")]);
    v.country = Some("NO".into());
    v.provider = Some("yes".into());
    let s = state(&[web()], &[v]);
    let yaml = to_yaml(&s.objects).unwrap();
    assert!(yaml.contains("    country: \"NO\"\n"), "{yaml}");
    assert!(yaml.contains("    provider: \"yes\"\n"), "{yaml}");
    assert!(yaml.contains("  address: \"192.0.2.1\"\n"), "{yaml}");
    assert!(
        !yaml.contains(": NO\n") && !yaml.contains(": yes\n"),
        "{yaml}"
    );
}

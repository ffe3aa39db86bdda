//! Envoy routes of meshed VPS rendered as Istio configuration, through the public API.

mod fixtures;

use std::collections::BTreeMap;

use fixtures::{
    id, ip, purpose, rich_purposes, rich_routes, rich_vps, route, to_backend, to_pool, to_vps, vps,
};
use serde_json::json;
use sigma_mesh::model::workload_entry_name;
use sigma_mesh::objects::*;
use sigma_mesh::{
    DesiredState, Kind, MeshObject, MeshPurpose, MeshTemplate, MeshVps, Placement, RouteIssue,
    desired_state, desired_state_with_routes, diff, plan_routes,
};
use sigma_types::{ClusterType, EnvoyRoute, ProxyProtocol};

fn state(routes: &[EnvoyRoute]) -> DesiredState {
    desired_state_with_routes(
        &MeshTemplate::default(),
        &rich_purposes(),
        &rich_vps(),
        routes,
    )
    .unwrap()
}

fn find<'a>(s: &'a DesiredState, kind: Kind, name: &str) -> Option<&'a MeshObject> {
    s.objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
}

fn sidecar<'a>(s: &'a DesiredState, name: &str) -> &'a SidecarSpec {
    match find(s, Kind::Sidecar, name) {
        Some(MeshObject::Sidecar(r)) => &r.spec,
        _ => panic!("no Sidecar {name}: {:?}", names(s, Kind::Sidecar)),
    }
}

fn names(s: &DesiredState, kind: Kind) -> Vec<&str> {
    s.objects
        .iter()
        .filter(|o| o.kind() == kind)
        .map(MeshObject::name)
        .collect()
}

fn entry_port(s: &DesiredState, entry: &str, port: &str) -> u32 {
    match find(s, Kind::WorkloadEntry, entry) {
        Some(MeshObject::WorkloadEntry(r)) => r.spec.ports[port],
        _ => panic!("no entry {entry}"),
    }
}

fn issues(s: &DesiredState, n: u128) -> Vec<RouteIssue> {
    let r = s
        .routes
        .iter()
        .find(|r| r.route_id == id(1000 + n))
        .unwrap_or_else(|| panic!("route {n} not placed: {:?}", s.routes));
    match &r.placement {
        Placement::NotCarried(i) => i.clone(),
        other => panic!("route {n} is {other:?}"),
    }
}

fn relay() -> String {
    workload_entry_name("node-1.example.com")
}

#[test]
fn a_relay_to_a_vps_listens_on_its_public_address_and_sends_mtls_to_the_targets_ingress() {
    let s = state(&rich_routes());
    let relay_entry = relay();
    let exit_entry = names(&s, Kind::WorkloadEntry)
        .into_iter()
        .find(|n| n.starts_with("vps-aaaa"))
        .unwrap()
        .to_string();
    let host = format!("route-8443.{relay_entry}.sigma.mesh");
    let name = format!("route-8443-{relay_entry}");
    let MeshObject::ServiceEntry(se) = find(&s, Kind::ServiceEntry, &name).unwrap() else {
        unreachable!()
    };
    assert_eq!(se.spec.hosts, vec![host.clone()]);
    assert_eq!(se.spec.location, Some(Location::MeshInternal));
    assert_eq!(se.spec.resolution, Some(Resolution::Static));
    let mesh_port = entry_port(&s, &exit_entry, "grpc-ctl");
    assert_eq!(
        se.spec.ports,
        vec![ServiceEntryPort {
            number: 8443,
            protocol: "TCP".into(),
            // Named like the exit's port, so the endpoint is its ingress listener.
            name: "grpc-ctl".into(),
            target_port: Some(mesh_port),
        }]
    );
    assert_eq!(
        se.spec.workload_selector.as_ref().unwrap().labels,
        BTreeMap::from([(VPS_ID_LABEL.to_string(), id(3).to_string())])
    );
    assert_eq!(se.spec.export_to, vec!["."]);
    assert_eq!(
        se.metadata.annotations[ROUTE_ANNOTATION],
        id(1001).to_string()
    );
    assert_eq!(se.metadata.labels[VPS_ID_LABEL], id(1).to_string());

    let MeshObject::DestinationRule(dr) = find(&s, Kind::DestinationRule, &name).unwrap() else {
        unreachable!()
    };
    assert_eq!(dr.spec.host, host);
    let tp = dr.spec.traffic_policy.as_ref().unwrap();
    assert_eq!(tp.tls.as_ref().unwrap().mode, Some(TlsMode::IstioMutual));
    assert_eq!(
        tp.connection_pool
            .as_ref()
            .unwrap()
            .tcp
            .as_ref()
            .unwrap()
            .connect_timeout
            .as_deref(),
        Some("5000ms")
    );
    assert_eq!(tp.proxy_protocol, None);

    // One Sidecar per xrayr VPS instead of the purpose's: the relay's has the route's
    // listener on its public address, the other one only the purpose's listeners.
    assert!(
        find(&s, Kind::Sidecar, "xrayr").is_none(),
        "{:?}",
        names(&s, Kind::Sidecar)
    );
    let plain = desired_state(&MeshTemplate::default(), &rich_purposes(), &rich_vps()).unwrap();
    let purpose_sidecar = sidecar(&plain, "xrayr");
    let relay = sidecar(&s, &relay_entry);
    assert_eq!(
        relay.workload_selector.as_ref().unwrap().labels,
        BTreeMap::from([(VPS_ID_LABEL.to_string(), id(1).to_string())])
    );
    assert_eq!(relay.ingress, purpose_sidecar.ingress);
    let (own, purpose_egress): (Vec<_>, Vec<_>) = relay
        .egress
        .iter()
        .partition(|l| l.bind.as_deref() == Some("203.0.113.10"));
    assert_eq!(
        own,
        vec![&EgressListener {
            port: Some(SidecarPort {
                number: 8443,
                protocol: "TCP".into(),
                name: "route-8443".into(),
            }),
            bind: Some("203.0.113.10".into()),
            capture_mode: Some(CaptureMode::None),
            hosts: vec![format!("sigma/{host}")],
        }]
    );
    assert_eq!(
        purpose_egress,
        purpose_sidecar.egress.iter().collect::<Vec<_>>()
    );
    let other = names(&s, Kind::Sidecar)
        .into_iter()
        .find(|n| n.starts_with("vps-node-2"))
        .unwrap();
    let other = sidecar(&s, other);
    assert_eq!(other.egress, purpose_sidecar.egress);
    assert_eq!(other.ingress, purpose_sidecar.ingress);
    // Purposes without routes keep their one Sidecar.
    assert_eq!(sidecar(&s, "vpn-exit"), sidecar(&plain, "vpn-exit"));
    match &s
        .routes
        .iter()
        .find(|r| r.route_id == id(1001))
        .unwrap()
        .placement
    {
        Placement::Mesh { host: h, bind } => {
            assert_eq!(h, &host);
            assert_eq!(bind.to_string(), "203.0.113.10");
        }
        p => panic!("{p:?}"),
    }
}

#[test]
fn a_pool_of_one_country_selects_the_purpose_and_country() {
    let s = state(&rich_routes());
    let MeshObject::ServiceEntry(se) =
        find(&s, Kind::ServiceEntry, "route-9443-vps-plain").unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        se.spec.workload_selector.as_ref().unwrap().labels,
        BTreeMap::from([
            ("app".to_string(), "xrayr".to_string()),
            ("country".to_string(), "DE".to_string())
        ])
    );
    assert_eq!(se.spec.ports[0].name, "vless");
    // The idle purpose (no egress: a `~/*` catch-all) drops the catch-all next to a route.
    let idle = sidecar(&s, "vps-plain");
    assert_eq!(idle.egress.len(), 1, "{:?}", idle.egress);
    assert_eq!(idle.egress[0].port.as_ref().unwrap().number, 9443);
}

#[test]
fn an_external_backend_is_plain_tcp_through_a_mesh_external_service_with_its_proxy_header() {
    let s = state(&rich_routes());
    let ext = workload_entry_name("ñandú-東京");
    let MeshObject::ServiceEntry(se) = find(&s, Kind::ServiceEntry, &format!("route-2525-{ext}"))
        .unwrap_or_else(|| panic!("{:?}", names(&s, Kind::ServiceEntry)))
    else {
        unreachable!()
    };
    assert_eq!(se.spec.location, Some(Location::MeshExternal));
    assert_eq!(se.spec.resolution, Some(Resolution::Dns));
    assert!(se.spec.workload_selector.is_none());
    assert_eq!(se.spec.endpoints.len(), 1);
    assert_eq!(se.spec.endpoints[0].address, "smtp.example.net");
    assert_eq!(se.spec.endpoints[0].ports["tcp-route"], 25);
    assert_eq!(se.spec.ports[0].number, 2525);
    assert_eq!(se.spec.ports[0].target_port, Some(25));
    let MeshObject::DestinationRule(dr) =
        find(&s, Kind::DestinationRule, &format!("route-2525-{ext}")).unwrap()
    else {
        unreachable!()
    };
    let tp = dr.spec.traffic_policy.as_ref().unwrap();
    assert_eq!(tp.tls.as_ref().unwrap().mode, Some(TlsMode::Disable));
    assert_eq!(
        tp.proxy_protocol,
        Some(ProxyProtocolSettings {
            version: Some(ProxyProtocolVersion::V2)
        })
    );
    // A static backend resolves STATIC with its IP; the disabled route makes nothing.
    let MeshObject::ServiceEntry(st) =
        find(&s, Kind::ServiceEntry, &format!("route-2527-{ext}")).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(st.spec.resolution, Some(Resolution::Static));
    assert_eq!(st.spec.endpoints[0].address, "192.0.2.98");
    assert!(find(&s, Kind::ServiceEntry, &format!("route-2526-{ext}")).is_none());
    assert!(
        s.routes.iter().all(|r| r.route_id != id(1004)),
        "{:?}",
        s.routes
    );
}

#[test]
fn what_the_mesh_cannot_carry_is_reported_per_route_and_nothing_is_rendered_for_it() {
    let mut opted_out = rich_vps();
    opted_out[4].mesh_opt_out = true; // VPS 5 ("plain")
    let mut pp = route(10, 1, 8444, to_vps(3, "grpc-ctl"));
    pp.proxy_protocol = ProxyProtocol::V1;
    let routes = vec![
        pp,
        route(11, 1, 8445, to_pool("xrayr", "vless", &["DE", "BR"])),
        route(12, 1, 8446, to_vps(5, "vless")),
        route(13, 1, 8447, to_pool("vpn-exit", "nope", &[])),
        route(
            14,
            1,
            15021,
            to_backend("192.0.2.1", 80, ClusterType::Static),
        ),
        // xrayr's egress listener for xboard is on 443.
        route(
            15,
            1,
            443,
            to_backend("192.0.2.1", 443, ClusterType::Static),
        ),
        route(16, 1, 8448, to_pool("legacy", "http", &[])),
        route(17, 1, 8449, to_vps(99, "vless")),
    ];
    let s = desired_state_with_routes(
        &MeshTemplate::default(),
        &rich_purposes(),
        &opted_out,
        &routes,
    )
    .unwrap();
    let code = |n| {
        issues(&s, n)
            .iter()
            .map(RouteIssue::code)
            .collect::<Vec<_>>()
    };
    assert_eq!(code(10), ["proxy_protocol_to_fleet"]);
    assert_eq!(code(11), ["many_countries"]);
    assert_eq!(code(12), ["target_not_meshed"]);
    assert!(
        issues(&s, 12)[0].to_string().contains("opted out"),
        "{:?}",
        issues(&s, 12)
    );
    assert_eq!(code(13), ["target_port"]);
    assert_eq!(code(14), ["reserved_port"]);
    assert_eq!(code(15), ["egress_port"]);
    assert!(issues(&s, 15)[0].to_string().contains("xboard"));
    assert_eq!(code(16), ["target_port"]);
    assert!(issues(&s, 16)[0].to_string().contains("mesh enabled"));
    assert_eq!(code(17), ["target_not_meshed"]);
    // Nothing of these routes exists, and the purpose keeps its one Sidecar.
    assert!(
        names(&s, Kind::ServiceEntry)
            .iter()
            .all(|n| !n.starts_with("route-")),
        "{:?}",
        names(&s, Kind::ServiceEntry)
    );
    assert!(find(&s, Kind::Sidecar, "xrayr").is_some());
    let plain = desired_state(&MeshTemplate::default(), &rich_purposes(), &opted_out).unwrap();
    assert_eq!(s.objects, plain.objects);
}

#[test]
fn routes_of_a_vps_outside_the_mesh_stay_classic() {
    let mut vs = rich_vps();
    vs[0].mesh_opt_out = true; // the relay
    let s = desired_state_with_routes(
        &MeshTemplate::default(),
        &rich_purposes(),
        &vs,
        &[route(1, 1, 8443, to_vps(3, "grpc-ctl"))],
    )
    .unwrap();
    assert_eq!(s.routes.len(), 1);
    assert_eq!(s.routes[0].placement, Placement::Classic);
    let plain = desired_state(&MeshTemplate::default(), &rich_purposes(), &vs).unwrap();
    assert_eq!(s.objects, plain.objects);
}

#[test]
fn gaining_and_losing_routes_moves_between_purpose_and_vps_sidecars_without_other_writes() {
    let before = desired_state(&MeshTemplate::default(), &rich_purposes(), &rich_vps()).unwrap();
    let after = state(&[route(1, 1, 8443, to_vps(3, "grpc-ctl"))]);
    let plan = diff(&after.objects, &before.objects);
    let applied: Vec<String> = plan.apply.iter().map(|o| o.key().to_string()).collect();
    let deleted: Vec<String> = plan.delete.iter().map(|k| k.to_string()).collect();
    // The route's two objects and one Sidecar per xrayr VPS; the purpose's Sidecar goes (the
    // reconciler applies before it deletes, so no VPS is ever without a Sidecar).
    assert_eq!(applied.len(), 4, "{applied:?}");
    assert_eq!(deleted, ["Sidecar/sigma/xrayr"]);
    assert!(diff(&after.objects, &after.objects).is_empty());
    let back = diff(&before.objects, &after.objects);
    assert_eq!(back.apply.len(), 1);
    assert_eq!(back.delete.len(), 4);
    // The same inventory gives the same objects (steady state: no writes).
    assert_eq!(
        state(&[route(1, 1, 8443, to_vps(3, "grpc-ctl"))]).objects,
        after.objects
    );
}

#[test]
fn a_plan_for_mesh_mode_judges_a_vps_that_is_not_meshed_yet() {
    let purposes: Vec<MeshPurpose> = vec![
        purpose("relay", json!({"enabled": false})),
        purpose(
            "exit",
            json!({"enabled": true, "ports": [{"name": "vpn", "number": 51820, "protocol": "TCP"}]}),
        ),
    ];
    let vs: Vec<MeshVps> = vec![
        vps(1, "relay-1", "relay", vec![ip("203.0.113.1", "public")]),
        vps(2, "exit-1", "exit", vec![ip("203.0.113.2", "public")]),
    ];
    let routes = vec![route(1, 1, 443, to_vps(2, "vpn"))];
    let t = MeshTemplate::default();
    let now = plan_routes(&t, &purposes, &vs, &routes, false).unwrap();
    assert_eq!(now[0].placement, Placement::Classic);
    let mesh = plan_routes(&t, &purposes, &vs, &routes, true).unwrap();
    let Placement::NotCarried(i) = &mesh[0].placement else {
        panic!("{mesh:?}")
    };
    assert_eq!(i[0].code(), "vps_not_meshed");
    assert!(i[0].to_string().contains("\"relay\""), "{}", i[0]);
    // With the relay's purpose in the mesh the same route is carried.
    let mut purposes = purposes;
    purposes[0] = purpose("relay", json!({"enabled": true}));
    let mesh = plan_routes(&t, &purposes, &vs, &routes, true).unwrap();
    assert_eq!(
        mesh[0].placement,
        Placement::Mesh {
            host: "route-443.vps-relay-1.sigma.mesh".into(),
            bind: "203.0.113.1".parse().unwrap()
        }
    );
    // plan_routes and the desired state agree.
    let s = desired_state_with_routes(&t, &purposes, &vs, &routes).unwrap();
    assert_eq!(s.routes, mesh);
}

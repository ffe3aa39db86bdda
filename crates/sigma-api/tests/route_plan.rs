//! `GET /api/vps/{id}/envoy-routes/plan` against the real sigma-api binary on SQLite and
//! PostgreSQL: where each route of a relay runs today and after a switch to mesh mode, and
//! what the mesh cannot carry, named per route.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, both_backends};

both_backends!(
    a_plan_names_what_each_route_becomes,
    a_plan_for_today_says_whether_each_listener_is_live,
    a_listener_to_a_fleet_target_is_live_at_the_served_digest
);

/// The listener state of route `name` in the plan for today's mode.
async fn live(s: &SigmaApi, vps: &str, name: &str) -> Value {
    let (st, plan) = s
        .call("GET", &format!("/api/vps/{vps}/envoy-routes/plan"), None)
        .await;
    assert_eq!(st, 200, "{plan}");
    route(&plan, name)["listener"].clone()
}

async fn a_plan_for_today_says_whether_each_listener_is_live(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let token = s.token(json!({"purpose": "vpn-relay"})).await;
    let (id, key) = s.register(&token, "relay-1", "198.51.100.1").await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/api/vps/{id}/envoy-routes"),
            Some(json!({"name": "ext", "listen_port": 2525, "backend_host": "192.0.2.9", "backend_port": 25})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // Registered, but no report of its Envoy yet.
    assert_eq!(live(&s, &id, "ext").await["state"], "unknown");
    let (st, cfg) = s
        .get("/api/agent/envoy-config?hostname=relay-1", &key)
        .await;
    assert_eq!(st, 200, "{cfg}");
    let current = cfg["version"].as_i64().unwrap();
    let beat = |applied: i64, clients: u32| {
        json!({"hostname": "relay-1", "agent_state": {
            "mode": "classic", "envoy_applied_version": applied, "xds_clients": clients}})
    };
    // Envoy holds an older version of the routes: not live, and why.
    let (st, b) = s
        .post("/api/agent/heartbeat", &key, beat(current - 1, 1))
        .await;
    assert_eq!(st, 200, "{b}");
    let l = live(&s, &id, "ext").await;
    assert_eq!(l["state"], "not_live", "{l}");
    assert!(
        l["reason"].as_str().unwrap().contains("not accepted"),
        "{l}"
    );
    // Envoy accepted the version served now.
    s.post("/api/agent/heartbeat", &key, beat(current, 1)).await;
    assert_eq!(live(&s, &id, "ext").await, json!({"state": "live"}));
    // No Envoy connected to the agent's xDS server.
    s.post("/api/agent/heartbeat", &key, beat(current, 0)).await;
    assert_eq!(live(&s, &id, "ext").await["state"], "not_live");
    // A mesh-mode agent whose report has no reading of Envoy's listeners: unknown.
    let (st, b) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": "relay-1", "agent_state": {"mode": "mesh"}}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let l = live(&s, &id, "ext").await;
    assert_eq!(l["state"], "unknown", "{l}");
    // A hostile listener report is refused whole, naming the field; nothing of it is stored.
    for (listeners, field) in [
        (
            json!({"ports": {"198.51.100.1": [993, 443]}}),
            "agent_state.mesh_state.dataplane.listeners.ports.198.51.100.1",
        ),
        (json!({"ports": {"not-an-address": [443]}}), "agent_state"),
        (
            json!({"ports": {"198.51.100.1": [443]}, "omitted": 4_000_000_000u32}),
            "agent_state.mesh_state.dataplane.listeners.omitted",
        ),
    ] {
        let (st, b) = s
            .post(
                "/api/agent/heartbeat",
                &key,
                json!({"hostname": "relay-1", "agent_state": {"mode": "mesh", "mesh_state": {
                    "state": "ready", "restarts": 0,
                    "dataplane": {"read_at": "2026-01-01T00:00:00Z", "xds": {"state": "connected"},
                                  "listeners": listeners}}}}),
            )
            .await;
        assert_eq!(st, 422, "{listeners}: {b}");
        let named = b["fields"]
            .as_object()
            .is_some_and(|f| f.keys().any(|k| k.starts_with(field)));
        assert!(named, "{field} not named: {b}");
    }
    assert_eq!(
        live(&s, &id, "ext").await["state"],
        "unknown",
        "still the last good report"
    );

    // Plans for another mode say nothing about liveness.
    let (_, plan) = s
        .call(
            "GET",
            &format!("/api/vps/{id}/envoy-routes/plan?mode=classic"),
            None,
        )
        .await;
    assert!(route(&plan, "ext").get("listener").is_none(), "{plan}");
}

/// With a fleet target the served version is a digest of the route version and the target's
/// addresses: the listener is live at that version, not at the bare route version.
async fn a_listener_to_a_fleet_target_is_live_at_the_served_digest(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let (st, v) = s
        .patch(
            "/api/purposes/vpn-exit",
            ADMIN_KEY,
            json!({"mesh": {"ports": [{"name": "vpn", "number": 443, "protocol": "TCP"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let relay_token = s.token(json!({"purpose": "vpn-relay"})).await;
    let exit_token = s.token(json!({"purpose": "vpn-exit"})).await;
    let (id, key) = s.register(&relay_token, "relay-1", "198.51.100.1").await;
    s.register(&exit_token, "exit-1", "203.0.113.1").await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/api/vps/{id}/envoy-routes"),
            Some(json!({"name": "exit", "listen_port": 443, "target": {"vps": "exit-1", "port": "vpn"}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, cfg) = s
        .get("/api/agent/envoy-config?hostname=relay-1", &key)
        .await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(
        cfg["endpoints"]["exit"].as_array().map(Vec::len),
        Some(1),
        "{cfg}"
    );
    let served = cfg["version"].as_i64().unwrap();
    let beat = |applied: i64| {
        json!({"hostname": "relay-1", "agent_state": {
            "mode": "classic", "envoy_applied_version": applied, "xds_clients": 1}})
    };
    s.post("/api/agent/heartbeat", &key, beat(served)).await;
    assert_eq!(live(&s, &id, "exit").await, json!({"state": "live"}));
    // The route version alone (what a config without targets would serve) is not it.
    let (_, vps) = s.call("GET", &format!("/api/vps/{id}"), None).await;
    let route_version = vps["envoy_version"].as_i64().unwrap();
    assert_ne!(route_version, served, "{vps}");
    s.post("/api/agent/heartbeat", &key, beat(route_version))
        .await;
    assert_eq!(live(&s, &id, "exit").await["state"], "not_live");
}

fn route<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {plan}"))
}

fn codes(r: &Value) -> Vec<&str> {
    r["issues"]
        .as_array()
        .map(|a| a.iter().map(|i| i["code"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

async fn a_plan_names_what_each_route_becomes(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, v) = s
        .patch(
            "/api/purposes/vpn-exit",
            k,
            json!({"mesh": {"enabled": true, "ports": [
                {"name": "vpn", "number": 443, "protocol": "TCP", "target_port": 1194}]}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let relay_token = s.token(json!({"purpose": "vpn-relay"})).await;
    let exit_token = s.token(json!({"purpose": "vpn-exit"})).await;
    let relay = s.register(&relay_token, "relay-1", "198.51.100.1").await.0;
    s.register(&exit_token, "exit-1", "203.0.113.1").await;
    let (st, v) = s
        .call(
            "PUT",
            &format!("/api/vps/{relay}/envoy-routes"),
            Some(json!({"routes": [
                {"name": "pool", "listen_port": 8443, "target": {"purpose": "vpn-exit", "port": "vpn"}},
                {"name": "pp", "listen_port": 8444, "proxy_protocol": "v1",
                 "target": {"vps": "exit-1", "port": "vpn"}},
                {"name": "ext", "listen_port": 2525, "backend_host": "192.0.2.9", "backend_port": 25,
                 "proxy_protocol": "v2"},
                {"name": "off", "listen_port": 2526, "backend_host": "192.0.2.9", "backend_port": 25,
                 "status": "disabled"},
            ]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let plan = |mode: &'static str| {
        let s = &s;
        let relay = relay.clone();
        async move {
            let q = if mode.is_empty() {
                String::new()
            } else {
                format!("?mode={mode}")
            };
            s.get(&format!("/api/vps/{relay}/envoy-routes/plan{q}"), k)
                .await
        }
    };

    // Today: the agent reports no mesh mode, so sigma-agent's Envoy runs every active route.
    let (st, p) = plan("").await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["mode"], "current");
    assert_eq!(p["agent_mode"], "classic");
    assert_eq!(p["hostname"], "relay-1");
    assert_eq!(
        p["routes"].as_array().unwrap().len(),
        3,
        "disabled routes are left out: {p}"
    );
    for r in p["routes"].as_array().unwrap() {
        assert_eq!(r["runs"], "classic", "{r}");
        assert_eq!(r["listener"]["state"], "unknown", "no report yet: {r}");
    }
    let (st, c) = plan("classic").await;
    assert_eq!(st, 200);
    // The same plan, without today's liveness.
    let mut today = p["routes"].clone();
    for r in today.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("listener");
    }
    assert_eq!(c["routes"], today);

    // Mesh mode while the relay's purpose is not in the mesh: nothing would forward, and each
    // route says why.
    let (st, p) = plan("mesh").await;
    assert_eq!(st, 200, "{p}");
    for r in p["routes"].as_array().unwrap() {
        assert_eq!(r["runs"], "not_carried", "{r}");
        assert_eq!(codes(r), ["vps_not_meshed"], "{r}");
        assert!(
            r["issues"][0]["message"]
                .as_str()
                .unwrap()
                .contains("\"vpn-relay\""),
            "{r}"
        );
    }

    // With the relay's purpose in the mesh: the pool route and the external backend (its
    // PROXY header carried by the DestinationRule) run in the mesh; a PROXY header toward the
    // fleet cannot be carried.
    let (st, v) = s
        .patch(
            "/api/purposes/vpn-relay",
            k,
            json!({"mesh": {"enabled": true}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, p) = plan("mesh").await;
    assert_eq!(st, 200, "{p}");
    let pool = route(&p, "pool");
    assert_eq!(pool["runs"], "mesh", "{pool}");
    assert_eq!(pool["mesh_host"], "route-8443.vps-relay-1.sigma.mesh");
    assert_eq!(pool["listen_address"], "198.51.100.1");
    assert_eq!(pool["upstream"], "pool vpn-exit:vpn");
    let pp = route(&p, "pp");
    assert_eq!(pp["runs"], "not_carried");
    assert_eq!(codes(pp), ["proxy_protocol_to_fleet"]);
    assert_eq!(route(&p, "ext")["runs"], "mesh");
    assert_eq!(p["mesh_registrar"], "off");

    // Bad input is named.
    let (st, v) = plan("sideways").await;
    assert_eq!(st, 422, "{v}");
    assert!(v.to_string().contains("mode"), "{v}");
    let (st, v) = s
        .get(&format!("/api/vps/{relay}/envoy-routes/plan?bogus=1"), k)
        .await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = s
        .get(
            "/api/vps/00000000-0000-0000-0000-000000000001/envoy-routes/plan",
            k,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.get("/api/vps/not-a-uuid/envoy-routes/plan", k).await;
    assert_eq!(st, 422, "{v}");
}

//! `mesh_state.dataplane` through the real sigma-api binary: a heartbeat carrying the agent's
//! data-plane reading is stored and returned with the VPS; bad values are refused with a 422
//! naming the field; a heartbeat without it (an older agent) is still accepted; the OpenAPI
//! document describes it.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, both_backends};

both_backends!(dataplane_reports_are_stored_checked_and_documented);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

/// A change to a good report.
type Edit = fn(&mut Value);

fn dataplane() -> Value {
    json!({
        "read_at": "2026-12-04T22:00:00Z",
        "xds": {"state": "connected"},
        "egress": [
            {"host": "xboard.sigma.svc.cluster.local", "port": 80, "bind": "127.0.0.2",
             "listener": {"state": "bound"},
             "endpoints": {"state": "held", "total": 2, "healthy": 1, "outlier_ejected": 0},
             "responses": {"state": "counted", "rq_2xx": 40, "rq_4xx": 1, "rq_5xx": 2,
                           "connect_failures": 0, "connections": 9},
             "hosts_entry": {"state": "present"}},
            {"host": "db.sigma.svc.cluster.local", "port": 5432, "bind": "127.0.0.3",
             "listener": {"state": "unknown", "reason": "Envoy admin /listeners unreachable"},
             "endpoints": {"state": "no_cluster"},
             "responses": {"state": "unknown", "reason": "Envoy holds no cluster"},
             "hosts_entry": {"state": "wrong", "address": "10.0.0.9"}}
        ],
        "omitted": 0
    })
}

fn beat(dp: Value) -> Value {
    json!({"hostname": "dp-1.example.net", "agent_state": {
        "mode": "mesh",
        "mesh_state": {"state": "ready", "bundle_version": "b1", "restarts": 0, "dataplane": dp}
    }})
}

async fn dataplane_reports_are_stored_checked_and_documented(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let token = s.token(json!({"purpose": "xrayr", "max_uses": 1})).await;
    let (st, r) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "dp-1.example.net"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let agent = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();

    let (st, v) = s
        .post("/api/agent/heartbeat", &agent, beat(dataplane()))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, vps) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(
        vps["agent_state"]["mesh_state"]["dataplane"],
        dataplane(),
        "stored and returned as sent: {vps}"
    );

    // Hostile or impossible values: 422 naming the field, and the stored report is kept.
    let bad: [(&str, Edit); 9] = [
        (
            "agent_state.mesh_state.dataplane.egress[0].endpoints.healthy",
            |d| d["egress"][0]["endpoints"]["healthy"] = json!(3),
        ),
        (
            "agent_state.mesh_state.dataplane.egress[0].responses.rq_5xx",
            |d| d["egress"][0]["responses"]["rq_5xx"] = json!(9_007_199_254_740_992u64),
        ),
        // A tagged fact is decoded as a whole: the 422 names the fact and says why.
        (
            "agent_state.mesh_state.dataplane.egress[0].responses",
            |d| d["egress"][0]["responses"]["rq_2xx"] = json!(-1),
        ),
        (
            "agent_state.mesh_state.dataplane.egress[1].listener.reason",
            |d| d["egress"][1]["listener"]["reason"] = json!("refused\u{1b}[31m"),
        ),
        ("agent_state.mesh_state.dataplane.xds.reason", |d| {
            d["xds"] = json!({"state": "unknown", "reason": "x".repeat(161)})
        }),
        ("agent_state.mesh_state.dataplane.egress[0].bind", |d| {
            d["egress"][0]["bind"] = json!("not-an-address")
        }),
        ("agent_state.mesh_state.dataplane.egress[0].host", |d| {
            d["egress"][0]["host"] = json!("bad host")
        }),
        ("agent_state.mesh_state.dataplane.egress", |d| {
            let one = d["egress"][0].clone();
            d["egress"] = Value::Array(vec![one; 17])
        }),
        ("agent_state.mesh_state.dataplane.egress[0].listener", |d| {
            d["egress"][0]["listener"] = json!({"state": "half-bound"})
        }),
    ];
    for (name, f) in bad {
        let mut d = dataplane();
        f(&mut d);
        let (st, v) = s.post("/api/agent/heartbeat", &agent, beat(d)).await;
        assert_eq!(st, 422, "{name}: {v}");
        assert!(
            v["fields"].get(name).is_some()
                || v["fields"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|k| k.starts_with(name)),
            "{name} not named in {v}"
        );
    }
    field(
        &s.post("/api/agent/heartbeat", &agent, beat(json!({"read_at": "2026-12-04T22:00:00Z", "xds": {"state": "connected"}, "egress": "no"})))
            .await
            .1,
        "agent_state.mesh_state.dataplane.egress",
    );
    let (_, vps) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(vps["agent_state"]["mesh_state"]["dataplane"], dataplane());

    // An agent older than the data-plane report: accepted, and the VPS shows no reading.
    let (st, v) = s
        .post(
            "/api/agent/heartbeat",
            &agent,
            json!({"hostname": "dp-1.example.net", "agent_state": {
            "mode": "mesh", "mesh_state": {"state": "ready", "restarts": 1}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, vps) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(vps["agent_state"]["mesh_state"]["restarts"], 1);
    assert!(vps["agent_state"]["mesh_state"].get("dataplane").is_none());

    // The OpenAPI document describes it.
    let (st, doc) = s.get("/api/openapi.json", ADMIN_KEY).await;
    assert_eq!(st, 200);
    let schemas = &doc["components"]["schemas"];
    for name in [
        "MeshDataPlane",
        "EgressDataPlane",
        "EgressEndpoints",
        "EgressResponses",
        "HostsEntry",
        "ListenerState",
        "XdsConnection",
    ] {
        assert!(schemas.get(name).is_some(), "{name} missing from OpenAPI");
    }
    assert!(
        schemas["MeshAgentState"]["properties"]
            .get("dataplane")
            .is_some(),
        "{}",
        schemas["MeshAgentState"]
    );
}

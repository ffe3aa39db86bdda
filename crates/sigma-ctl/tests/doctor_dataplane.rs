//! `sigmactl mesh doctor`'s data-plane links through the real binaries: an agent's heartbeat
//! carries `mesh_state.dataplane` to a real sigma-api, and sigmactl judges it. Prints the
//! people's view of each case (run with `--nocapture` to see it).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sigma_testkit::SigmaApi;

const HOST: &str = "edge-1.example.net";
const XRAYR_MESH: &str = r#"{"enabled": true, "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 80, "protocol": "HTTP"}]}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn post(api: &SigmaApi, path: &str, key: &str, body: Value) -> (u16, Value) {
    runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", api.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    })
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn good() -> Value {
    json!({
        "read_at": now(),
        "xds": {"state": "connected"},
        "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 80, "bind": "127.0.0.2",
            "listener": {"state": "bound"},
            "endpoints": {"state": "held", "total": 2, "healthy": 2, "outlier_ejected": 0},
            "responses": {"state": "counted", "rq_2xx": 120, "rq_4xx": 2, "rq_5xx": 1,
                          "connect_failures": 0, "connections": 4},
            "hosts_entry": {"state": "present"}}]
    })
}

/// Heartbeats `dataplane`, runs the doctor (JSON and human), returns the links by name.
fn doctor(api: &SigmaApi, key: &str, dataplane: Value, title: &str) -> BTreeMap<String, Value> {
    let (st, v) = post(
        api,
        "/api/agent/heartbeat",
        key,
        json!({"hostname": HOST, "agent_state": {"mode": "mesh", "mesh_state": {
            "state": "ready", "bundle_version": "b1", "restarts": 0, "dataplane": dataplane}}}),
    );
    assert_eq!(st, 200, "{v}");
    let r = api.ctl().run(&["-o", "json", "mesh", "doctor", HOST]);
    let links: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    let human = api.ctl().run(&["mesh", "doctor", HOST]);
    let ours: Vec<&str> = human
        .stdout
        .lines()
        .skip_while(|l| !l.contains("Envoy connected to istiod"))
        .take_while(|l| !l.contains("warning(s)"))
        .collect();
    eprintln!("--- {title} ---\n{}", ours.join("\n"));
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["link"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

#[track_caller]
fn is(links: &BTreeMap<String, Value>, name: &str, result: &str, needle: &str) {
    let l = &links[name];
    assert_eq!(l["result"], result, "{name}: {l}");
    let text = format!("{} {}", l["reason"], l["fix"]);
    assert!(text.contains(needle), "{name} lacks {needle:?}: {l}");
}

#[test]
fn data_plane_links_from_the_agents_report() {
    let api = SigmaApi::start();
    api.ctl()
        .run(&["purposes", "edit", "xrayr", "--mesh", XRAYR_MESH])
        .ok();
    let t = api.ctl_json(&["enroll", "create", "--purpose", "xrayr"]);
    let (st, r) = post(
        &api,
        "/api/agent/register",
        t["token"].as_str().unwrap(),
        json!({"hostname": HOST, "ip_addresses": [{"ip": "203.0.113.7", "label": "public"}]}),
    );
    assert_eq!(st, 200, "{r}");
    let key = r["agent_key"].as_str().unwrap().to_string();

    let l = doctor(&api, &key, good(), "ok");
    for name in [
        "xds-connected",
        "hosts-block",
        "egress-listener",
        "egress-endpoints",
        "egress-responses",
    ] {
        assert_eq!(l[name]["result"], "ok", "{name}: {}", l[name]);
        assert_eq!(l[name]["fix"], Value::Null);
    }

    let mut d = good();
    d["xds"] = json!({"state": "disconnected"});
    is(
        &doctor(&api, &key, d, "gateway stopped"),
        "xds-connected",
        "failed",
        "istio-eastwestgateway",
    );

    let mut d = good();
    d["egress"][0]["hosts_entry"] = json!({"state": "missing"});
    is(
        &doctor(&api, &key, d, "egress host missing from the hosts block"),
        "hosts-block",
        "failed",
        "xboard.sigma.svc.cluster.local is missing",
    );

    let mut d = good();
    d["egress"][0]["endpoints"] =
        json!({"state": "held", "total": 1, "healthy": 0, "outlier_ejected": 0});
    is(
        &doctor(&api, &key, d, "no healthy endpoint"),
        "egress-endpoints",
        "failed",
        "0 of 1 healthy",
    );

    let mut d = good();
    d["egress"][0]["listener"] = json!({"state": "not_bound"});
    is(
        &doctor(&api, &key, d, "listener not bound"),
        "egress-listener",
        "failed",
        "no listener 127.0.0.2_80",
    );

    let mut d = good();
    d["egress"][0]["responses"] = json!({"state": "counted", "rq_2xx": 50, "rq_4xx": 0,
        "rq_5xx": 50, "connect_failures": 0, "connections": 10});
    is(
        &doctor(&api, &key, d, "half the responses 5xx"),
        "egress-responses",
        "warning",
        "50 % 5xx",
    );

    let mut d = good();
    d["xds"] = json!({"state": "unknown", "reason": "Envoy keeps no control_plane stats (Istio's stats matcher drops them): add \"control_plane\" to defaultConfig.proxyStatsMatcher.inclusionPrefixes"});
    d["egress"][0]["responses"] = json!({"state": "unknown", "reason": "Envoy admin /stats unreachable: error sending request"});
    let l = doctor(&api, &key, d, "unknown facts");
    is(&l, "xds-connected", "warning", "proxyStatsMatcher");
    is(&l, "egress-responses", "warning", "unreachable");
}

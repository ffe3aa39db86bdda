//! Routes to fleet targets, against the real sigma-api binary on SQLite and PostgreSQL: a route
//! may forward to one VPS or to a purpose's pool (optionally by country) at a port the
//! target's purpose serves; bad targets are 422s naming the field; a classic-mode agent gets
//! the targets' current addresses, which follow retirements and silent agents.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, both_backends};

both_backends!(fleet_targets_are_checked_and_resolved);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

/// Registers `hostname` with one public address; returns (id, agent key).
/// `(hostname, address, port)` of each endpoint of route `name` in an agent config.
fn endpoints(cfg: &Value, name: &str) -> Vec<(String, String, u64)> {
    cfg["endpoints"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints for {name} in {cfg}"))
        .iter()
        .map(|e| {
            (
                e["hostname"].as_str().unwrap().to_string(),
                e["address"].as_str().unwrap().to_string(),
                e["port"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn fleet_targets_are_checked_and_resolved(db: TestDb) {
    // A short silence so the test sees a silent agent leave its pool.
    let s = SigmaApi::builder()
        .store(&db)
        .env("SIGMA_ROUTE_TARGET_SILENCE", "3s")
        .start();
    let k = ADMIN_KEY;
    // The exits serve `vpn` (the application listens on 1194) and `admin`.
    let (st, v) = s
        .patch(
            "/api/purposes/vpn-exit",
            k,
            json!({"mesh": {"ports": [
                {"name": "vpn", "number": 443, "protocol": "TCP", "target_port": 1194},
                {"name": "admin", "number": 8080, "protocol": "HTTP"},
            ]}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let relay_token = s.token(json!({"purpose": "vpn-relay"})).await;
    let exit_token = s.token(json!({"purpose": "vpn-exit", "max_uses": 3})).await;
    let (relay, relay_key) = s.register(&relay_token, "relay-1", "198.51.100.1").await;
    let (exit1, exit1_key) = s.register(&exit_token, "exit-1", "203.0.113.1").await;
    let (exit2, exit2_key) = s.register(&exit_token, "exit-2", "203.0.113.2").await;
    let (_exit3, _) = s.register(&exit_token, "exit-3", "203.0.113.3").await;
    for (id, cc) in [(&exit1, "DE"), (&exit2, "FI")] {
        let (st, v) = s
            .patch(&format!("/api/vps/{id}"), k, json!({"country": cc}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let routes = format!("/api/vps/{relay}/envoy-routes");

    // Bad targets name their field.
    for (target, f) in [
        (json!({"vps": "nope.example", "port": "vpn"}), "target.vps"),
        (json!({"vps": "relay-1", "port": "vpn"}), "target.vps"),
        (json!({"vps": "exit-1", "port": "ssh"}), "target.port"),
        (json!({"purpose": "nope", "port": "vpn"}), "target.purpose"),
        (
            json!({"purpose": "vpn-relay", "port": "vpn"}),
            "target.purpose",
        ),
        (json!({"purpose": "vpn-exit", "port": "ssh"}), "target.port"),
        (
            json!({"purpose": "vpn-exit", "port": "vpn", "countries": ["Germany"]}),
            "target.countries[0]",
        ),
        (json!({"purpose": "monitor", "port": "vpn"}), "target.port"),
    ] {
        let (st, v) = s
            .post(
                &routes,
                k,
                json!({"name": "x", "listen_port": 1000, "target": target}),
            )
            .await;
        assert_eq!(st, 422, "{target}: {v}");
        field(&v, f);
    }
    let (st, v) = s
        .post(
            &routes,
            k,
            json!({"name": "x", "listen_port": 1000, "backend_host": "192.0.2.1", "backend_port": 1,
                   "target": {"vps": "exit-1", "port": "vpn"}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "backend_host");
    // A batch names the route.
    let (st, v) = s
        .request(
            "PUT",
            &routes,
            Some(k),
            Some(json!({"routes": [
                {"name": "ok", "listen_port": 1001, "backend_host": "192.0.2.1", "backend_port": 1},
                {"name": "bad", "listen_port": 1002, "target": {"vps": "relay-1", "port": "vpn"}},
            ]})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "routes[1].target.vps");

    // A pool of two countries and one VPS by hostname.
    let (st, pool) = s
        .post(
            &routes,
            k,
            json!({"name": "exits", "listen_port": 443,
                   "target": {"purpose": "vpn-exit", "port": "vpn", "countries": ["fi", "DE"]}}),
        )
        .await;
    assert_eq!(st, 201, "{pool}");
    assert_eq!(
        pool["target"],
        json!({"kind": "pool", "purpose": "vpn-exit", "port": "vpn", "countries": ["DE", "FI"]})
    );
    assert!(pool.get("backend_host").is_none(), "{pool}");
    let (st, one) = s
        .post(
            &routes,
            k,
            json!({"name": "admin", "listen_port": 8443, "target": {"vps": "EXIT-2", "port": "admin"}}),
        )
        .await;
    assert_eq!(st, 201, "{one}");
    assert_eq!(one["target"]["kind"], "vps");
    assert_eq!(one["target"]["vps_id"], exit2.as_str());
    assert_eq!(one["target"]["hostname"], "exit-2");

    // The agent gets the addresses: the pool's DE and FI exits (not exit-3, no country), at
    // the application's port; the single VPS at its admin port.
    let cfg_path = "/api/agent/envoy-config?hostname=relay-1";
    let (st, cfg) = s.get(cfg_path, &relay_key).await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(
        endpoints(&cfg, "exits"),
        [
            ("exit-1".into(), "203.0.113.1".into(), 1194),
            ("exit-2".into(), "203.0.113.2".into(), 1194)
        ]
    );
    assert_eq!(
        endpoints(&cfg, "admin"),
        [("exit-2".into(), "203.0.113.2".into(), 8080)]
    );
    // Asked again with nothing changed: the same version (a digest, not a counter).
    let version = cfg["version"].as_i64().unwrap();
    assert_eq!(s.get(cfg_path, &relay_key).await.1["version"], version);

    // Retiring exit-1 wakes a long poll with a config without it.
    let waiter = {
        let (client, url, key) = (
            s.http.clone(),
            s.url(&format!(
                "{cfg_path}&known_version={version}&wait_seconds=30"
            )),
            relay_key.clone(),
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let v: Value = client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, v) = s
        .post(&format!("/api/vps/{exit1}/retire"), k, json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (cfg, waited) = waiter.await.unwrap();
    assert_ne!(cfg["version"], version, "{cfg}");
    assert_eq!(
        endpoints(&cfg, "exits"),
        [("exit-2".into(), "203.0.113.2".into(), 1194)]
    );
    eprintln!("retire -> agent config: {waited:?}");
    drop(exit1_key);

    // exit-2's agent goes silent: after the silence (3 s here) it leaves both routes, found by
    // the poll's periodic re-check (no stored change announces silence).
    let version = cfg["version"].as_i64().unwrap();
    let t = Instant::now();
    let (_, cfg) = s
        .get(
            &format!("{cfg_path}&known_version={version}&wait_seconds=30"),
            &relay_key,
        )
        .await;
    assert!(endpoints(&cfg, "exits").is_empty(), "{cfg}");
    assert!(endpoints(&cfg, "admin").is_empty(), "{cfg}");
    eprintln!("silent target left the config after {:?}", t.elapsed());
    // It speaks again (every half second, as the silence here is short) and is back.
    let beats = {
        let (client, url, key) = (
            s.http.clone(),
            s.url("/api/agent/heartbeat"),
            exit2_key.clone(),
        );
        tokio::spawn(async move {
            loop {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"hostname": "exit-2"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let version = cfg["version"].as_i64().unwrap();
    let (_, cfg) = s
        .get(
            &format!("{cfg_path}&known_version={version}&wait_seconds=30"),
            &relay_key,
        )
        .await;
    beats.abort();
    assert_eq!(endpoints(&cfg, "exits").len(), 1, "{cfg}");

    // Edits: a pool route becomes a backend only with both halves; then back to a target.
    let rid = pool["id"].as_str().unwrap();
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{rid}"),
            k,
            json!({"backend_host": "192.0.2.7"}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "backend_port");
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{rid}"),
            k,
            json!({"listen_port": 444}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["target"]["purpose"], "vpn-exit", "{v}");
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{rid}"),
            k,
            json!({"backend_host": "192.0.2.7", "backend_port": 7}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["backend_host"], "192.0.2.7");
    assert!(v.get("target").is_none(), "{v}");

    // A purpose a route targets cannot be deleted from under it.
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "spare", "display_name": "Spare",
                   "mesh": {"ports": [{"name": "vpn", "number": 1194, "protocol": "TCP"}]}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s
        .post(
            &routes,
            k,
            json!({"name": "spare", "listen_port": 2000, "target": {"purpose": "spare", "port": "vpn"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.delete("/api/purposes/spare", k).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("route"), "{v}");

    // Listing shows both kinds; an old-style route reads as before.
    let (st, list) = s.get(&routes, k).await;
    assert_eq!(st, 200);
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            if r.get("backend_host").is_some() {
                "backend"
            } else {
                r["target"]["kind"].as_str().unwrap()
            }
        })
        .collect();
    assert_eq!(kinds, ["vps", "backend", "pool"], "{list}");
}

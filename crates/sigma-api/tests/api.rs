//! Integration tests: the real sigma-api binary, on SQLite and on PostgreSQL.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(
    providers_and_purposes,
    vps_lifecycle_and_filters,
    bad_input_is_named_and_never_loses_data,
    credentials_and_scopes,
    agent_enrollment_and_heartbeats,
    concurrent_registers_make_one_vps,
    heartbeat_survives_clean_shutdown,
    audit_log_records_mutations,
    openapi_documents_every_route,
    metrics_and_probes,
    first_run_prints_one_admin_key,
    envoy_routes_and_agent_long_poll,
);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

async fn providers_and_purposes(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, p) = s
        .post(
            "/api/providers",
            k,
            json!({"name": "Hetzner", "country": "de", "website": "https://hetzner.com"}),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    assert_eq!(p["country"], "DE");
    let (st, v) = s
        .post("/api/providers", k, json!({"name": "hetzner"}))
        .await;
    assert_eq!(st, 409, "names are unique case-insensitively: {v}");
    let (st, byname) = s.get("/api/providers/HETZNER", k).await;
    assert_eq!(st, 200);
    assert_eq!(byname["id"], p["id"]);
    let (st, v) = s
        .patch(
            &format!("/api/providers/{}", p["id"].as_str().unwrap()),
            k,
            json!({"country": null, "notes": "cheap"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["country"], Value::Null);
    assert_eq!(v["notes"], "cheap");
    assert_eq!(v["website"], "https://hetzner.com", "absent fields stay");

    // In use → 409; once unused → 204 and gone.
    let (st, vps) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("a1")
                .set("provider", json!("hetzner"))
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{vps}");
    assert_eq!(vps["provider"], "Hetzner");
    let (st, v) = s.delete("/api/providers/hetzner", k).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("1 VPS"));
    let (st, _) = s
        .patch(
            &format!("/api/vps/{}", vps["id"].as_str().unwrap()),
            k,
            json!({"provider": null}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s.delete("/api/providers/hetzner", k).await;
    assert_eq!(st, 204);
    assert_eq!(s.get("/api/providers/hetzner", k).await.0, 404);

    // Purposes: the five seeds, DNS-label names, in-use deletes refused.
    let (_, list) = s.get("/api/purposes", k).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for seed in ["xrayr", "vpn-exit", "vpn-relay", "vpn-entry", "monitor"] {
        assert!(names.contains(&seed), "{seed} not seeded: {names:?}");
    }
    let (st, v) = s
        .post("/api/purposes", k, json!({"name": "Not_A_Label"}))
        .await;
    assert_eq!(st, 422);
    field(&v, "name");
    let (st, v) = s
        .post("/api/purposes", k, json!({"name": "edge", "mesh": [1]}))
        .await;
    assert_eq!(st, 422);
    field(&v, "mesh");
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "display_name": "Edge"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        s.post("/api/purposes", k, json!({"name": "edge"})).await.0,
        409
    );
    let (st, v) = s.delete("/api/purposes/xrayr", k).await;
    assert_eq!(st, 409, "xrayr has a VPS: {v}");
    assert_eq!(s.delete("/api/purposes/edge", k).await.0, 204);
    assert_eq!(s.get("/api/purposes/edge", k).await.0, 404);
}

async fn vps_lifecycle_and_filters(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    s.post("/api/providers", k, json!({"name": "ovh"})).await;
    let mut ids = vec![];
    for (h, purpose, country, tags) in [
        (
            "Edge-1.Example.com",
            "xrayr",
            "DE",
            json!(["env=prod", "fast"]),
        ),
        ("edge-2.example.com", "xrayr", "FR", json!(["env=prod"])),
        ("relay-1.example.com", "vpn-relay", "DE", json!([])),
    ] {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new(h)
                    .set("purpose", json!(purpose))
                    .set("country", json!(country))
                    .set("tags", tags)
                    .set("provider", json!("ovh"))
                    .set("city", json!("Falkenstein"))
                    .public_ip("203.0.113.7")
                    .build(),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["status"], "provisioning");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (st, v) = s
        .post("/api/vps", k, VpsBuilder::new("EDGE-1.example.com").build())
        .await;
    assert_eq!(st, 409, "hostnames compare case-insensitively: {v}");

    let count = |q: &str| {
        let q = q.to_string();
        let s = &s;
        async move {
            let (st, v) = s.get(&format!("/api/vps{q}"), k).await;
            assert_eq!(st, 200, "{q}: {v}");
            v["total"].as_i64().unwrap()
        }
    };
    assert_eq!(count("").await, 3);
    assert_eq!(count("?purpose=xrayr").await, 2);
    assert_eq!(count("?country=de").await, 2);
    assert_eq!(count("?provider=OVH").await, 3);
    assert_eq!(count("?tag=env%3Dprod").await, 2);
    assert_eq!(count("?tag=fast").await, 1);
    assert_eq!(count("?q=RELAY").await, 1);
    assert_eq!(count("?q=%25").await, 0, "% is matched literally");
    assert_eq!(count("?q=falken").await, 3);
    assert_eq!(count("?hostname=EDGE-1.EXAMPLE.COM").await, 1);
    assert_eq!(
        count("?status=provisioning&purpose=xrayr&country=FR").await,
        1
    );
    let (_, page) = s.get("/api/vps?limit=2&offset=2", k).await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["hostname"], "relay-1.example.com");

    // PATCH: null clears, absent stays; desired_version follows status and purpose only.
    let id = &ids[0];
    let (_, before) = s.get(&format!("/api/vps/{id}"), k).await;
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"alias": "e1", "city": null}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["alias"], "e1");
    assert_eq!(v["city"], Value::Null);
    assert_eq!(v["country"], "DE");
    assert_eq!(v["desired_version"], before["desired_version"]);
    let (_, v) = s
        .patch(&format!("/api/vps/{id}"), k, json!({"status": "active"}))
        .await;
    assert_eq!(v["status"], "active");
    assert!(v["desired_version"].as_i64() > before["desired_version"].as_i64());
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"status": "provisioning"}),
        )
        .await;
    assert_eq!(st, 409, "active cannot go back to provisioning: {v}");
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"hostname": "edge-2.example.com"}),
        )
        .await;
    assert_eq!(st, 409, "{v}");

    // Retire, then force; idempotent.
    let (st, v) = s.post(&format!("/api/vps/{id}/retire"), k, json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "retiring");
    let (_, v) = s
        .request("POST", &format!("/api/vps/{id}/retire"), Some(k), None)
        .await;
    assert_eq!(v["status"], "retiring");
    let (_, v) = s
        .request(
            "POST",
            &format!("/api/vps/{id}/retire?force=true"),
            Some(k),
            None,
        )
        .await;
    assert_eq!(v["status"], "retired");
    let (st, _) = s
        .request(
            "POST",
            &format!("/api/vps/{id}/retire?force=maybe"),
            Some(k),
            None,
        )
        .await;
    assert_eq!(st, 422);

    // Soft delete frees the hostname; restore refuses while it is taken again.
    let (st, v) = s.delete(&format!("/api/vps/{id}"), k).await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "deleted");
    assert_eq!(count("").await, 2);
    assert_eq!(count("?status=deleted").await, 1);
    assert_eq!(
        s.get(&format!("/api/vps/{id}"), k).await.1["status"],
        "deleted"
    );
    let (st, v) = s
        .patch(&format!("/api/vps/{id}"), k, json!({"alias": "x"}))
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, other) = s
        .post("/api/vps", k, VpsBuilder::new("edge-1.example.com").build())
        .await;
    assert_eq!(st, 201);
    let (st, v) = s
        .post(&format!("/api/vps/{id}/restore"), k, json!({}))
        .await;
    assert_eq!(st, 409, "{v}");
    s.delete(&format!("/api/vps/{}", other["id"].as_str().unwrap()), k)
        .await;
    let (st, v) = s
        .post(&format!("/api/vps/{id}/restore"), k, json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["status"], "retired",
        "restore brings back the status it had"
    );
    assert_eq!(
        s.post(&format!("/api/vps/{id}/restore"), k, json!({}))
            .await
            .0,
        409
    );
    let (_, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"status": "provisioning"}),
        )
        .await;
    assert_eq!(
        v["status"], "provisioning",
        "a retired VPS can be re-commissioned"
    );
}

async fn bad_input_is_named_and_never_loses_data(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (_, vps) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("keep.example.com")
                .public_ip("198.51.100.1")
                .build(),
        )
        .await;
    let id = vps["id"].as_str().unwrap().to_string();

    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"hostname": "bad_host", "purpose": "xrayr"}),
            &["hostname"],
        ),
        (
            json!({"hostname": "a".repeat(300), "purpose": "xrayr"}),
            &["hostname"],
        ),
        (
            json!({"hostname": "héllo", "purpose": "xrayr"}),
            &["hostname"],
        ),
        (json!({"hostname": "x1", "purpose": "nope"}), &["purpose"]),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "country": "XX"}),
            &["country"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "ip_addresses": [{"ip": "1.2.3.999", "label": "public"}]}),
            &["ip_addresses[0].ip"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "ip_addresses": [{"ip": "::1", "label": "Not Ok"}]}),
            &["ip_addresses[0].label"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "node_exporter_port": 0}),
            &["node_exporter_port"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "node_exporter_port": 70000}),
            &["node_exporter_port"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "node_exporter_port": "9100"}),
            &["node_exporter_port"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "status": "bogus"}),
            &["status"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "monitoring": "yes"}),
            &["monitoring"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "colour": "red"}),
            &["colour"],
        ),
        (json!({"hostname": 5, "purpose": "xrayr"}), &["hostname"]),
        (json!({"purpose": "xrayr"}), &["body"]),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "provider": "ghost"}),
            &["provider"],
        ),
        (
            json!({"hostname": "x1", "purpose": "xrayr", "tags": ["ok", "not ok"]}),
            &["tags[1]"],
        ),
    ];
    for (body, fields) in cases {
        let (st, v) = s.post("/api/vps", k, body.clone()).await;
        assert_eq!(st, 422, "{body} → {v}");
        assert_eq!(v["error"], "validation");
        for f in fields {
            assert!(
                v["fields"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|key| key.contains(f)),
                "{body}: field {f} not named in {v}"
            );
        }
    }
    // Malformed JSON, wrong content type, too large.
    let (st, v) = s
        .raw(
            "POST",
            "/api/vps",
            k,
            "application/json",
            b"{\"hostname\": ".to_vec(),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "body");
    let (st, _) = s
        .raw("POST", "/api/vps", k, "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(st, 415);
    let big = format!(
        "{{\"hostname\": \"x\", \"purpose\": \"xrayr\", \"alias\": \"{}\"}}",
        "a".repeat(300_000)
    );
    let (st, _) = s
        .raw("POST", "/api/vps", k, "application/json", big.into_bytes())
        .await;
    assert_eq!(st, 413);
    // PATCH with bad values and a bad id; query strings.
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"hostname": null, "country": "ZZ"}),
        )
        .await;
    assert_eq!(st, 422);
    field(&v, "hostname");
    field(&v, "country");
    let (st, v) = s.get("/api/vps/not-a-uuid", k).await;
    assert_eq!(st, 422);
    field(&v, "id");
    assert_eq!(
        s.get("/api/vps/00000000-0000-0000-0000-000000000000", k)
            .await
            .0,
        404
    );
    for q in [
        "limit=0",
        "limit=100000",
        "offset=-1",
        "status=gone",
        "country=XX",
        "colour=red",
        "limit=x",
    ] {
        let (st, v) = s.get(&format!("/api/vps?{q}"), k).await;
        assert_eq!(st, 422, "{q}: {v}");
    }
    let (st, v) = s
        .post(
            "/api/enrollment-tokens",
            k,
            json!({"ttl_seconds": 5, "max_uses": 0}),
        )
        .await;
    assert_eq!(st, 422);
    field(&v, "ttl_seconds");
    field(&v, "max_uses");
    let (st, v) = s
        .post("/api/api-keys", k, json!({"name": "x", "role": "root"}))
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(s.get("/api/nowhere", k).await.0, 404);
    assert_eq!(s.request("PUT", "/api/vps", Some(k), None).await.0, 405);

    // Nothing stored was lost or changed.
    let (_, after) = s.get(&format!("/api/vps/{id}"), k).await;
    assert_eq!(after, vps);
    assert_eq!(s.get("/api/vps", k).await.1["total"], 1);
}

async fn credentials_and_scopes(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    assert_eq!(s.request("GET", "/api/vps", None, None).await.0, 401);
    assert_eq!(
        s.request(
            "GET",
            "/api/vps",
            Some("sgm_deadbeef_0000000000000000000000000000000000000000"),
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        s.request("GET", "/api/vps", Some("garbage"), None).await.0,
        401
    );
    let (st, v) = s
        .request(
            "GET",
            "/api/vps",
            Some(&ADMIN_KEY.replace("test", "tesT")),
            None,
        )
        .await;
    assert_eq!(st, 401, "a key differing in one character is unknown: {v}");

    let ro = s.key("readonly").await;
    let op = s.key("operator").await;
    assert_eq!(s.get("/api/vps", &ro).await.0, 200);
    assert_eq!(
        s.post("/api/vps", &ro, VpsBuilder::new("r1").build())
            .await
            .0,
        403
    );
    assert_eq!(
        s.post("/api/vps", &op, VpsBuilder::new("r1").build())
            .await
            .0,
        201
    );
    assert_eq!(
        s.post("/api/api-keys", &op, json!({"name": "x", "role": "admin"}))
            .await
            .0,
        403
    );
    assert_eq!(s.get("/api/audit", &op).await.0, 403);
    assert_eq!(s.get("/api/enrollment-tokens", &ro).await.0, 403);
    assert_eq!(s.get("/api/enrollment-tokens", &op).await.0, 200);

    // Agent keys are bound to a VPS and only serve the agent endpoints.
    let (_, vps) = s.get("/api/vps?hostname=r1", &ro).await;
    let vps_id = vps["items"][0]["id"].as_str().unwrap().to_string();
    let (st, v) = s
        .post(
            "/api/api-keys",
            ADMIN_KEY,
            json!({"name": "a", "role": "agent"}),
        )
        .await;
    assert_eq!(st, 422, "agent keys need a VPS: {v}");
    let (st, v) = s
        .post(
            "/api/api-keys",
            ADMIN_KEY,
            json!({"name": "a", "role": "agent", "vps_id": vps_id}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let agent = v["key"].as_str().unwrap().to_string();
    assert_eq!(s.get("/api/vps", &agent).await.0, 403);
    let (st, _) = s
        .post("/api/agent/heartbeat", &agent, json!({"hostname": "r1"}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.post("/api/agent/heartbeat", &op, json!({"hostname": "r1"}))
            .await
            .0,
        403
    );

    // An enrollment token is no API key.
    let token = s.token(json!({"purpose": "xrayr"})).await;
    assert_eq!(s.get("/api/vps", &token).await.0, 401);

    // Revocation is immediate; the list never shows secrets.
    let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
    let ro_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "readonly")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !keys.to_string().contains(&ro[13..]),
        "a secret leaked into the key list"
    );
    let (st, v) = s
        .post(
            &format!("/api/api-keys/{ro_id}/revoke"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.get("/api/vps", &ro).await;
    assert_eq!(st, 401);
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
    let admin_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.post(
            &format!("/api/api-keys/{admin_id}/revoke"),
            ADMIN_KEY,
            json!({})
        )
        .await
        .0,
        409
    );
}

async fn agent_enrollment_and_heartbeats(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    s.post("/api/providers", ADMIN_KEY, json!({"name": "netcup"}))
        .await;
    let token = s
        .token(json!({"purpose": "vpn-exit", "provider": "netcup", "country": "nl", "tags": ["batch-7"], "max_uses": 2}))
        .await;
    let body = json!({
        "hostname": "Exit-1.example.net",
        "ip_addresses": [{"ip": "192.0.2.10", "label": "public"}, {"ip": "10.0.0.5", "label": "private"}, {"ip": "2001:db8::10", "label": "public"}],
        "system_info": {"cpu_cores": 2, "memory_total_bytes": 2147483648u64, "os": "Debian 12", "future_field": [1, 2]},
        "agent_extra": "ignored by older servers",
    });
    let (st, r) = s.post("/api/agent/register", &token, body.clone()).await;
    assert_eq!(st, 200, "{r}");
    let agent_key = r["agent_key"]
        .as_str()
        .expect("first contact returns a key")
        .to_string();
    let vps = &r["vps"];
    assert_eq!(vps["hostname"], "exit-1.example.net");
    assert_eq!(vps["status"], "active");
    assert_eq!(vps["purpose"], "vpn-exit");
    assert_eq!(vps["provider"], "netcup");
    assert_eq!(vps["country"], "NL");
    assert_eq!(vps["tags"], json!(["batch-7"]));
    assert_eq!(vps["system_info"]["future_field"], json!([1, 2]));
    assert_eq!(r["desired"]["status"], "active");
    let id = vps["id"].as_str().unwrap().to_string();

    // Re-register with the agent key: same VPS, no new key.
    let (st, r2) = s
        .post("/api/agent/register", &agent_key, body.clone())
        .await;
    assert_eq!(st, 200, "{r2}");
    assert!(r2.get("agent_key").is_none());
    assert_eq!(r2["vps"]["id"], vps["id"]);
    // Scope: another hostname with this key is 403, on both endpoints.
    let (st, v) = s
        .post(
            "/api/agent/register",
            &agent_key,
            json!({"hostname": "other.example.net"}),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        s.post(
            "/api/agent/heartbeat",
            &agent_key,
            json!({"hostname": "other.example.net"})
        )
        .await
        .0,
        403
    );

    // Heartbeats carry the desired state and record what the agent reports.
    let (st, hb) = s
        .post("/api/agent/heartbeat", &agent_key, json!({"hostname": "exit-1.example.net", "ip_addresses": [{"ip": "192.0.2.11", "label": "public"}], "system_info": {"uptime_seconds": 42}}))
        .await;
    assert_eq!(st, 200, "{hb}");
    assert_eq!(hb["status"], "active");
    assert_eq!(hb["vps_id"], id.as_str());
    let v0 = hb["desired_version"].as_i64().unwrap();
    let (_, got) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(got["ip_addresses"][0]["ip"], "192.0.2.11");
    assert_eq!(got["system_info"]["uptime_seconds"], 42);
    assert!(got["last_heartbeat_at"].is_string());
    let (st, v) = s.post("/api/agent/heartbeat", &agent_key, json!({"hostname": "exit-1.example.net", "ip_addresses": [{"ip": "nope", "label": "public"}]})).await;
    assert_eq!(st, 422);
    field(&v, "ip_addresses[0].ip");

    // A retire is seen on the next heartbeat; acknowledging it makes the VPS retired.
    s.post(&format!("/api/vps/{id}/retire"), ADMIN_KEY, json!({}))
        .await;
    let (_, hb) = s
        .post(
            "/api/agent/heartbeat",
            &agent_key,
            json!({"hostname": "exit-1.example.net"}),
        )
        .await;
    assert_eq!(hb["status"], "retiring");
    let v1 = hb["desired_version"].as_i64().unwrap();
    assert!(v1 > v0);
    let (_, hb) = s
        .post(
            "/api/agent/heartbeat",
            &agent_key,
            json!({"hostname": "exit-1.example.net", "applied_version": v1}),
        )
        .await;
    assert_eq!(hb["status"], "retired");
    // A retired VPS keeps reporting but is not re-activated by its agent.
    let (st, hb) = s
        .post(
            "/api/agent/heartbeat",
            &agent_key,
            json!({"hostname": "exit-1.example.net"}),
        )
        .await;
    assert_eq!((st, hb["status"].as_str()), (200, Some("retired")));
    let (st, v) = s
        .post("/api/agent/register", &agent_key, body.clone())
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("retired"));
    let (st, _) = s.post("/api/agent/register", &token, body.clone()).await;
    assert_eq!(st, 409, "enrolling again does not revive a retired VPS");
    assert_eq!(
        s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await.1["status"],
        "retired"
    );

    // Deleted: heartbeats are refused.
    s.delete(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    let (st, v) = s
        .post(
            "/api/agent/heartbeat",
            &agent_key,
            json!({"hostname": "exit-1.example.net"}),
        )
        .await;
    assert_eq!(st, 409, "{v}");

    // Token limits: used up, revoked, unknown; a token without purpose needs one from the agent.
    let (st, v) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "exit-2.example.net"}),
        )
        .await;
    assert_eq!(st, 200, "second use of a two-use token: {v}");
    let (st, v) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "exit-3.example.net"}),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    let bare = s.token(json!({})).await;
    let (st, v) = s
        .post(
            "/api/agent/register",
            &bare,
            json!({"hostname": "exit-3.example.net"}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "purpose");
    let (st, v) = s
        .post(
            "/api/agent/register",
            &bare,
            json!({"hostname": "exit-3.example.net", "purpose": "monitor"}),
        )
        .await;
    assert_eq!(
        st, 200,
        "a refused enrollment does not use the token up: {v}"
    );
    let (st, _) = s
        .post(
            "/api/agent/register",
            &bare,
            json!({"hostname": "exit-9.example.net", "purpose": "monitor"}),
        )
        .await;
    assert_eq!(st, 401, "single-use token is now used up");
    let t3 = s.token(json!({"max_uses": 5})).await;
    let (st, v) = s
        .post(
            "/api/agent/register",
            &t3,
            json!({"hostname": "exit-4.example.net", "purpose": "monitor"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["vps"]["purpose"], "monitor");
    let (_, toks) = s.get("/api/enrollment-tokens", ADMIN_KEY).await;
    let t3_id = toks["items"][0]["id"].as_str().unwrap().to_string();
    s.post(
        &format!("/api/enrollment-tokens/{t3_id}/revoke"),
        ADMIN_KEY,
        json!({}),
    )
    .await;
    let (st, v) = s
        .post(
            "/api/agent/register",
            &t3,
            json!({"hostname": "exit-5.example.net", "purpose": "monitor"}),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"));
    let (st, _) = s
        .post(
            "/api/agent/register",
            "sge_00000000_00000000000000000000000000000000000000000000",
            json!({"hostname": "x"}),
        )
        .await;
    assert_eq!(st, 401);
}

async fn concurrent_registers_make_one_vps(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let token = s.token(json!({"purpose": "xrayr", "max_uses": 50})).await;
    let mut tasks = vec![];
    for _ in 0..20 {
        let client = s.http.clone();
        let url = s.url("/api/agent/register");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"hostname": "race.example.com"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    // One enrollment wins; once its VPS has a live agent key, the others are takeovers and
    // are refused (docs/security.md, "Enrollment and reinstalls").
    let mut codes = vec![];
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes[0], 200, "{codes:?}");
    assert!(codes[1..].iter().all(|c| *c == 409), "{codes:?}");
    let (_, list) = s.get("/api/vps?hostname=race.example.com", ADMIN_KEY).await;
    assert_eq!(list["total"], 1, "{list}");
}

async fn heartbeat_survives_clean_shutdown(db: TestDb) {
    // A flush interval far longer than the test: only the final flush on SIGTERM writes.
    let opts = || {
        SigmaApi::builder()
            .store(&db)
            .env("SIGMA_HEARTBEAT_FLUSH_INTERVAL", "1h")
    };
    let mut s = opts().start();
    let token = s.token(json!({"purpose": "xrayr"})).await;
    let (_, r) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "durable.example.com"}),
        )
        .await;
    let key = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    for up in 1..=5 {
        let (st, _) = s
            .post("/api/agent/heartbeat", &key, json!({"hostname": "durable.example.com", "system_info": {"uptime_seconds": up}, "ip_addresses": [{"ip": "192.0.2.99", "label": "public"}]}))
            .await;
        assert_eq!(st, 200);
    }
    let (_, live) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(
        live["system_info"]["uptime_seconds"], 5,
        "reads show pending heartbeats"
    );
    let status = s.stop();
    assert!(status.success(), "clean exit: {status}");
    let s = opts().start();
    let (_, after) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(after["system_info"]["uptime_seconds"], 5, "{after}");
    assert_eq!(after["ip_addresses"][0]["ip"], "192.0.2.99");
    assert_eq!(after["last_heartbeat_at"], live["last_heartbeat_at"]);
}

async fn audit_log_records_mutations(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let op = s.key("operator").await;
    let (_, v) = s
        .post("/api/vps", &op, VpsBuilder::new("audited").build())
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    s.patch(&format!("/api/vps/{id}"), &op, json!({"alias": "A"}))
        .await;
    let (st, log) = s
        .get(
            &format!("/api/audit?resource_type=vps&resource_id={id}"),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(st, 200, "{log}");
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{log}");
    assert_eq!(items[0]["action"], "vps.update");
    assert_eq!(items[0]["before"]["alias"], Value::Null);
    assert_eq!(items[0]["after"]["alias"], "A");
    assert!(items[0]["actor"].as_str().unwrap().starts_with("key:sgm_"));
    assert_eq!(items[1]["action"], "vps.create");
    let actor = items[0]["actor"].as_str().unwrap();
    let (_, by_actor) = s.get(&format!("/api/audit?actor={actor}"), ADMIN_KEY).await;
    assert_eq!(by_actor["total"], 2);
    let (_, future) = s
        .get("/api/audit?since=2999-01-01T00:00:00Z", ADMIN_KEY)
        .await;
    assert_eq!(future["total"], 0);
    let (st, v) = s.get("/api/audit?since=yesterday", ADMIN_KEY).await;
    assert_eq!(st, 422);
    field(&v, "since");
    let (_, keys) = s.get("/api/audit?action=api_key.create", ADMIN_KEY).await;
    assert!(
        !keys.to_string().contains("key_hash"),
        "hashes stay out of the audit log"
    );
}

async fn openapi_documents_every_route(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    assert_eq!(
        s.request("GET", "/api/openapi.json", None, None).await.0,
        401
    );
    let (st, doc) = s.get("/api/openapi.json", ADMIN_KEY).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/api/openapi.json"),
        ("get", "/api/prometheus/targets"),
        ("get", "/api/prometheus/contracts"),
        ("get", "/api/exchange-rates"),
        ("put", "/api/exchange-rates/{from}/{to}"),
        ("delete", "/api/exchange-rates/{from}/{to}"),
        ("get", "/api/costs/summary"),
        ("get", "/api/vps/export"),
        ("post", "/api/vps/import"),
        ("get", "/api/providers"),
        ("post", "/api/providers"),
        ("get", "/api/providers/{id}"),
        ("patch", "/api/providers/{id}"),
        ("delete", "/api/providers/{id}"),
        ("get", "/api/purposes"),
        ("post", "/api/purposes"),
        ("get", "/api/purposes/{name}"),
        ("patch", "/api/purposes/{name}"),
        ("delete", "/api/purposes/{name}"),
        ("get", "/api/vps"),
        ("post", "/api/vps"),
        ("get", "/api/vps/{id}"),
        ("patch", "/api/vps/{id}"),
        ("delete", "/api/vps/{id}"),
        ("post", "/api/vps/{id}/retire"),
        ("post", "/api/vps/{id}/restore"),
        ("post", "/api/agent/register"),
        ("post", "/api/agent/heartbeat"),
        ("get", "/api/api-keys"),
        ("post", "/api/api-keys"),
        ("post", "/api/api-keys/{id}/revoke"),
        ("get", "/api/enrollment-tokens"),
        ("post", "/api/enrollment-tokens"),
        ("post", "/api/enrollment-tokens/{id}/revoke"),
        ("get", "/api/audit"),
        ("get", "/api/vps/{id}/envoy-routes"),
        ("post", "/api/vps/{id}/envoy-routes"),
        ("put", "/api/vps/{id}/envoy-routes"),
        ("get", "/api/envoy-routes/{id}"),
        ("patch", "/api/envoy-routes/{id}"),
        ("delete", "/api/envoy-routes/{id}"),
        ("get", "/api/vps/{id}/envoy-routes/plan"),
        ("get", "/api/agent/envoy-config"),
        ("get", "/api/agent/istio-bootstrap"),
        ("get", "/api/mesh/manifests"),
        ("get", "/api/vps/{id}/mesh"),
        ("get", "/install.sh"),
    ];
    let mut documented = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                expected.contains(&(method.as_str(), path.as_str())),
                "undocumented in the test list: {method} {path}"
            );
            // Every documented route is served: a real answer, never the router's 404/405.
            let concrete = path
                .replace("{id}", "00000000-0000-0000-0000-000000000000")
                .replace("{name}", "nope");
            let (st, v) = s
                .request(&method.to_uppercase(), &concrete, Some(ADMIN_KEY), None)
                .await;
            assert!(
                st != 405 && v.get("message").and_then(|m| m.as_str()) != Some("no such route"),
                "{method} {path} not routed: {st} {v}"
            );
        }
    }
    assert_eq!(documented, expected.len());
}

async fn metrics_and_probes(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    assert_eq!(s.request("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(s.request("GET", "/readyz", None, None).await.0, 200);
    assert_eq!(s.request("GET", "/metrics", None, None).await.0, 401);
    s.post("/api/vps", ADMIN_KEY, VpsBuilder::new("m1").build())
        .await;
    s.get("/api/vps/00000000-0000-0000-0000-000000000000", ADMIN_KEY)
        .await;
    let resp = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"sigma_api_vps{status="provisioning"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"sigma_api_http_request_duration_seconds_count{method="GET",route="/api/vps/{id}",status="404"} 1"#), "{text}");
    assert!(text.contains("sigma_api_http_request_duration_seconds_bucket"));
    assert!(text.trim_end().ends_with("# EOF"));
}

async fn first_run_prints_one_admin_key(db: TestDb) {
    let s = SigmaApi::builder().store(&db).admin_key(None).start();
    let idx = s
        .stdout_lines
        .iter()
        .position(|l| l.contains("initial admin key"))
        .expect("key announced");
    let key = s.stdout_lines[idx + 1].clone();
    assert!(key.starts_with("sgm_"));
    assert_eq!(s.get("/api/vps", &key).await.0, 200);
    assert_eq!(
        s.post(
            "/api/api-keys",
            &key,
            json!({"name": "x", "role": "readonly"})
        )
        .await
        .0,
        201
    );
    drop(s);
    let s = SigmaApi::builder().store(&db).admin_key(None).start();
    assert!(
        s.stdout_lines.iter().all(|l| !l.contains("admin key")),
        "printed again: {:?}",
        s.stdout_lines
    );
    assert_eq!(s.get("/api/vps", &key).await.0, 200);
    // A weak SIGMA_ADMIN_KEY is refused at start-up.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sigma-api"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("SIGMA_ADMIN_KEY", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
}

async fn envoy_routes_and_agent_long_poll(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let token = s
        .token(json!({"purpose": "vpn-relay", "max_uses": 2}))
        .await;
    let (_, r) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "relay-1"}),
        )
        .await;
    let agent = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    assert_eq!(r["desired"]["envoy_version"], 0);
    let (_, other) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "relay-2"}),
        )
        .await;
    let other_agent = other["agent_key"].as_str().unwrap().to_string();
    let routes = format!("/api/vps/{id}/envoy-routes");

    let (st, a) = s.post(&routes, k, json!({"name": "wg", "listen_port": 51820, "backend_host": "192.0.2.1", "backend_port": 51820})).await;
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["cluster_type"], "static");
    assert_eq!(a["connect_timeout_ms"], 5000);
    assert_eq!(a["proxy_protocol"], "none");
    let (st, b) = s.post(&routes, k, json!({"name": "https", "listen_port": 443, "backend_host": "Origin.Example.com", "backend_port": 8443, "proxy_protocol": "v2"})).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["cluster_type"], "strict_dns");
    assert_eq!(b["backend_host"], "origin.example.com");
    let (st, v) = s.post(&routes, k, json!({"name": "wg", "listen_port": 1000, "backend_host": "192.0.2.1", "backend_port": 1})).await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = s.post(&routes, k, json!({"name": "x", "listen_port": 443, "backend_host": "192.0.2.1", "backend_port": 1})).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("443"), "{v}");
    let (st, v) = s.post(&routes, k, json!({"name": "Bad Name", "listen_port": 0, "backend_host": "x y", "backend_port": 65536, "cluster_type": "dns"})).await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = s.post(&routes, k, json!({"name": "s", "listen_port": 1, "backend_host": "a.example", "backend_port": 1, "cluster_type": "static"})).await;
    assert_eq!(st, 422);
    field(&v, "backend_host");
    let (st, v) = s.post(&routes, k, json!({"name": "y", "listen_port": 2, "backend_host": "192.0.2.1", "backend_port": 1, "connect_timeout_ms": 0})).await;
    assert_eq!(st, 422);
    field(&v, "connect_timeout_ms");

    // Agents read their own routes: active ones, with the version.
    let cfg_path = "/api/agent/envoy-config?hostname=relay-1";
    let (st, cfg) = s.get(cfg_path, &agent).await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["version"], 2);
    assert_eq!(cfg["routes"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.get(cfg_path, &other_agent).await.0,
        403,
        "another VPS's agent"
    );
    assert_eq!(s.get(cfg_path, k).await.0, 403, "not an agent key");
    assert_eq!(
        s.get(&routes, &agent).await.0,
        403,
        "agents do not use the operator endpoints"
    );
    let (st, v) = s
        .get(
            "/api/agent/envoy-config?hostname=relay-1&wait_seconds=0",
            &agent,
        )
        .await;
    assert_eq!(st, 422);
    field(&v, "wait_seconds");

    // PATCH a route: the version moves, a disabled route leaves the agent's config.
    let bid = b["id"].as_str().unwrap();
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{bid}"),
            k,
            json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, cfg) = s.get(cfg_path, &agent).await;
    assert_eq!(cfg["version"], 3);
    assert_eq!(cfg["routes"].as_array().unwrap().len(), 1);
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{bid}"),
            k,
            json!({"listen_port": 51820}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = s
        .patch(
            &format!("/api/envoy-routes/{bid}"),
            k,
            json!({"backend_port": null}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    let (_, hb) = s
        .post(
            "/api/agent/heartbeat",
            &agent,
            json!({"hostname": "relay-1"}),
        )
        .await;
    assert_eq!(hb["envoy_version"], 3);

    // Long poll: an answer at once when the version differs; a wait that ends on a change.
    let t0 = std::time::Instant::now();
    let (_, cfg) = s.get(&format!("{cfg_path}&known_version=1"), &agent).await;
    assert_eq!(cfg["version"], 3);
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    let waiter = {
        let (client, url, agent) = (
            s.http.clone(),
            s.url(&format!("{cfg_path}&known_version=3&wait_seconds=30")),
            agent.clone(),
        );
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let v: Value = client
                .get(url)
                .bearer_auth(agent)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, t.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (st, _) = s.delete(&format!("/api/envoy-routes/{bid}"), k).await;
    assert_eq!(st, 204);
    let (cfg, waited) = waiter.await.unwrap();
    assert_eq!(cfg["version"], 4, "{cfg}");
    assert!(
        waited < std::time::Duration::from_secs(5),
        "woken by the change, not the timeout: {waited:?}"
    );
    let (st, _) = s
        .get(
            &format!("{cfg_path}&known_version=4&wait_seconds=1"),
            &agent,
        )
        .await;
    assert_eq!(
        st, 200,
        "a long poll without change ends with the current config"
    );

    // Batch upsert: replace by name, add, swap ports, prune; one version step.
    let (st, v) = s
        .request("PUT", &routes, Some(k), Some(json!({"prune": true, "routes": [
            {"name": "wg", "listen_port": 8443, "backend_host": "192.0.2.2", "backend_port": 51820},
            {"name": "dns", "listen_port": 51820, "backend_host": "192.0.2.53", "backend_port": 53, "proxy_protocol": "v1"},
        ]})))
        .await;
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["dns", "wg"]);
    let (_, cfg) = s.get(cfg_path, &agent).await;
    assert_eq!(cfg["version"], 5);
    let (st, v) = s
        .request(
            "PUT",
            &routes,
            Some(k),
            Some(json!({"routes": [
                {"name": "a", "listen_port": 1, "backend_host": "192.0.2.1", "backend_port": 1},
                {"name": "a", "listen_port": 2, "backend_host": "192.0.2.1", "backend_port": 1},
            ]})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "routes[1].name");
    let (_, same) = s
        .request("PUT", &routes, Some(k), Some(json!({"routes": [
            {"name": "wg", "listen_port": 8443, "backend_host": "192.0.2.2", "backend_port": 51820},
        ]})))
        .await;
    assert_eq!(same.as_array().unwrap().len(), 2);
    assert_eq!(
        s.get(cfg_path, &agent).await.1["version"],
        5,
        "an unchanged batch is no new version"
    );

    // The agent reports what its Envoy accepted or rejected; operators see it on the VPS.
    let (st, v) = s
        .post("/api/agent/heartbeat", &agent, json!({"hostname": "relay-1", "agent_state": {
            "mode": "classic", "envoy_applied_version": 4, "xds_clients": 1,
            "last_nack": {"version": "5", "type_url": "type.googleapis.com/envoy.config.listener.v3.Listener",
                          "detail": "cannot bind", "at": "2026-01-01T00:00:00Z"}}}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, vps) = s.get(&format!("/api/vps/{id}"), k).await;
    assert_eq!(vps["agent_state"]["mode"], "classic");
    assert_eq!(vps["agent_state"]["last_nack"]["detail"], "cannot bind");
    let (st, v) = s
        .post(
            "/api/agent/heartbeat",
            &agent,
            json!({"hostname": "relay-1", "agent_state": {"mode": "sidecar"}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "agent_state.mode");

    // A deleted VPS's routes are frozen.
    s.delete(&format!("/api/vps/{id}"), k).await;
    let (st, v) = s
        .post(
            &routes,
            k,
            json!({"name": "z", "listen_port": 9, "backend_host": "192.0.2.1", "backend_port": 9}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, _) = s
        .get(
            "/api/vps/00000000-0000-0000-0000-000000000000/envoy-routes",
            k,
        )
        .await;
    assert_eq!(st, 404);
}

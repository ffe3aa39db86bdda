//! Enrollment and the rules around it (issue 13): who may enroll an existing VPS (the
//! takeover rule and the reinstall token), token presets that follow their provider and are
//! matched exactly, and hostile text and addresses in what agents and operators send. The real
//! sigma-api binary, on SQLite and on PostgreSQL.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(
    takeover_by_any_token_is_refused_and_changes_nothing,
    bound_token_reinstalls_its_vps_only,
    vps_without_live_key_and_retired_vps,
    presets_follow_the_provider_and_match_exactly,
    hostile_text_and_addresses_are_refused_or_normalised,
);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

async fn register(s: &SigmaApi, secret: &str, hostname: &str, ip: &str) -> (u16, Value) {
    s.post(
        "/api/agent/register",
        secret,
        json!({"hostname": hostname, "ip_addresses": [{"ip": ip, "label": "public"}],
               "system_info": {"os": "Debian 12"}}),
    )
    .await
}

async fn heartbeat(s: &SigmaApi, key: &str, hostname: &str) -> u16 {
    s.post("/api/agent/heartbeat", key, json!({"hostname": hostname}))
        .await
        .0
}

/// What a refused enrollment must leave as it was: the VPS (addresses, status, version,
/// everything its WorkloadEntry and Prometheus target are made from), the keys and the tokens.
async fn snapshot(s: &SigmaApi, id: &str) -> (Value, Value, Value) {
    let (_, vps) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
    let (_, tokens) = s.get("/api/enrollment-tokens", ADMIN_KEY).await;
    (vps, keys, tokens)
}

async fn audit(s: &SigmaApi, action: &str) -> Vec<Value> {
    let (st, v) = s
        .get(&format!("/api/audit?action={action}"), ADMIN_KEY)
        .await;
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

async fn takeover_by_any_token_is_refused_and_changes_nothing(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let (st, v) = s
        .post("/api/providers", ADMIN_KEY, json!({"name": "netcup"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let first = s.token(json!({"purpose": "vpn-exit"})).await;
    let (st, r) = register(&s, &first, "edge-1.example.net", "192.0.2.10").await;
    assert_eq!(st, 200, "{r}");
    let key = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    // The admin key's first use is written by the next heartbeat flush (its `last_used_at`):
    // wait for it, so a flush between two snapshots is not taken for a change.
    for _ in 0..100 {
        let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
        if keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["role"] == "admin")
            .all(|k| !k["last_used_at"].is_null())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = snapshot(&s, &id).await;

    // Tokens of every kind of preset, and none: none may take the VPS over.
    for body in [
        json!({}),
        json!({"purpose": "vpn-exit"}),
        json!({"purpose": "xrayr", "provider": "netcup", "country": "de", "tags": ["x"]}),
        json!({"max_uses": 50}),
    ] {
        let token = s.token(body.clone()).await;
        let before = snapshot(&s, &id).await;
        let (st, v) = register(&s, &token, "edge-1.example.net", "198.51.100.66").await;
        assert_eq!(st, 409, "token {body}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("live agent key")
                && msg.contains("sigmactl vps reenroll edge-1.example.net"),
            "the refusal says what to do: {msg}"
        );
        assert_eq!(
            snapshot(&s, &id).await,
            before,
            "a refused takeover changes nothing (VPS, keys, token uses)"
        );
    }
    assert_eq!(snapshot(&s, &id).await.0, before.0);
    assert_eq!(before.0["ip_addresses"][0]["ip"], "192.0.2.10");
    // The agent's own key still works; no other agent key was issued.
    assert_eq!(heartbeat(&s, &key, "edge-1.example.net").await, 200);
    let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
    let agents = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == "agent")
        .count();
    assert_eq!(agents, 1, "{keys}");
    // Each refusal is audited with the token that tried.
    let refused = audit(&s, "vps.enroll_refused").await;
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|e| e["resource_id"] == id.as_str()
        && e["after"]["enrollment_token_id"].is_string()
        && e["after"]["hostname"] == "edge-1.example.net"));
}

async fn bound_token_reinstalls_its_vps_only(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let t = s.token(json!({"purpose": "xrayr", "max_uses": 5})).await;
    let (st, r) = register(&s, &t, "edge-1.example.net", "192.0.2.10").await;
    assert_eq!(st, 200, "{r}");
    let old_key = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    let (st, r) = register(&s, &t, "edge-2.example.net", "192.0.2.20").await;
    assert_eq!(st, 200, "{r}");
    let other_key = r["agent_key"].as_str().unwrap().to_string();

    // A bound token has no presets, one use, and a short life.
    for (body, f) in [
        (json!({"vps_id": id, "purpose": "xrayr"}), "purpose"),
        (json!({"vps_id": id, "tags": ["a"]}), "tags"),
        (json!({"vps_id": id, "max_uses": 2}), "max_uses"),
        (
            json!({"vps_id": id, "ttl_seconds": 7 * 86400}),
            "ttl_seconds",
        ),
        (
            json!({"vps_id": "00000000-0000-4000-8000-000000000000"}),
            "vps_id",
        ),
    ] {
        let (st, v) = s.post("/api/enrollment-tokens", ADMIN_KEY, body).await;
        assert_eq!(st, 422, "{v}");
        field(&v, f);
    }
    let (st, created) = s
        .post(
            "/api/enrollment-tokens",
            ADMIN_KEY,
            json!({"vps_id": id, "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["enrollment_token"]["vps_id"], id.as_str());
    let bound = created["token"].as_str().unwrap().to_string();
    let token_id = created["enrollment_token"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // It cannot enroll another hostname, existing or new; nothing changes.
    for host in ["edge-2.example.net", "new-host.example.net"] {
        let before = snapshot(&s, &id).await;
        let (st, v) = register(&s, &bound, host, "203.0.113.9").await;
        assert_eq!(st, 403, "{host}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("bound to VPS edge-1.example.net")
        );
        assert_eq!(snapshot(&s, &id).await, before);
    }
    assert_eq!(heartbeat(&s, &other_key, "edge-2.example.net").await, 200);
    let (_, list) = s
        .get("/api/vps?hostname=new-host.example.net", ADMIN_KEY)
        .await;
    assert_eq!(list["total"], 0);

    // The reinstall: the old key stops, the new one works, the report is the new host's.
    assert_eq!(heartbeat(&s, &old_key, "edge-1.example.net").await, 200);
    let (st, r) = register(&s, &bound, "edge-1.example.net", "198.51.100.7").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["vps"]["id"], id.as_str());
    assert_eq!(r["vps"]["ip_addresses"][0]["ip"], "198.51.100.7");
    let new_key = r["agent_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    assert_eq!(heartbeat(&s, &old_key, "edge-1.example.net").await, 401);
    assert_eq!(heartbeat(&s, &new_key, "edge-1.example.net").await, 200);
    let (st, _) = s
        .post(
            "/api/agent/register",
            &old_key,
            json!({"hostname": "edge-1.example.net"}),
        )
        .await;
    assert_eq!(st, 401, "the old key cannot register either");
    // Single use.
    let (st, v) = register(&s, &bound, "edge-1.example.net", "198.51.100.7").await;
    assert_eq!(st, 401, "{v}");
    // Audited: who (the token), which token, which VPS, which key was revoked.
    let re = audit(&s, "vps.reenroll").await;
    assert_eq!(re.len(), 1, "{re:?}");
    assert_eq!(re[0]["actor"], format!("enroll:{}", &bound[..12]));
    assert_eq!(re[0]["resource_id"], id.as_str());
    assert_eq!(re[0]["after"]["enrollment_token_id"], token_id.as_str());
    assert_eq!(
        re[0]["after"]["revoked_agent_keys"],
        json!([&old_key[..12]])
    );
    let refused = audit(&s, "vps.enroll_refused").await;
    assert_eq!(refused.len(), 2, "the two wrong hostnames: {refused:?}");
}

async fn vps_without_live_key_and_retired_vps(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    // Pre-created by an operator, never enrolled: an enrollment token claims it.
    let (st, v) = s
        .post(
            "/api/vps",
            ADMIN_KEY,
            VpsBuilder::new("pre.example.net")
                .public_ip("192.0.2.50")
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let t = s.token(json!({"max_uses": 3})).await;
    let (st, r) = register(&s, &t, "pre.example.net", "192.0.2.51").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["vps"]["id"], id.as_str());
    assert_eq!(r["vps"]["status"], "active");
    let key = r["agent_key"].as_str().unwrap().to_string();
    // Now it has a live key: the same token is refused.
    let (st, v) = register(&s, &t, "pre.example.net", "192.0.2.52").await;
    assert_eq!(st, 409, "{v}");
    // An operator revokes the key: a plain token may enroll it again.
    let (_, keys) = s.get("/api/api-keys", ADMIN_KEY).await;
    let key_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["prefix"] == key[..12])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = s
        .post(
            &format!("/api/api-keys/{key_id}/revoke"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, r) = register(&s, &t, "pre.example.net", "192.0.2.53").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["vps"]["ip_addresses"][0]["ip"], "192.0.2.53");

    // Retired: no token enrolls it, and no reinstall token is issued for it.
    let (st, v) = s
        .post(
            &format!("/api/vps/{id}/retire?force=true"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let t2 = s.token(json!({})).await;
    let (st, v) = register(&s, &t2, "pre.example.net", "192.0.2.54").await;
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("retired"));
    let (st, v) = s
        .post("/api/enrollment-tokens", ADMIN_KEY, json!({"vps_id": id}))
        .await;
    assert_eq!(st, 409, "{v}");
    // Deleted: its hostname is free for a new enrollment, a new VPS.
    s.delete(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    let (st, r) = s
        .post(
            "/api/agent/register",
            &t2,
            json!({"hostname": "pre.example.net", "purpose": "monitor"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_ne!(r["vps"]["id"], id.as_str());
}

async fn presets_follow_the_provider_and_match_exactly(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    for name in ["like-target", "like_target", "%", "Keep"] {
        let (st, v) = s
            .post("/api/providers", ADMIN_KEY, json!({"name": name}))
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let mk = |p: &'static str| json!({"purpose": "xrayr", "provider": p, "max_uses": 3});
    let (_, a) = s
        .post("/api/enrollment-tokens", ADMIN_KEY, mk("like-target"))
        .await;
    let (_, b) = s
        .post("/api/enrollment-tokens", ADMIN_KEY, mk("like_target"))
        .await;
    let (_, c) = s
        .post("/api/enrollment-tokens", ADMIN_KEY, mk("Keep"))
        .await;
    let id_of = |v: &Value| v["enrollment_token"]["id"].as_str().unwrap().to_string();
    let (a_id, b_id, c_id) = (id_of(&a), id_of(&b), id_of(&c));
    let revoked = |list: &Value, id: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()["revoked_at"]
            .is_string()
    };
    // Deleting `like_target` revokes its token only; deleting `%` revokes none of them.
    let (st, v) = s.delete("/api/providers/like_target", ADMIN_KEY).await;
    assert_eq!(st, 204, "{v}");
    let (st, v) = s.delete("/api/providers/%25", ADMIN_KEY).await;
    assert_eq!(st, 204, "{v}");
    let (_, list) = s.get("/api/enrollment-tokens", ADMIN_KEY).await;
    assert!(revoked(&list, &b_id), "{list}");
    assert!(
        !revoked(&list, &a_id),
        "like-target's token survives: {list}"
    );
    assert!(!revoked(&list, &c_id), "{list}");
    // The revoked token keeps the name its preset had.
    let b_row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == b_id.as_str())
        .unwrap();
    assert_eq!(b_row["presets"]["provider"], "like_target");

    // Renaming a provider: its tokens follow it and enroll under the new name.
    let (st, v) = s
        .patch(
            "/api/providers/like-target",
            ADMIN_KEY,
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, list) = s.get("/api/enrollment-tokens", ADMIN_KEY).await;
    let a_row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == a_id.as_str())
        .unwrap();
    assert_eq!(a_row["presets"]["provider"], "renamed", "{a_row}");
    let a_secret = a["token"].as_str().unwrap();
    let (st, r) = register(&s, a_secret, "after-rename.example.net", "192.0.2.60").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["vps"]["provider"], "renamed");
    // A token whose provider was deleted fails on the token, never on a field of the agent's.
    let (st, v) = register(
        &s,
        b["token"].as_str().unwrap(),
        "b.example.net",
        "192.0.2.61",
    )
    .await;
    assert_eq!(st, 401, "{v}");
    assert!(v["fields"].as_object().is_none_or(|f| f.is_empty()), "{v}");
    // Purposes are matched exactly too: deleting an unused purpose revokes its tokens only.
    let (st, v) = s
        .post("/api/purposes", ADMIN_KEY, json!({"name": "only-here"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, p) = s
        .post(
            "/api/enrollment-tokens",
            ADMIN_KEY,
            json!({"purpose": "only-here"}),
        )
        .await;
    let (st, v) = s.delete("/api/purposes/only-here", ADMIN_KEY).await;
    assert_eq!(st, 204, "{v}");
    let (_, list) = s.get("/api/enrollment-tokens", ADMIN_KEY).await;
    assert!(revoked(&list, &id_of(&p)));
    assert!(!revoked(&list, &a_id) && !revoked(&list, &c_id));
}

async fn hostile_text_and_addresses_are_refused_or_normalised(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    // A provider named like a UUID could not be reached by name.
    for name in [
        "123e4567-e89b-12d3-a456-426614174000",
        "123E4567E89B12D3A456426614174000",
    ] {
        let (st, v) = s
            .post("/api/providers", ADMIN_KEY, json!({"name": name}))
            .await;
        assert_eq!(st, 422, "{v}");
        field(&v, "name");
    }
    // Control characters, NUL above all, are refused the same on both databases.
    for (path, body, f) in [
        ("/api/providers", json!({"name": "a\u{0}b"}), "name"),
        ("/api/providers", json!({"name": "tab\there"}), "name"),
        (
            "/api/providers",
            json!({"name": "ok", "notes": "x\u{0}"}),
            "notes",
        ),
        (
            "/api/purposes",
            json!({"name": "p1", "display_name": "a\u{1b}[31m"}),
            "display_name",
        ),
        (
            "/api/purposes",
            json!({"name": "p2", "mesh": {"k": "a\u{0}"}}),
            "mesh.k",
        ),
        (
            "/api/vps",
            VpsBuilder::new("h.example.net")
                .set("alias", json!("a\u{7f}"))
                .build(),
            "alias",
        ),
        ("/api/enrollment-tokens", json!({"name": "t\u{0}"}), "name"),
        (
            "/api/api-keys",
            json!({"name": "k\u{0}", "role": "readonly"}),
            "name",
        ),
    ] {
        let (st, v) = s.post(path, ADMIN_KEY, body.clone()).await;
        assert_eq!(st, 422, "{path} {body}: {v}");
        field(&v, f);
    }
    // Multi-line notes are fine.
    let (st, v) = s
        .post(
            "/api/providers",
            ADMIN_KEY,
            json!({"name": "ok", "notes": "line 1\nline 2\tx"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");

    // Agents: NUL or escape sequences in any reported string are refused, naming the field.
    let t = s.token(json!({"purpose": "xrayr"})).await;
    let (st, r) = register(&s, &t, "edge-1.example.net", "192.0.2.10").await;
    assert_eq!(st, 200, "{r}");
    let key = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    for (body, f) in [
        (
            json!({"system_info": {"os": "Debian\u{0}"}}),
            "system_info.os",
        ),
        (
            json!({"system_info": {"kernel": "6.1\n"}}),
            "system_info.kernel",
        ),
        (
            json!({"system_info": {"gpu": {"name": "x\u{0}"}}}),
            "system_info.gpu.name",
        ),
        (
            json!({"agent_state": {"future": ["ok", "\u{1b}]0;pwned\u{7}"]}}),
            "agent_state.future[1]",
        ),
    ] {
        let mut b = body.clone();
        b["hostname"] = json!("edge-1.example.net");
        let (st, v) = s.post("/api/agent/heartbeat", &key, b).await;
        assert_eq!(st, 422, "{body}: {v}");
        field(&v, f);
    }
    let (_, got) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(
        got["system_info"]["os"], "Debian 12",
        "nothing of the refused reports stored"
    );

    // IPv4-mapped IPv6 is the IPv4 address: stored as such, and never twice.
    let (st, v) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": "edge-1.example.net", "ip_addresses": [{"ip": "::ffff:192.0.2.9", "label": "public"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, got) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(
        got["ip_addresses"],
        json!([{"ip": "192.0.2.9", "label": "public"}])
    );
    let twice = json!([{"ip": "192.0.2.9", "label": "public"}, {"ip": "::FFFF:c000:209", "label": "private"}]);
    let (st, v) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": "edge-1.example.net", "ip_addresses": twice}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "ip_addresses[1].ip");
    let (st, v) = s
        .post(
            "/api/vps",
            ADMIN_KEY,
            VpsBuilder::new("h2.example.net")
                .set("ip_addresses", twice.clone())
                .build(),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "ip_addresses[1].ip");
    let (st, v) = s
        .post(
            "/api/vps",
            ADMIN_KEY,
            VpsBuilder::new("h3.example.net")
                .public_ip("::ffff:198.51.100.1")
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["ip_addresses"][0]["ip"], "198.51.100.1");
    let (st, v) = s
        .patch(
            &format!("/api/vps/{}", v["id"].as_str().unwrap()),
            ADMIN_KEY,
            json!({"ip_addresses": [{"ip": "::ffff:198.51.100.2", "label": "public"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ip_addresses"][0]["ip"], "198.51.100.2");

    // Envoy route backends: a mapped address is the IPv4 one (a static cluster); an
    // all-digit last label is no DNS name.
    let route = |host: &str| json!({"name": "r", "listen_port": 8443, "backend_host": host, "backend_port": 443});
    for host in ["256.1.1.1", "1.2.3.4.5", "example.123"] {
        let (st, v) = s
            .post(
                &format!("/api/vps/{id}/envoy-routes"),
                ADMIN_KEY,
                route(host),
            )
            .await;
        assert_eq!(st, 422, "{host}: {v}");
        field(&v, "backend_host");
    }
    let (st, v) = s
        .post(
            &format!("/api/vps/{id}/envoy-routes"),
            ADMIN_KEY,
            route("::ffff:192.0.2.77"),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["backend_host"], "192.0.2.77");
    assert_eq!(v["cluster_type"], "static");
}

//! Integration tests of the mesh registry: the real sigma-api binary, on SQLite and PostgreSQL.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(
    purpose_mesh_settings_are_validated_on_write,
    vps_mesh_opt_out_and_status,
    manifests_are_deterministic_and_follow_the_inventory,
    manifests_refuse_invalid_stored_settings,
);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

fn xrayr_mesh() -> Value {
    json!({
        "enabled": true,
        "ports": [{"name": "vless", "number": 443, "protocol": "TCP"},
                  {"name": "metrics", "number": 9100, "protocol": "HTTP"}],
        "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]
    })
}

async fn manifests(s: &SigmaApi, key: &str) -> (u16, String, String) {
    let resp = s
        .http
        .get(s.url("/api/mesh/manifests"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

async fn purpose_mesh_settings_are_validated_on_write(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    // A port range and a misspelt protocol, each named precisely; nothing is stored.
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "ports": [
                {"name": "a", "number": 80, "protocol": "HTTP"},
                {"name": "b", "number": "10000-30000", "protocol": "TCP"}
            ]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        field(&v, "mesh.ports[1].number").contains("port range"),
        "{v}"
    );
    assert_eq!(
        s.get("/api/purposes/edge", k).await.0,
        404,
        "nothing stored"
    );
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "ports": [
                {"name": "a", "number": 80, "protocol": "HTTP"},
                {"name": "b", "number": 81, "protocol": "HTPP"}
            ]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        field(&v, "mesh.ports[1].protocol").contains("Istio accepts only"),
        "{v}"
    );
    // Semantic errors are reported together.
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "service_account": "Bad_SA", "ports": [
                {"name": "admin", "number": 15000, "protocol": "HTTP"}
            ], "egress": [{"host": "xboard", "port": 443, "protocol": "HTTPS"}]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "mesh.service_account");
    field(&v, "mesh.ports[0].number");
    field(&v, "mesh.egress[0].host");
    // A mesh-facing port that clashes with the application's own port, another listener or
    // Istio's ports is named by its path; a string is refused while decoding.
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "ports": [
                {"name": "a", "number": 8443, "protocol": "TCP", "mesh_port": 8443},
                {"name": "b", "number": 8444, "protocol": "TCP", "mesh_port": 15443},
                {"name": "c", "number": 8445, "protocol": "TCP", "mesh_port": 16000},
                {"name": "d", "number": 8446, "protocol": "TCP", "mesh_port": 16000}
            ]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        field(&v, "mesh.ports[0].mesh_port").contains("application port"),
        "{v}"
    );
    assert!(
        field(&v, "mesh.ports[1].mesh_port").contains("reserved by Istio"),
        "{v}"
    );
    assert!(
        field(&v, "mesh.ports[3].mesh_port").contains("ports[2]"),
        "{v}"
    );
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "ports": [
                {"name": "a", "number": 8443, "protocol": "TCP", "mesh_port": "16000"}
            ]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "mesh.ports[0].mesh_port");
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": {"enabled": true, "portz": []}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("mesh"), "{v}");

    // Valid settings are stored as given; `{}` (disabled) stays valid.
    let (st, v) = s
        .post(
            "/api/purposes",
            k,
            json!({"name": "edge", "mesh": xrayr_mesh()}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["mesh"], xrayr_mesh());
    let (st, v) = s.patch("/api/purposes/xrayr", k, json!({"mesh": {}})).await;
    assert_eq!(st, 200, "{v}");

    // PATCH validates the same way and leaves the stored settings alone when refused.
    let (st, v) = s
        .patch(
            "/api/purposes/edge",
            k,
            json!({"mesh": {"enabled": true, "ports": [{"name": "x", "number": 70000, "protocol": "TCP"}]}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "mesh.ports[0].number");
    let (st, v) = s
        .patch(
            "/api/purposes/edge",
            k,
            json!({"mesh": {"interception": {"mode": "iptables"}}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "mesh.interception.service_cidrs");
    let (_, v) = s.get("/api/purposes/edge", k).await;
    assert_eq!(v["mesh"], xrayr_mesh(), "refused patches change nothing");

    // The OpenAPI document describes the mesh object's fields, mesh_port included.
    let (st, doc) = s.get("/api/openapi.json", k).await;
    assert_eq!(st, 200);
    for schema in ["Purpose", "PurposeCreate", "PurposePatch"] {
        let d = doc["components"]["schemas"][schema]["properties"]["mesh"]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{schema}.mesh has no description"));
        assert!(
            d.contains("`mesh_port`") && d.contains("15100-16099"),
            "{schema}: {d}"
        );
    }
}

async fn vps_mesh_opt_out_and_status(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, v) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("edge-1.example.com")
                .public_ip("203.0.113.7")
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["mesh_opt_out"], false);
    assert_eq!(v["mesh"]["status"], "pending", "{v}");
    for f in ["message", "last_attempt_at", "workload_entry"] {
        assert!(v["mesh"].get(f).is_some(), "mesh.{f} missing: {v}");
    }
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/api/vps/{id}");

    let (st, v) = s.patch(&path, k, json!({"mesh_opt_out": true})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["mesh_opt_out"], true);
    let (_, v) = s.get(&path, k).await;
    assert_eq!(v["mesh_opt_out"], true, "stored");
    // Other fields still patch, and opt-out stays.
    let (st, v) = s.patch(&path, k, json!({"alias": "e1"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["mesh_opt_out"], true);

    for (bad, want) in [(json!(null), "cannot be null"), (json!("yes"), "boolean")] {
        let (st, v) = s.patch(&path, k, json!({"mesh_opt_out": bad})).await;
        assert_eq!(st, 422, "{v}");
        assert!(field(&v, "mesh_opt_out").contains(want), "{v}");
    }
    // Unknown fields and bad values of the other fields are still named.
    let (st, v) = s.patch(&path, k, json!({"mesh_opt_in": true})).await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = s.patch(&path, k, json!({"country": "Germany"})).await;
    assert_eq!(st, 422, "{v}");
    field(&v, "country");

    let (st, v) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("edge-2.example.com")
                .set("mesh_opt_out", json!(true))
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["mesh_opt_out"], true);
    let (_, list) = s.get("/api/vps", k).await;
    for item in list["items"].as_array().unwrap() {
        assert!(item["mesh"]["status"].is_string(), "{item}");
    }
}

async fn manifests_are_deterministic_and_follow_the_inventory(db: TestDb) {
    let s = SigmaApi::builder()
        .store(&db)
        .envs(vec![("SIGMA_MESH_MODE".into(), "export".into())])
        .start();
    let k = ADMIN_KEY;
    let (st, v) = s
        .patch("/api/purposes/xrayr", k, json!({"mesh": xrayr_mesh()}))
        .await;
    assert_eq!(st, 200, "{v}");
    s.post("/api/providers", k, json!({"name": "Hetzner"}))
        .await;
    let mut ids = vec![];
    for (h, ip) in [
        ("edge-1.example.com", "203.0.113.7"),
        ("edge-2.example.com", "203.0.113.8"),
        ("edge-3.example.com", "127.0.0.5"),
    ] {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new(h)
                    .public_ip(ip)
                    .set("status", json!("active"))
                    .set("country", json!("NO"))
                    .set("provider", json!("Hetzner"))
                    .build(),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // edge-3 only has a loopback address: no endpoint other hosts can reach.
    let reader = s.key("readonly").await;
    let (st, ctype, first) = manifests(&s, &reader).await;
    assert_eq!(st, 200, "{first}");
    assert!(ctype.starts_with("application/yaml"), "{ctype}");
    let (_, _, second) = manifests(&s, k).await;
    assert_eq!(first, second, "same inventory, same bytes");
    for want in [
        "kind: WorkloadGroup",
        "kind: ServiceEntry",
        "kind: Sidecar",
        "kind: DestinationRule",
        // Served ports reach the application through the VPS's ingress listener.
        "  ingress:\n  - port:\n",
        "    captureMode: NONE\n    defaultEndpoint: \"127.0.0.1:443\"\n",
        "    defaultEndpoint: \"127.0.0.1:9100\"\n",
        "name: vps-edge-1-example-com--",
        "name: vps-edge-2-example-com--",
        "address: \"203.0.113.7\"",
        "country: \"NO\"",
        "network: provider-Hetzner",
        "namespace: sigma",
        "app.kubernetes.io/managed-by: sigma",
    ] {
        assert!(first.contains(want), "missing {want:?} in\n{first}");
    }
    assert!(
        first.contains(&format!(
            "#   skipped {} edge-3.example.com: no address usable",
            ids[2]
        )),
        "skipped VPS named in the header:\n{first}"
    );
    assert!(first.starts_with("# "), "{first}");
    // Every document is YAML a Kubernetes client reads.
    let docs: Vec<&str> = first.split("\n---\n").collect();
    assert!(docs.len() >= 6, "{}", docs.len());

    // A retire removes the entry; the rest is byte-identical.
    let (st, _) = s
        .post(
            &format!("/api/vps/{}/retire?force=true", ids[1]),
            k,
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, _, after) = manifests(&s, k).await;
    assert_ne!(after, first);
    assert!(!after.contains("vps-edge-2-example-com"), "{after}");
    assert!(after.contains("vps-edge-1-example-com"));
    let (_, _, again) = manifests(&s, k).await;
    assert_eq!(after, again);

    // Opting out removes it too; opting back in restores the original bytes once the retired
    // VPS is re-activated.
    let (st, _) = s
        .patch(
            &format!("/api/vps/{}", ids[0]),
            k,
            json!({"mesh_opt_out": true}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, _, opted) = manifests(&s, k).await;
    assert!(!opted.contains("vps-edge-1-example-com"), "{opted}");
    s.patch(
        &format!("/api/vps/{}", ids[0]),
        k,
        json!({"mesh_opt_out": false}),
    )
    .await;
    for to in ["provisioning", "active"] {
        let (st, v) = s
            .patch(&format!("/api/vps/{}", ids[1]), k, json!({"status": to}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let (_, _, back) = manifests(&s, k).await;
    assert_eq!(back, first, "same inventory again, same bytes again");

    // Agents may not read it.
    let token = s.token(json!({"purpose": "xrayr", "max_uses": 1})).await;
    let (st, v) = s
        .request(
            "POST",
            "/api/agent/register",
            Some(&token),
            Some(json!({"hostname": "agent-1.example.com"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let agent_key = v["agent_key"].as_str().unwrap().to_string();
    assert_eq!(manifests(&s, &agent_key).await.0, 403);
    assert_eq!(
        s.request("GET", "/api/mesh/manifests", None, None).await.0,
        401
    );
}

async fn manifests_refuse_invalid_stored_settings(db: TestDb) {
    // Settings stored before validation existed: the export must refuse rather than leave the
    // purpose's objects out (a GitOps sync would then delete them).
    let mut s = SigmaApi::builder().store(&db).start();
    s.stop();
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE purposes SET mesh = $1 WHERE name = 'xrayr'")
            .bind(r#"{"enabled": true, "ports": [{"name": "p", "number": "1-2", "protocol": "TCP"}]}"#)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let s = SigmaApi::builder().store(&db).start();
    let (st, _, body) = manifests(&s, ADMIN_KEY).await;
    assert_eq!(st, 409, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "mesh_invalid");
    assert!(
        field(&v, "purposes.xrayr.mesh.ports[0].number").contains("port range"),
        "{v}"
    );
    // Fixing it through the API makes the export work again.
    let (st, _) = s
        .patch("/api/purposes/xrayr", ADMIN_KEY, json!({"mesh": {}}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(manifests(&s, ADMIN_KEY).await.0, 200);
}

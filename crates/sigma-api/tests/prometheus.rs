//! Prometheus service discovery against the real binary, on SQLite and PostgreSQL.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(targets_follow_the_inventory, shards_split_the_fleet);

fn groups<'a>(v: &'a Value, kind: &str, hostname: &str) -> Vec<&'a Value> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|g| g["labels"]["sigma_target_kind"] == kind && g["labels"]["hostname"] == hostname)
        .collect()
}

async fn targets_follow_the_inventory(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    s.post("/api/providers", k, json!({"name": "netcup"})).await;
    let (st, v) = s
        .post("/api/purposes", k, json!({"name": "edge", "mesh": {"enabled": true, "ports": [{"name": "http", "number": 8080, "protocol": "HTTP"}]}}))
        .await;
    assert_eq!(st, 201, "{v}");
    let mk = |h: &str, purpose: &str, ips: Value| {
        VpsBuilder::new(h)
            .set("purpose", json!(purpose))
            .set("ip_addresses", ips)
            .set("status", json!("active"))
    };
    let (_, a) = s
        .post("/api/vps", k, mk("a.example.net", "edge", json!([{"ip": "10.0.0.1", "label": "private"}, {"ip": "203.0.113.5", "label": "public"}]))
            .set("provider", json!("netcup")).set("tags", json!(["t2", "t1"])).set("country", json!("DE")).set("city", json!("Berlin")).build())
        .await;
    s.post(
        "/api/vps",
        k,
        mk(
            "b.example.net",
            "xrayr",
            json!([{"ip": "2001:db8::5", "label": "public"}]),
        )
        .set("monitoring", json!(false))
        .build(),
    )
    .await;
    let (_, c) = s
        .post(
            "/api/vps",
            k,
            mk(
                "c.example.net",
                "edge",
                json!([{"ip": "203.0.113.7", "label": "public"}]),
            )
            .build(),
        )
        .await;
    s.post(
        &format!("/api/vps/{}/retire?force=true", c["id"].as_str().unwrap()),
        k,
        json!({}),
    )
    .await;
    s.post(
        "/api/vps",
        k,
        mk(
            "d.example.net",
            "edge",
            json!([{"ip": "203.0.113.8", "label": "public"}]),
        )
        .set("status", json!("provisioning"))
        .build(),
    )
    .await;
    let (st, e) = s
        .post(
            "/api/vps",
            k,
            mk(
                "e.example.net",
                "edge",
                json!([{"ip": "203.0.113.9", "label": "public"}]),
            )
            .set("mesh_opt_out", json!(true))
            .build(),
        )
        .await;
    assert_eq!(st, 201, "{e}");

    let (st, all) = s.get("/api/prometheus/targets", k).await;
    assert_eq!(st, 200, "{all}");
    let node = groups(&all, "node", "a.example.net");
    assert_eq!(node.len(), 1);
    assert_eq!(
        node[0]["targets"],
        json!(["203.0.113.5:9100"]),
        "the public address, not the first listed"
    );
    let l = &node[0]["labels"];
    assert_eq!(l["vps_id"], a["id"]);
    assert_eq!(l["provider"], "netcup");
    assert_eq!(l["country"], "DE");
    assert_eq!(l["city"], "Berlin");
    assert_eq!(l["purpose"], "edge");
    assert_eq!(l["status"], "active");
    assert_eq!(l["tags"], "t1,t2");
    assert!(
        groups(&all, "node", "b.example.net").is_empty(),
        "monitoring off"
    );
    assert_eq!(
        groups(&all, "agent", "b.example.net")[0]["targets"],
        json!(["[2001:db8::5]:9102"]),
        "IPv6 bracketed"
    );
    let envoy = groups(&all, "envoy", "a.example.net");
    assert_eq!(envoy[0]["targets"], json!(["203.0.113.5:15090"]));
    assert_eq!(envoy[0]["labels"]["__metrics_path__"], "/stats/prometheus");
    assert!(
        envoy[0]["labels"]["workload_entry"]
            .as_str()
            .unwrap()
            .starts_with("vps-a-example-net")
    );
    assert!(
        groups(&all, "envoy", "b.example.net").is_empty(),
        "xrayr has the mesh off"
    );
    assert!(
        groups(&all, "envoy", "d.example.net").is_empty(),
        "provisioning is not in the mesh"
    );
    assert_eq!(
        groups(&all, "agent", "d.example.net").len(),
        1,
        "provisioning is scraped"
    );
    assert!(
        groups(&all, "envoy", "e.example.net").is_empty(),
        "opted out"
    );
    assert!(
        all.to_string().contains("a.example.net") && !all.to_string().contains("c.example.net"),
        "retired VPS disappear"
    );

    let (_, only) = s.get("/api/prometheus/targets?kind=envoy", k).await;
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|g| g["labels"]["sigma_target_kind"] == "envoy")
    );
    assert_eq!(only.as_array().unwrap().len(), 1);
    let (st, v) = s.get("/api/prometheus/targets?kind=pods", k).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(
        s.request("GET", "/api/prometheus/targets", None, None)
            .await
            .0,
        401
    );
    let ro = s.key("readonly").await;
    assert_eq!(s.get("/api/prometheus/targets", &ro).await.0, 200);

    // The document is cached between inventory changes: an edit and a retirement after it was
    // served must show in the very next answer.
    let a_id = a["id"].as_str().unwrap().to_string();
    let (st, v) = s
        .request(
            "PATCH",
            &format!("/api/vps/{a_id}"),
            Some(k),
            Some(json!({"alias": "berlin-1"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, all) = s.get("/api/prometheus/targets", k).await;
    assert_eq!(
        groups(&all, "agent", "a.example.net")[0]["labels"]["alias"],
        "berlin-1"
    );
    s.post(&format!("/api/vps/{a_id}/retire?force=true"), k, json!({}))
        .await;
    let (_, all) = s.get("/api/prometheus/targets", k).await;
    assert!(
        !all.to_string().contains("a.example.net"),
        "a VPS retired after the document was served disappears from the next one"
    );
}

/// Sharded service discovery: every target is in exactly one shard, the shards together are the
/// whole document, a VPS keeps its shard, and bad shard parameters are named.
async fn shards_split_the_fleet(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    for i in 0..24 {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new(&format!("s{i}.example.net"))
                    .set("status", json!("active"))
                    .set(
                        "ip_addresses",
                        json!([{"ip": format!("203.0.113.{i}"), "label": "public"}]),
                    )
                    .build(),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let key = |g: &Value| format!("{} {}", g["labels"]["sigma_target_kind"], g["targets"][0]);
    let (st, all) = s.get("/api/prometheus/targets", k).await;
    assert_eq!(st, 200, "{all}");
    let mut whole: Vec<String> = all.as_array().unwrap().iter().map(key).collect();
    whole.sort();
    assert_eq!(whole.len(), 48, "node and agent targets of 24 VPS");

    let mut union = vec![];
    let mut sizes = vec![];
    for shard in 0..3 {
        let (st, part) = s
            .get(
                &format!("/api/prometheus/targets?shards=3&shard={shard}"),
                k,
            )
            .await;
        assert_eq!(st, 200, "{part}");
        let part: Vec<String> = part.as_array().unwrap().iter().map(key).collect();
        sizes.push(part.len());
        union.extend(part);
    }
    union.sort();
    assert_eq!(
        union, whole,
        "the shards are the whole document, each target once"
    );
    assert!(
        sizes.iter().all(|&n| n > 0 && n < 48),
        "a split, not one shard with everything: {sizes:?}"
    );
    // A VPS's node and agent targets travel together, and a shard is stable across builds.
    let (_, again) = s
        .get("/api/prometheus/targets?shards=3&shard=1&kind=agent", k)
        .await;
    let (_, first) = s.get("/api/prometheus/targets?shards=3&shard=1", k).await;
    let hosts = |v: &Value, kind: &str| -> Vec<String> {
        let mut h: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["labels"]["sigma_target_kind"] == kind)
            .map(|g| g["labels"]["hostname"].as_str().unwrap().to_string())
            .collect();
        h.sort();
        h
    };
    assert_eq!(hosts(&again, "agent"), hosts(&first, "node"));

    for (query, field) in [
        ("shards=3", "shard"),
        ("shard=0", "shards"),
        ("shards=3&shard=3", "shard"),
        ("shards=0&shard=0", "shards"),
        ("shards=1025&shard=0", "shards"),
    ] {
        let (st, v) = s.get(&format!("/api/prometheus/targets?{query}"), k).await;
        assert_eq!(st, 422, "{query}: {v}");
        assert!(
            v["fields"].get(field).is_some(),
            "{query} names {field}: {v}"
        );
    }
}

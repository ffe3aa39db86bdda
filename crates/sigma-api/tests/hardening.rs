//! HTTP-layer hardening (issue 13): closed metric labels, one JSON object per body, duplicate
//! keys, credentials and roles checked before the body, and hostile path and query values —
//! against the real sigma-api binary, on SQLite and on PostgreSQL.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, Backend, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(
    bodies_are_exactly_one_json_object,
    duplicate_keys_are_refused_at_any_depth,
    credentials_and_roles_come_before_the_body,
    hostile_path_and_query_values_are_named,
);

/// A request with anything: a made-up method, a raw path, raw bytes.
async fn send(
    s: &SigmaApi,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.http.request(m, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some((ctype, bytes)) = body {
        req = req.header("content-type", ctype).body(bytes);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    if status >= 400 {
        assert!(
            ctype.starts_with("application/json"),
            "{method} {path}: error {status} is not JSON ({ctype}): {text}"
        );
    }
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

async fn json_body(s: &SigmaApi, method: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
    send(
        s,
        method,
        path,
        Some(key),
        Some(("application/json", body.as_bytes().to_vec())),
    )
    .await
}

/// Asserts a 422 naming `field`.
#[track_caller]
fn assert_field(got: &(u16, Value), field: &str, what: &str) {
    assert_eq!(got.0, 422, "{what}: {}", got.1);
    assert!(
        got.1["fields"].get(field).is_some(),
        "{what}: field {field} not named: {}",
        got.1
    );
}

/// Everything an operator can list, to show a refused request changed nothing.
async fn snapshot(s: &SigmaApi) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/api/providers?limit=1000",
        "/api/purposes?limit=1000",
        "/api/vps?limit=1000",
        "/api/enrollment-tokens?limit=1000",
        "/api/api-keys?limit=1000",
    ] {
        let (st, mut v) = s.get(path, ADMIN_KEY).await;
        assert_eq!(st, 200, "{path}: {v}");
        // Reads touch last_used_at; only what a write would change matters.
        for item in v["items"].as_array_mut().unwrap() {
            if let Some(o) = item.as_object_mut() {
                o.remove("last_used_at");
                o.remove("last_seen_at");
            }
        }
        out.insert(path.into(), v);
    }
    Value::Object(out)
}

// -----------------------------------------------------------------------------------------
// Defect 3: request metric labels from closed sets.

fn request_series(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("sigma_api_http_request_duration_seconds_count{"))
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let s = SigmaApi::builder().store(&db).start();
    let paths = |i: usize| {
        [
            "/api/vps".to_string(),
            format!("/api/vps/{i}"),
            format!("/no/such/route/{i}"),
            format!("/api/vps/{i}/nothing-here"),
            "/healthz".to_string(),
        ]
    };
    // One round of everything the flood sends, so each class has its series already.
    for p in paths(0) {
        send(&s, "MADEUP", &p, Some(ADMIN_KEY), None).await;
        send(&s, "GET", &p, None, None).await;
    }
    // The first scrape is counted after it is rendered: its series shows in the second.
    let (st, _) = s.get("/metrics", ADMIN_KEY).await;
    assert_eq!(st, 200);
    let (_, m) = s.get("/metrics", ADMIN_KEY).await;
    let before = request_series(m.as_str().unwrap());
    let (_, m) = s.get("/metrics", ADMIN_KEY).await;
    let before_again = request_series(m.as_str().unwrap());

    for i in 1..=150 {
        for p in paths(i) {
            let (st, _) = send(&s, &format!("X-M{i}"), &p, Some(ADMIN_KEY), None).await;
            assert!(st < 500, "made-up method {i} on {p}: {st}");
        }
        send(&s, "GET", &format!("/no/such/route/{i}"), None, None).await;
    }
    let (_, m) = s.get("/metrics", ADMIN_KEY).await;
    let after = request_series(m.as_str().unwrap());
    assert_eq!(
        before_again.len(),
        before.len(),
        "scraping itself added series"
    );
    assert_eq!(
        after.len(),
        before.len(),
        "750 made-up requests added series: {:?}",
        after
            .iter()
            .filter(|l| !before.contains(l))
            .take(5)
            .collect::<Vec<_>>()
    );
    for line in &after {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no method label in {line}"));
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                "other"
            ]
            .contains(&method),
            "method label {method:?} is outside the closed set"
        );
    }
    assert!(
        after
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"unmatched\"")),
        "made-up methods are counted as other: {after:?}"
    );
}

// -----------------------------------------------------------------------------------------
// Defect 4: exactly one JSON object.

async fn bodies_are_exactly_one_json_object(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, vps) = s.post("/api/vps", k, VpsBuilder::new("one").build()).await;
    assert_eq!(st, 201, "{vps}");
    let vps_path = format!("/api/vps/{}", vps["id"].as_str().unwrap());
    let before = snapshot(&s).await;

    for (path, method, body) in [
        ("/api/providers", "POST", r#"{"name":"x"} garbage"#),
        ("/api/providers", "POST", r#"{"name":"a"}{"name":"b"}"#),
        ("/api/providers", "POST", r#"{"name":"a"} {"name":"b"}"#),
        ("/api/providers", "POST", r#"{"name":"a"},"#),
        ("/api/providers", "POST", r#"["p","DE"]"#),
        ("/api/providers", "POST", r#"["p"]"#),
        ("/api/providers", "POST", r#""p""#),
        ("/api/providers", "POST", "1"),
        ("/api/providers", "POST", "null"),
        ("/api/providers", "POST", "true"),
        ("/api/providers", "POST", ""),
        ("/api/enrollment-tokens", "POST", "[]"),
        ("/api/enrollment-tokens", "POST", "{} {}"),
        ("/api/purposes", "POST", r#"["edge"]"#),
        ("/api/vps", "POST", r#"["two","xrayr"]"#),
        (&vps_path, "PATCH", "[]"),
        (&vps_path, "PATCH", r#"{"alias":"a"} x"#),
        (&vps_path, "PATCH", r#"{"alias":"a"}{"alias":"b"}"#),
        (&vps_path, "PATCH", "null"),
        ("/api/api-keys", "POST", r#"["k","admin"]"#),
    ] {
        let got = json_body(&s, method, path, k, body).await;
        assert_field(&got, "body", &format!("{method} {path} {body:?}"));
    }
    // The positional form is refused inside the object too.
    let got = json_body(
        &s,
        "POST",
        "/api/vps",
        k,
        r#"{"hostname":"two","purpose":"xrayr","ip_addresses":[["192.0.2.7","public"]]}"#,
    )
    .await;
    assert_field(&got, "ip_addresses[0]", "nested positional struct");
    // Also in the one body a handler takes apart before typing it.
    let got = json_body(
        &s,
        "PATCH",
        &vps_path,
        k,
        r#"{"ip_addresses":[["192.0.2.7","public"]]}"#,
    )
    .await;
    assert_field(&got, "ip_addresses[0]", "nested positional struct in PATCH");
    assert_eq!(snapshot(&s).await, before, "a refused body changed data");

    // Whitespace around the one object is fine.
    let got = json_body(
        &s,
        "POST",
        "/api/providers",
        k,
        " \n{\"name\":\"ws\"} \r\n\t ",
    )
    .await;
    assert_eq!(got.0, 201, "{}", got.1);
    let got = json_body(&s, "PATCH", &vps_path, k, "{\"alias\":\"web\"}\n").await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["alias"], "web");
}

// -----------------------------------------------------------------------------------------
// Defect 5: duplicate keys, at any depth, on every body.

async fn duplicate_keys_are_refused_at_any_depth(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, vps) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("dup").set("alias", json!("first")).build(),
        )
        .await;
    assert_eq!(st, 201, "{vps}");
    let id = vps["id"].as_str().unwrap();
    let vps_path = format!("/api/vps/{id}");
    let before = snapshot(&s).await;

    for (method, path, body, field) in [
        (
            "PATCH",
            vps_path.as_str(),
            r#"{"alias":"a","alias":"b"}"#,
            "alias",
        ),
        (
            "PATCH",
            vps_path.as_str(),
            r#"{"mesh_opt_out":true,"mesh_opt_out":false}"#,
            "mesh_opt_out",
        ),
        (
            "PATCH",
            vps_path.as_str(),
            r#"{"ip_addresses":[{"ip":"192.0.2.1","ip":"192.0.2.2"}]}"#,
            "ip_addresses[0].ip",
        ),
        (
            "POST",
            "/api/providers",
            r#"{"name":"a","name":"b"}"#,
            "name",
        ),
        (
            "POST",
            "/api/purposes",
            r#"{"name":"edge","mesh":{"enabled":true,"enabled":false}}"#,
            "mesh.enabled",
        ),
        (
            "POST",
            "/api/purposes",
            r#"{"name":"edge","mesh":{"ports":[{"number":1,"number":2}]}}"#,
            "mesh.ports[0].number",
        ),
        (
            "POST",
            "/api/enrollment-tokens",
            r#"{"purpose":"xrayr","purpose":"monitor"}"#,
            "purpose",
        ),
    ] {
        let got = json_body(&s, method, path, k, body).await;
        assert_field(&got, field, &format!("{method} {path} {body}"));
        assert!(
            got.1["fields"][field]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{}",
            got.1
        );
    }
    assert_eq!(snapshot(&s).await, before, "a refused body changed data");
    // An agent's heartbeat too: its key first, then the body.
    let (st, v) = s
        .post(
            "/api/api-keys",
            k,
            json!({"name": "dup agent", "role": "agent", "vps_id": id}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let agent = v["key"].as_str().unwrap().to_string();
    let before = snapshot(&s).await;
    let got = json_body(
        &s,
        "POST",
        "/api/agent/heartbeat",
        &agent,
        r#"{"hostname":"dup","system_info":{"cpu_cores":1,"cpu_cores":2}}"#,
    )
    .await;
    assert_field(&got, "system_info.cpu_cores", "heartbeat");
    assert_eq!(snapshot(&s).await, before, "a refused body changed data");
    let (_, v) = s.get(&vps_path, k).await;
    assert_eq!(v["alias"], "first");
    assert_eq!(v["mesh_opt_out"], false);
}

// -----------------------------------------------------------------------------------------
// Defect 6: credentials, then role, then path, query and body.

async fn credentials_and_roles_come_before_the_body(db: TestDb) {
    // A small body limit, so an oversized body is among the malformed ones.
    let s = SigmaApi::builder()
        .store(&db)
        .envs(vec![("SIGMA_MAX_BODY_BYTES".into(), "1024".into())])
        .start();
    let k = ADMIN_KEY;
    let (st, vps) = s
        .post("/api/vps", k, VpsBuilder::new("auth1").build())
        .await;
    assert_eq!(st, 201, "{vps}");
    let id = vps["id"].as_str().unwrap().to_string();
    let (st, route) = s
        .post(
            &format!("/api/vps/{id}/envoy-routes"),
            k,
            json!({"name": "r1", "listen_port": 8080, "backend_host": "127.0.0.1", "backend_port": 80}),
        )
        .await;
    assert_eq!(st, 201, "{route}");
    let route_id = route["id"].as_str().unwrap().to_string();
    let ro = s.key("readonly").await;
    let op = s.key("operator").await;
    let (st, v) = s
        .post(
            "/api/api-keys",
            k,
            json!({"name": "a", "role": "agent", "vps_id": id}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let agent = v["key"].as_str().unwrap().to_string();
    let revoked = s.key("operator").await;
    let (_, keys) = s.get("/api/api-keys?limit=1000", k).await;
    let revoked_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["prefix"].as_str().is_some_and(|p| revoked.starts_with(p)))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = s
        .post(&format!("/api/api-keys/{revoked_id}/revoke"), k, json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let unknown = "sgm_deadbeef_000000000000000000000000000000000000000000000000";
    let before = snapshot(&s).await;

    // (method, path, who may call it)
    const OP: &str = "operator";
    const ADM: &str = "admin";
    const AGENT: &str = "agent";
    let writes: Vec<(&str, String, &str)> = vec![
        ("POST", "/api/providers".into(), OP),
        ("PATCH", "/api/providers/nope".into(), OP),
        ("POST", "/api/purposes".into(), OP),
        ("PATCH", "/api/purposes/xrayr".into(), OP),
        ("POST", "/api/vps".into(), OP),
        ("PATCH", format!("/api/vps/{id}"), OP),
        ("PATCH", "/api/vps/not-a-uuid".into(), OP),
        ("POST", format!("/api/vps/{id}/envoy-routes"), OP),
        ("PUT", format!("/api/vps/{id}/envoy-routes"), OP),
        ("PATCH", format!("/api/envoy-routes/{route_id}"), OP),
        ("POST", "/api/enrollment-tokens".into(), OP),
        ("POST", "/api/api-keys".into(), ADM),
        ("POST", "/api/agent/heartbeat".into(), AGENT),
    ];
    let malformed: [(&str, &[u8]); 5] = [
        ("application/json", b"{"),
        ("application/json", b"{\"no_such_field\":1}"),
        ("application/json", b"[]"),
        ("text/plain", b"hello"),
        ("application/json", &[b'x'; 4096]),
    ];
    for (method, path, needs) in &writes {
        for (ctype, body) in malformed {
            let what = format!("{method} {path} {ctype} {:?}", &body[..body.len().min(20)]);
            for key in [None, Some(unknown), Some(revoked.as_str()), Some("garbage")] {
                let (st, v) = send(&s, method, path, key, Some((ctype, body.to_vec()))).await;
                assert_eq!(st, 401, "{what} with {key:?}: {v}");
            }
            let refused: &[&str] = match *needs {
                OP => &[ro.as_str(), agent.as_str()],
                ADM => &[ro.as_str(), agent.as_str(), op.as_str()],
                _ => &[ro.as_str(), op.as_str(), k],
            };
            for key in refused {
                let (st, v) = send(&s, method, path, Some(key), Some((ctype, body.to_vec()))).await;
                assert_eq!(st, 403, "{what} with a key outside its scope: {v}");
                assert!(v["fields"].as_object().is_none_or(|f| f.is_empty()), "{v}");
            }
        }
    }
    // Registration: an API key that is unknown, revoked or not an agent's, before the body.
    for (key, status) in [
        (unknown, 401),
        (revoked.as_str(), 401),
        (ro.as_str(), 403),
        (op.as_str(), 403),
        (k, 403),
    ] {
        for (ctype, body) in malformed {
            let (st, v) = send(
                &s,
                "POST",
                "/api/agent/register",
                Some(key),
                Some((ctype, body.to_vec())),
            )
            .await;
            assert_eq!(st, status, "register {key} {ctype}: {v}");
        }
    }
    // Queries and paths are read after the role check too.
    for (path, key) in [
        ("/api/audit?limit=abc", ro.as_str()),
        ("/api/audit?limit=abc", op.as_str()),
        ("/api/api-keys?limit=-1", op.as_str()),
        ("/api/enrollment-tokens?offset=x", ro.as_str()),
        ("/api/vps?limit=abc", agent.as_str()),
        ("/api/vps?hostname=%00", agent.as_str()),
        ("/api/providers?limit=0", agent.as_str()),
        ("/api/prometheus/targets?kind=nope", agent.as_str()),
        ("/api/vps/%FF", agent.as_str()),
        ("/api/vps/not-a-uuid/mesh", agent.as_str()),
        ("/api/agent/istio-bootstrap?hostname=%%%", ro.as_str()),
        ("/api/agent/istio-bootstrap?nope=1", ro.as_str()),
        ("/api/agent/envoy-config?hostname=-bad-", k),
        ("/api/agent/envoy-config?wait_seconds=x", op.as_str()),
        ("/metrics", agent.as_str()),
    ] {
        let (st, v) = send(&s, "GET", path, Some(key), None).await;
        assert_eq!(st, 403, "GET {path}: {v}");
        let (st, v) = send(&s, "GET", path, Some(unknown), None).await;
        assert_eq!(st, 401, "GET {path}: {v}");
    }
    for (method, path, key) in [
        ("DELETE", "/api/vps/not-a-uuid", ro.as_str()),
        ("DELETE", "/api/providers/%FF", ro.as_str()),
        ("POST", "/api/vps/%FF/retire?force=maybe", agent.as_str()),
        ("POST", "/api/api-keys/%FF/revoke", op.as_str()),
        ("POST", "/api/enrollment-tokens/%00/revoke", ro.as_str()),
        ("DELETE", "/api/envoy-routes/%FF", ro.as_str()),
    ] {
        let (st, v) = send(&s, method, path, Some(key), None).await;
        assert_eq!(st, 403, "{method} {path}: {v}");
    }
    assert_eq!(snapshot(&s).await, before, "a refused request changed data");

    // The rightful caller then learns what is wrong with the body.
    let got = json_body(&s, "POST", "/api/providers", &op, "{").await;
    assert_field(&got, "body", "operator, malformed body");
    let got = json_body(&s, "POST", "/api/agent/heartbeat", &agent, r#"{"x":1}"#).await;
    assert_eq!(got.0, 422, "{}", got.1);
}

// -----------------------------------------------------------------------------------------
// Defects 8 and 11 (path and query): JSON errors, no control characters.

async fn hostile_path_and_query_values_are_named(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let (st, p) = s.post("/api/providers", k, json!({"name": "acme"})).await;
    assert_eq!(st, 201, "{p}");
    let (st, vps) = s
        .post("/api/vps", k, VpsBuilder::new("path1").build())
        .await;
    assert_eq!(st, 201, "{vps}");
    let before = snapshot(&s).await;

    for (method, path, field) in [
        ("GET", "/api/vps/%FF", "id"),
        ("GET", "/api/vps/%C3%28", "id"),
        ("PATCH", "/api/vps/%FF", "id"),
        ("DELETE", "/api/vps/%FF", "id"),
        ("POST", "/api/vps/%FF/retire", "id"),
        ("POST", "/api/vps/%FF/restore", "id"),
        ("GET", "/api/vps/%FF/mesh", "id"),
        ("GET", "/api/vps/%FF/envoy-routes", "id"),
        ("GET", "/api/providers/%FF", "id"),
        ("DELETE", "/api/providers/%FF", "id"),
        ("GET", "/api/purposes/%FE%FF", "name"),
        ("GET", "/api/envoy-routes/%FF", "id"),
        ("POST", "/api/api-keys/%FF/revoke", "id"),
        ("POST", "/api/enrollment-tokens/%FF/revoke", "id"),
        ("GET", "/api/vps/%00", "id"),
        ("GET", "/api/providers/acme%00", "id"),
        ("GET", "/api/providers/a%00b", "id"),
        ("PATCH", "/api/providers/acme%00", "id"),
        ("DELETE", "/api/providers/acme%00", "id"),
        ("GET", "/api/providers/acme%0A", "id"),
        ("GET", "/api/providers/acme%7F", "id"),
        ("GET", "/api/providers/acme%C2%85", "id"),
        ("GET", "/api/purposes/xrayr%00", "name"),
        ("DELETE", "/api/purposes/xrayr%01", "name"),
        ("GET", "/api/vps?q=a%00b", "q"),
        ("GET", "/api/vps?provider=acme%00", "provider"),
        ("GET", "/api/vps?provider=%FF", "provider"),
        ("GET", "/api/vps?hostname=path1%00", "hostname"),
        ("GET", "/api/vps?tag=%1B", "tag"),
        ("GET", "/api/vps?limit=1%00", "limit"),
        ("GET", "/api/audit?actor=key%00", "actor"),
        ("GET", "/api/audit?action=vps.create%00", "action"),
        ("GET", "/api/audit?resource_id=%FF", "resource_id"),
        ("GET", "/api/audit?since=%00", "since"),
        ("GET", "/api/providers?limit=%FF", "limit"),
        (
            "GET",
            "/api/agent/istio-bootstrap?hostname=path1%00",
            "hostname",
        ),
        ("POST", "/api/vps/%00/retire?force=true", "id"),
    ] {
        let body =
            (method != "GET" && method != "DELETE").then(|| ("application/json", b"{}".to_vec()));
        let got = send(&s, method, path, Some(k), body).await;
        assert_field(&got, field, &format!("{method} {path}"));
    }
    // A value that is fine still works, and a query value holding a NUL never matches.
    let (st, v) = s.get("/api/providers/acme", k).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.get("/api/vps?q=path", k).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1);
    assert_eq!(snapshot(&s).await, before, "a refused request changed data");
}

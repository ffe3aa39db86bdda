//! `GET /api/agent/istio-bootstrap` through the real sigma-api binary, on SQLite and
//! PostgreSQL, with `--mesh kubernetes` against a stand-in API server (`sigma_testkit::fake_kube`):
//! who may fetch which bundle, which VPS get one, what the cluster's gaps look like to the
//! client, and the start-up checks of the new flags.

use std::process::Command;

use serde_json::{Value, json};
use sigma_testkit::fake_kube::{Cluster, FakeKube, ROOT_CERT, ROOT_CERT_SHA256, write_kubeconfig};
use sigma_testkit::{ADMIN_KEY, Backend, Mesh, SigmaApi, TestDb, both_backends};
use sigma_types::mesh::IstioBootstrapBundle;

both_backends!(
    agents_get_their_own_bundle_and_people_any_audited,
    only_active_meshed_vps_get_a_bundle,
    cluster_gaps_are_503_naming_the_missing_piece,
    bundles_need_kubernetes_mode,
    token_requests_are_rate_limited,
);

fn xrayr_mesh() -> Value {
    json!({
        "enabled": true,
        "ports": [{"name": "vless", "number": 443, "protocol": "TCP"}],
        "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]
    })
}

fn path(hostname: &str) -> String {
    format!("/api/agent/istio-bootstrap?hostname={hostname}")
}

async fn kube_server(db: &TestDb, cluster: Cluster) -> (SigmaApi, FakeKube) {
    kube_server_with(db, cluster, vec![]).await
}

async fn kube_server_with(
    db: &TestDb,
    cluster: Cluster,
    extra: Vec<(&str, &str)>,
) -> (SigmaApi, FakeKube) {
    let kube = FakeKube::start(&db.dir, cluster.discarding_writes()).await;
    let s = SigmaApi::builder()
        .store(db)
        .mesh(kube.mesh())
        .envs(
            extra
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .start();
    (s, kube)
}

/// Enrolls an agent for `hostname` (active at once) and returns its key.
async fn enroll(s: &SigmaApi, hostname: &str, ip: &str) -> (String, String) {
    let token = s.token(json!({"purpose": "xrayr", "max_uses": 1})).await;
    let (id, key) = s.register(&token, hostname, ip).await;
    (key, id)
}

async fn mesh_on(s: &SigmaApi) {
    let (st, v) = s
        .patch(
            "/api/purposes/xrayr",
            ADMIN_KEY,
            json!({"mesh": xrayr_mesh()}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

fn code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

async fn agents_get_their_own_bundle_and_people_any_audited(db: TestDb) {
    let (s, kube) = kube_server(&db, Cluster::default()).await;
    mesh_on(&s).await;
    let (key_a, id_a) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;
    let (key_b, id_b) = enroll(&s, "edge-b.example.com", "203.0.113.11").await;

    // The agent's own bundle, with every file and the metadata.
    let resp = s
        .http
        .get(s.url(&path("edge-a.example.com")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let b: IstioBootstrapBundle = resp.json().await.unwrap();
    b.check().unwrap();
    assert_eq!(b.vps_id.to_string(), id_a);
    assert_eq!(b.hostname, "edge-a.example.com");
    assert!(
        b.workload_entry.starts_with("vps-edge-a-example-com--"),
        "{}",
        b.workload_entry
    );
    assert_eq!(b.files.root_cert_pem, ROOT_CERT);
    assert_eq!(b.root_cert_sha256, ROOT_CERT_SHA256);
    assert!(
        b.files.istio_token.starts_with("eyJ"),
        "{}",
        b.files.istio_token
    );
    let ttl = b.token_expires_at - time::OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::minutes(55) && ttl <= time::Duration::minutes(61),
        "default lifetime 1h: {ttl}"
    );
    assert!(b.files.cluster_env.contains(&format!(
        "ISTIO_META_WORKLOAD_NAME='{}'\n",
        b.workload_entry
    )));
    assert!(
        b.files
            .cluster_env
            .contains("ISTIO_META_INTERCEPTION_MODE='NONE'\n")
    );
    assert!(
        b.files
            .cluster_env
            .contains("ISTIO_META_DNS_CAPTURE='false'\n")
    );
    assert!(
        b.files
            .cluster_env
            .contains("ISTIO_SVC_IP='203.0.113.10'\n")
    );
    assert!(
        b.files
            .hosts
            .starts_with("198.51.100.50 istiod.istio-system.svc\n")
    );
    assert!(b.files.hosts.contains(" xboard.sigma.svc.cluster.local\n"));
    assert!(
        b.files
            .mesh_yaml
            .contains("discoveryAddress: \"istiod.istio-system.svc:15012\""),
        "{}",
        b.files.mesh_yaml
    );
    assert_eq!(b.egress.len(), 1);
    assert!(b.istio_proxy.is_none());
    assert_eq!(b.bundle_version.len(), 32);
    // The calls istioctl would make, and a fresh token for the purpose's service account.
    let calls = kube.calls();
    for want in [
        "GET /api/v1/namespaces/sigma/configmaps/istio-ca-root-cert",
        "GET /api/v1/namespaces/istio-system/configmaps/istio",
        "GET /api/v1/namespaces/istio-system/services/istio-eastwestgateway",
        "POST /api/v1/namespaces/sigma/serviceaccounts/sigma-vm/token",
    ] {
        assert!(
            calls.iter().any(|c| c.line() == want),
            "{want} not in {calls:?}"
        );
    }
    // Same inventory and cluster: same version, new token.
    let (st, again) = s.get(&path("edge-a.example.com"), &key_a).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["bundle_version"], b.bundle_version.as_str());
    assert_ne!(again["files"]["istio-token"], b.files.istio_token.as_str());
    // The hostname is matched in canonical form.
    assert_eq!(s.get(&path("EDGE-A.example.com."), &key_a).await.0, 200);

    // Another VPS's key is refused whatever it asks for, even a hostname that exists nowhere.
    for h in ["edge-a.example.com", "nowhere.example.com"] {
        let (st, v) = s.get(&path(h), &key_b).await;
        assert_eq!(st, 403, "{h}: {v}");
        assert!(v["message"].as_str().unwrap().contains(&id_b), "{v}");
    }
    let (st, v) = s.get(&path("edge-b.example.com"), &key_a).await;
    assert_eq!(st, 403, "{v}");

    // readonly: 403; no key: 401.
    let reader = s.key("readonly").await;
    let (st, v) = s.get(&path("edge-a.example.com"), &reader).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("readonly"), "{v}");
    assert_eq!(
        s.request("GET", &path("edge-a.example.com"), None, None)
            .await
            .0,
        401
    );

    // Operators and admins get any VPS's bundle; each fetch is audited without the token.
    let operator = s.key("operator").await;
    let (st, v) = s.get(&path("edge-b.example.com"), &operator).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["vps_id"], id_b.as_str());
    let token = v["files"]["istio-token"].as_str().unwrap().to_string();
    let (st, v) = s.get(&path("edge-a.example.com"), ADMIN_KEY).await;
    assert_eq!(st, 200, "{v}");
    let (st, audit) = s
        .get("/api/audit?action=vps.istio_bootstrap", ADMIN_KEY)
        .await;
    assert_eq!(st, 200, "{audit}");
    assert_eq!(
        audit["total"], 2,
        "agents' own fetches are not audited: {audit}"
    );
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items[1]["resource_id"], id_b.as_str());
    assert_eq!(items[1]["resource_type"], "vps");
    assert!(
        items[1]["actor"].as_str().unwrap().starts_with("key:sgm_"),
        "{audit}"
    );
    assert_eq!(items[1]["after"]["hostname"], "edge-b.example.com");
    assert!(items[1]["after"]["token_expires_at"].is_string());
    assert!(
        !audit.to_string().contains(&token),
        "the token stays out of the audit log"
    );
    assert!(!audit.to_string().contains("eyJ"), "{audit}");

    // Unknown hostname for a person: 404. Bad input: 422 naming the field.
    let (st, v) = s.get(&path("nowhere.example.com"), ADMIN_KEY).await;
    assert_eq!(st, 404, "{v}");
    for q in [
        "/api/agent/istio-bootstrap",
        "/api/agent/istio-bootstrap?hostname=bad%20host",
        "/api/agent/istio-bootstrap?hostname=",
    ] {
        let (st, v) = s.get(q, &key_a).await;
        assert_eq!(st, 422, "{q}: {v}");
        assert!(v["fields"]["hostname"].is_string(), "{q}: {v}");
    }
    let (st, v) = s
        .get(
            "/api/agent/istio-bootstrap?hostname=edge-a.example.com&x=1",
            &key_a,
        )
        .await;
    assert_eq!(st, 422, "{v}");

    // Every outcome is counted.
    let (_, m) = s.get("/metrics", ADMIN_KEY).await;
    let m = m.as_str().unwrap().to_string();
    for want in [
        "sigma_api_bootstrap_issued_total{result=\"ok\"}",
        "sigma_api_bootstrap_issued_total{result=\"forbidden\"}",
        "sigma_api_bootstrap_issued_total{result=\"validation\"}",
        "sigma_api_bootstrap_issued_total{result=\"unauthorized\"}",
        "sigma_api_bootstrap_duration_seconds_bucket{",
    ] {
        assert!(m.contains(want), "{want} missing");
    }
}

async fn only_active_meshed_vps_get_a_bundle(db: TestDb) {
    let (mut s, kube) = kube_server_with(
        &db,
        Cluster::default(),
        vec![
            (
                "SIGMA_ISTIO_PROXY_URL",
                "https://example.com/istio-sidecar-1.24.0.tar.gz",
            ),
            ("SIGMA_ISTIO_PROXY_SHA256", &"AB".repeat(32)),
            ("SIGMA_ISTIO_PROXY_VERSION", "1.24.0"),
            ("SIGMA_ISTIO_TOKEN_TTL", "15m"),
        ],
    )
    .await;
    // The purpose is not mesh-enabled yet.
    let (key, id) = enroll(&s, "edge-1.example.com", "203.0.113.20").await;
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(code(&v), "not_meshed");
    assert!(
        v["message"].as_str().unwrap().contains("not mesh-enabled"),
        "{v}"
    );
    mesh_on(&s).await;
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["istio_proxy"],
        json!({"url": "https://example.com/istio-sidecar-1.24.0.tar.gz",
               "sha256": "ab".repeat(32), "version": "1.24.0"})
    );
    let ttl = time::OffsetDateTime::parse(
        v["token_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
        - time::OffsetDateTime::now_utc();
    assert!(
        ttl <= time::Duration::minutes(15) && ttl > time::Duration::minutes(13),
        "{ttl}"
    );
    let minted = kube.state.lock().unwrap().minted;

    // Opted out: 409 for the agent and for people.
    let vps = format!("/api/vps/{id}");
    s.patch(&vps, ADMIN_KEY, json!({"mesh_opt_out": true}))
        .await;
    for k in [key.as_str(), ADMIN_KEY] {
        let (st, v) = s.get(&path("edge-1.example.com"), k).await;
        assert_eq!(st, 409, "{v}");
        assert!(v["message"].as_str().unwrap().contains("opted out"), "{v}");
    }
    s.patch(&vps, ADMIN_KEY, json!({"mesh_opt_out": false}))
        .await;

    // A VPS without a usable address has no WorkloadEntry, so no bundle.
    let (st, _) = s
        .patch(
            &vps,
            ADMIN_KEY,
            json!({"ip_addresses": [{"ip": "127.0.0.9", "label": "public"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no address usable"),
        "{v}"
    );
    s.patch(
        &vps,
        ADMIN_KEY,
        json!({"ip_addresses": [{"ip": "203.0.113.20", "label": "public"}]}),
    )
    .await;

    // Retired: 409, for the agent and for people.
    let (st, _) = s
        .post(&format!("{vps}/retire?force=true"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(st, 200);
    for k in [key.as_str(), ADMIN_KEY] {
        let (st, v) = s.get(&path("edge-1.example.com"), k).await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(code(&v), "not_meshed");
        assert!(v["message"].as_str().unwrap().contains("retired"), "{v}");
    }
    // Deleted: gone for people (404), a conflict for its own agent.
    s.delete(&vps, ADMIN_KEY).await;
    assert_eq!(s.get(&path("edge-1.example.com"), ADMIN_KEY).await.0, 404);
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert!(st == 409 || st == 401, "{st} {v}");
    // None of the refusals minted a token.
    assert_eq!(kube.state.lock().unwrap().minted, minted);

    // Invalid stored settings: 409 naming the fields, not a bundle without them.
    let (key2, _) = enroll(&s, "edge-2.example.com", "203.0.113.21").await;
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
    let s = SigmaApi::builder().store(&db).mesh(kube.mesh()).start();
    let (st, v) = s.get(&path("edge-2.example.com"), &key2).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(code(&v), "mesh_invalid");
    assert!(
        v["fields"]["purposes.xrayr.mesh.ports[0].number"].is_string(),
        "{v}"
    );
}

async fn cluster_gaps_are_503_naming_the_missing_piece(db: TestDb) {
    let mut cluster = Cluster::default();
    cluster
        .config_maps
        .remove(&("sigma".to_string(), "istio-ca-root-cert".to_string()));
    let (mut s, kube) = kube_server(&db, cluster).await;
    mesh_on(&s).await;
    let (key, _) = enroll(&s, "edge-1.example.com", "203.0.113.30").await;

    let expect_503 = |want: &'static str| {
        let s = &s;
        let key = key.clone();
        async move {
            let resp = s
                .http
                .get(s.url(&path("edge-1.example.com")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 503, "{want}");
            assert_eq!(resp.headers()["retry-after"], "10");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(code(&v), "mesh_unavailable", "{v}");
            let m = v["message"].as_str().unwrap();
            assert!(m.contains(want), "{want} not in {m}");
        }
    };
    // istiod not installed yet: no root certificate in the namespace.
    expect_503("ConfigMap sigma/istio-ca-root-cert not found").await;
    kube.edit(|c| {
        c.config_maps.insert(
            ("sigma".into(), "istio-ca-root-cert".into()),
            [("root-cert.pem".to_string(), ROOT_CERT.to_string())].into(),
        );
        c.config_maps
            .remove(&("istio-system".into(), "istio".into()));
    });
    expect_503("ConfigMap istio-system/istio not found").await;
    kube.edit(|c| {
        c.config_maps.insert(
            ("istio-system".into(), "istio".into()),
            [("mesh".to_string(), String::new())].into(),
        );
        c.set_gateway(json!({"loadBalancer": {}}), json!({"type": "LoadBalancer"}));
    });
    // A load balancer still pending: no address to give the VPS.
    expect_503("has no load-balancer address or external IP yet").await;
    kube.edit(|c| {
        c.set_gateway(json!({}), json!({"externalIPs": ["192.0.2.44"]}));
        c.token_status = 403;
    });
    expect_503("TokenRequest for ServiceAccount sigma/sigma-vm: 403 Forbidden").await;
    kube.edit(|c| c.token_status = 201);
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["files"]["hosts"]
            .as_str()
            .unwrap()
            .starts_with("192.0.2.44 istiod.istio-system.svc\n"),
        "{v}"
    );
    let (_, m) = s.get("/metrics", ADMIN_KEY).await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("sigma_api_bootstrap_issued_total{result=\"mesh_unavailable\"} 4"),
        "{m}"
    );
    s.stop();

    // The API server unreachable: a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = db.dir.join("down");
    std::fs::create_dir_all(&dir).unwrap();
    let kc = write_kubeconfig(&dir, &format!("http://{addr}"));
    let s = SigmaApi::builder()
        .store(&db)
        .mesh(Mesh::Kubernetes(kc))
        .start();
    let (st, v) = s.get(&path("edge-1.example.com"), &key).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("unreachable"),
        "{v}"
    );
}

async fn bundles_need_kubernetes_mode(db: TestDb) {
    for mode in ["off", "export"] {
        let mut s = SigmaApi::builder()
            .store(&db)
            .envs(vec![("SIGMA_MESH_MODE".into(), mode.into())])
            .start();
        mesh_on(&s).await;
        let host = format!("edge-{mode}.example.com");
        let (key, _) = enroll(&s, &host, "203.0.113.40").await;
        let (st, v) = s.get(&path(&host), &key).await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(code(&v), "mesh_mode");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("--mesh {mode}")) && m.contains("--mesh kubernetes"),
            "{m}"
        );
        // Authorisation comes first: the mode says nothing to a readonly key.
        let reader = s.key("readonly").await;
        assert_eq!(s.get(&path(&host), &reader).await.0, 403);
        s.stop();
    }
}

/// Runs the binary with `args` and returns its exit success and stderr.
fn run(db: &TestDb, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigma-api"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .env("DATABASE_URL", &db.url)
        .env("SIGMA_ADMIN_KEY", ADMIN_KEY)
        .env("SIGMA_MESH_MODE", "off")
        .env("SIGMA_LOG", "error")
        .current_dir(&db.dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_bootstrap_flags_stop_the_start() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    for (env, want) in [
        (
            vec![("SIGMA_ISTIO_PROXY_URL", "https://example.com/a.tar.gz")],
            "--istio-proxy-url needs --istio-proxy-sha256",
        ),
        (
            vec![("SIGMA_ISTIO_PROXY_SHA256", "ab")],
            "--istio-proxy-sha256 needs --istio-proxy-url",
        ),
        (
            vec![
                ("SIGMA_ISTIO_PROXY_URL", "ftp://example.com/a.tar.gz"),
                ("SIGMA_ISTIO_PROXY_SHA256", "xyz"),
            ],
            "--istio-proxy-url: must be an http(s) URL",
        ),
        (
            vec![
                ("SIGMA_ISTIO_PROXY_URL", "https://example.com/a.tar.gz"),
                ("SIGMA_ISTIO_PROXY_SHA256", "xyz"),
            ],
            "--istio-proxy-sha256: must be 64 hex digits",
        ),
        (vec![("SIGMA_ISTIO_TOKEN_TTL", "5m")], "--istio-token-ttl"),
        (vec![("SIGMA_ISTIO_TOKEN_TTL", "48h")], "--istio-token-ttl"),
        (
            vec![("SIGMA_ISTIO_REVISION", "Canary_1")],
            "--istio-revision",
        ),
        (
            vec![("SIGMA_ISTIO_CLUSTER_ID", "two words")],
            "--istio-cluster-id",
        ),
        (
            vec![("SIGMA_EASTWEST_ADDRESS", "0.0.0.0")],
            "--eastwest-address",
        ),
        (
            vec![("SIGMA_EASTWEST_ADDRESS", "gw.example.com")],
            "eastwest",
        ),
        (
            vec![("SIGMA_EASTWEST_SERVICE", "Bad_Name")],
            "--eastwest-service",
        ),
        (
            vec![("SIGMA_ISTIO_BOOTSTRAP_CACHE", "soon")],
            "istio-bootstrap-cache",
        ),
    ] {
        let (ok, stderr) = run(&db, &env);
        assert!(!ok, "{env:?} must stop the start");
        assert!(stderr.contains(want), "{env:?}: {want} not in {stderr}");
    }
}

/// A storm of bundle requests makes TokenRequests no faster than `--istio-token-qps` (after the
/// burst): the rest wait up to 2 s in line or are told when to come back (503 `mesh_busy` with
/// a Retry-After), and a refused request makes no call to the API server.
async fn token_requests_are_rate_limited(db: TestDb) {
    let (s, kube) = kube_server_with(
        &db,
        Cluster::default(),
        vec![
            ("SIGMA_ISTIO_TOKEN_QPS", "1"),
            ("SIGMA_ISTIO_TOKEN_BURST", "2"),
        ],
    )
    .await;
    mesh_on(&s).await;
    let (key, _) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;
    kube.clear_calls();
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (http, url, key) = (
            s.http.clone(),
            s.url(&path("edge-a.example.com")),
            key.clone(),
        );
        set.spawn(async move {
            let resp = http.get(url).bearer_auth(&key).send().await.unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = resp.json().await.unwrap();
            (status, retry_after, body)
        });
    }
    let answers = set.join_all().await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    for (status, retry_after, body) in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(code(body), "mesh_busy", "{body}");
        let secs: u64 = retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=3).contains(&secs), "Retry-After {secs}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("TokenRequests per second"),
            "{body}"
        );
    }
    // The burst of 2 at once, then 1 a second for the 2 s a request may wait: 4, give or take
    // the token that refills while the requests arrive.
    assert!(
        (3..=5).contains(&ok),
        "{ok} bundles issued at 1/s with a burst of 2: {answers:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(6),
        "nobody waits beyond the bound: {elapsed:?}"
    );
    let tokens = kube
        .calls()
        .iter()
        .filter(|c| c.line() == "POST /api/v1/namespaces/sigma/serviceaccounts/sigma-vm/token")
        .count();
    assert_eq!(
        tokens, ok,
        "one TokenRequest per bundle issued, none for a refusal"
    );
    let m = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("sigma_api_bootstrap_issued_total{result=\"mesh_busy\"}"),
        "refusals are counted by their code"
    );
}

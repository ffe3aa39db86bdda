//! `GET /api/vps/{id}/mesh` through the real sigma-api binary: the desired WorkloadEntry in
//! every mode, and in kubernetes mode the cluster's entry (from the stand-in API server of
//! `sigma_testkit::fake_kube`), the comparison, istiod's health verdict and a cluster that cannot be
//! read; plus who may read it.

use serde_json::{Value, json};
use sigma_testkit::fake_kube::{Cluster, FakeKube, write_kubeconfig};
use sigma_testkit::{ADMIN_KEY, Mesh, SigmaApi, TestDb, VpsBuilder, both_backends};
use sigma_types::mesh::VpsMeshReport;

both_backends!(
    mesh_off_reports_the_desired_entry_only,
    who_may_read_a_report,
    kubernetes_mode_compares_with_the_cluster,
    an_unreadable_cluster_is_reported_not_failed,
);

fn mesh_path(id: &str) -> String {
    format!("/api/vps/{id}/mesh")
}

async fn mesh_on(s: &SigmaApi) {
    let (st, v) = s
        .patch(
            "/api/purposes/xrayr",
            ADMIN_KEY,
            json!({"mesh": {"enabled": true,
                            "ports": [{"name": "vless", "number": 443, "protocol": "TCP"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Enrolls an agent for `hostname` (active at once); returns its key and the VPS id.
async fn enroll(s: &SigmaApi, hostname: &str, ip: &str) -> (String, String) {
    let token = s.token(json!({"purpose": "xrayr", "max_uses": 1})).await;
    let (st, v) = s
        .request(
            "POST",
            "/api/agent/register",
            Some(&token),
            Some(json!({"hostname": hostname, "ip_addresses": [{"ip": ip, "label": "public"}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    (
        v["agent_key"].as_str().unwrap().to_string(),
        v["vps"]["id"].as_str().unwrap().to_string(),
    )
}

async fn report(s: &SigmaApi, id: &str) -> VpsMeshReport {
    let (st, v) = s.get(&mesh_path(id), ADMIN_KEY).await;
    assert_eq!(st, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn kube_server(db: &TestDb, cluster: Cluster) -> (SigmaApi, FakeKube) {
    let kube = FakeKube::start(&db.dir, cluster.discarding_writes()).await;
    let s = SigmaApi::builder().store(db).mesh(kube.mesh()).start();
    (s, kube)
}

async fn mesh_off_reports_the_desired_entry_only(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    mesh_on(&s).await;
    let (_, id) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;

    let r = report(&s, &id).await;
    assert_eq!(r.vps_id.to_string(), id);
    assert_eq!(r.hostname, "edge-a.example.com");
    assert_eq!(r.mode, "off");
    assert!(r.meshed, "{r:?}");
    assert_eq!(r.reason, None);
    let d = r.desired.expect("desired entry");
    assert_eq!(d["apiVersion"], "networking.istio.io/v1");
    assert_eq!(d["kind"], "WorkloadEntry");
    assert_eq!(d["metadata"]["namespace"], "sigma");
    assert!(
        d["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("vps-edge-a-example-com"),
        "{d}"
    );
    assert_eq!(d["spec"]["address"], "203.0.113.10");
    assert_eq!(d["metadata"]["labels"]["app"], "xrayr");
    // The mesh manifests hold the very same entry.
    let resp = s
        .http
        .get(s.url("/api/mesh/manifests"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let yaml = resp.text().await.unwrap();
    assert!(
        yaml.contains(&format!(
            "name: {}",
            d["metadata"]["name"].as_str().unwrap()
        )),
        "{yaml}"
    );
    // Nothing read from a cluster in mode off.
    assert_eq!(r.actual, None);
    assert_eq!(r.in_sync, None);
    assert_eq!(r.health, None);
    assert_eq!(r.cluster_error, None);

    // A VPS an operator created and no agent has reported for: not meshed, and why.
    let (st, v) = s
        .post(
            "/api/vps",
            ADMIN_KEY,
            VpsBuilder::new("edge-b.example.com")
                .public_ip("203.0.113.11")
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let r = report(&s, v["id"].as_str().unwrap()).await;
    assert!(!r.meshed);
    assert!(
        r.reason.as_deref().unwrap().contains("provisioning"),
        "{r:?}"
    );
    assert_eq!(r.desired, None);

    // Opted out: the reconciler's words.
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            ADMIN_KEY,
            json!({"mesh_opt_out": true}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let r = report(&s, &id).await;
    assert!(!r.meshed);
    assert_eq!(r.reason.as_deref(), Some("opted out of the mesh"));
}

async fn who_may_read_a_report(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let (agent_key, id) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;
    let path = mesh_path(&id);
    // The purpose is not mesh-enabled here: still a report, with the reason.
    for role in ["readonly", "operator"] {
        let key = s.key(role).await;
        let (st, v) = s.get(&path, &key).await;
        assert_eq!(st, 200, "{role}: {v}");
        assert_eq!(v["meshed"], false, "{v}");
        assert_eq!(
            v["reason"], "purpose xrayr does not have the mesh enabled",
            "{v}"
        );
    }
    let (st, v) = s.get(&path, &agent_key).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(s.request("GET", &path, None, None).await.0, 401);
    let (st, v) = s
        .get(
            &mesh_path("7b0c3a52-1d7e-4e44-9a53-6f0b8d2e9c10"),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.get(&mesh_path("edge-a.example.com"), ADMIN_KEY).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["fields"]["id"].is_string(), "{v}");
}

async fn kubernetes_mode_compares_with_the_cluster(db: TestDb) {
    let (s, kube) = kube_server(&db, Cluster::default()).await;
    mesh_on(&s).await;
    let (_, id) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;

    // The cluster holds no entry yet.
    let r = report(&s, &id).await;
    assert_eq!(r.mode, "kubernetes");
    assert!(r.meshed);
    assert_eq!(r.cluster_error, None);
    assert_eq!(r.actual, None);
    assert_eq!(r.in_sync, None);
    let desired = r.desired.unwrap();
    let name = desired["metadata"]["name"].as_str().unwrap().to_string();
    // Read with a list filtered to the name: the Role grants list, not get.
    let selectors = kube.state.lock().unwrap().field_selectors.clone();
    assert!(
        selectors.contains(&format!("metadata.name={name}")),
        "{selectors:?}"
    );
    assert!(
        !kube
            .calls()
            .iter()
            .any(|c| c.path.ends_with(&format!("/workloadentries/{name}")) && c.verb() == "GET"),
        "no get of the entry"
    );

    // The entry as the cluster keeps it: sigma's labels and spec, plus the server's fields and
    // istiod's health condition.
    let mut actual = desired.clone();
    actual["metadata"]["uid"] = json!("uid-7");
    actual["metadata"]["resourceVersion"] = json!("42");
    actual["metadata"]["labels"]["added-by-istio"] = json!("yes");
    actual["status"] = json!({"conditions": [
        {"type": "Healthy", "status": "True", "reason": "HealthCheck",
         "message": "probe succeeded", "lastTransitionTime": "2026-03-01T10:00:00Z"}]});
    kube.edit(|c| c.put("sigma", "workloadentries", actual.clone()));
    let r = report(&s, &id).await;
    assert_eq!(r.cluster_error, None);
    assert_eq!(r.actual.as_ref().unwrap()["metadata"]["uid"], "uid-7");
    assert_eq!(r.in_sync, Some(true), "{r:?}");
    let h = r.health.unwrap();
    assert!(h.healthy);
    assert_eq!(h.reason.as_deref(), Some("HealthCheck"));
    assert_eq!(h.message.as_deref(), Some("probe succeeded"));
    assert_eq!(
        h.last_transition_time.as_deref(),
        Some("2026-03-01T10:00:00Z")
    );

    // Drift in the spec, and an unhealthy verdict.
    actual["spec"]["address"] = json!("198.51.100.99");
    actual["status"]["conditions"][0]["status"] = json!("False");
    kube.edit(|c| c.put("sigma", "workloadentries", actual.clone()));
    let r = report(&s, &id).await;
    assert_eq!(r.in_sync, Some(false));
    assert!(!r.health.unwrap().healthy);

    // API server refuses: still 200, with the inventory's side and the reason.
    kube.edit(|c| c.istio_list_status = 403);
    let (st, v) = s.get(&mesh_path(&id), ADMIN_KEY).await;
    assert_eq!(st, 200, "{v}");
    let r: VpsMeshReport = serde_json::from_value(v).unwrap();
    assert!(r.meshed && r.desired.is_some());
    assert_eq!(r.actual, None);
    assert_eq!(r.in_sync, None);
    let e = r.cluster_error.unwrap();
    assert!(e.contains("403") && e.contains(&name), "{e}");
}

async fn an_unreadable_cluster_is_reported_not_failed(db: TestDb) {
    // A kubeconfig naming a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = write_kubeconfig(&db.dir, &format!("http://127.0.0.1:{port}"));
    let s = SigmaApi::builder()
        .store(&db)
        .mesh(Mesh::Kubernetes(kubeconfig))
        .start();
    mesh_on(&s).await;
    let (_, id) = enroll(&s, "edge-a.example.com", "203.0.113.10").await;
    let (st, v): (u16, Value) = s.get(&mesh_path(&id), ADMIN_KEY).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meshed"], true, "{v}");
    assert!(v["desired"].is_object(), "{v}");
    assert!(v.get("actual").is_none(), "{v}");
    assert!(
        v["cluster_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
}

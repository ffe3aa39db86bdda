//! The mesh registry against a real Kubernetes API server (schema validation of Istio's CRDs on,
//! sigma-api under its own RBAC identity from `k8s/base`, not cluster-admin): WorkloadEntries
//! follow the inventory, and sigma converges after the API server or sigma-api itself was away.

use std::path::Path;
use std::time::Duration;

use kube::api::ListParams;
use serde_json::{Value, json};
use sigma_e2e::cluster::repo_root;
use sigma_e2e::{ControlPlane, wait_for, work_dir};
use sigma_testkit::{ApiOptions, SigmaApi};

/// The WorkloadEntry of a VPS; a failed read fails the test (the API server is up here).
async fn entry(cp: &ControlPlane, vps_id: &str) -> Option<Value> {
    cp.workload_entry_of(vps_id)
        .await
        .unwrap_or_else(|e| panic!("listing WorkloadEntries: {e}"))
}

/// The VPS ids of every WorkloadEntry, sorted; `Err` when the API server did not answer.
async fn entry_ids(cp: &ControlPlane) -> Result<Vec<String>, kube::Error> {
    let mut ids: Vec<String> = cp
        .workload_entries()
        .await?
        .iter()
        .map(|e| {
            e["metadata"]["labels"]["sigma.io/vps-id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    ids.sort();
    Ok(ids)
}

async fn create_vps(api: &SigmaApi, hostname: &str, ip: &str) -> String {
    let (st, v) = api
        .call(
            "POST",
            "/api/vps",
            Some(json!({
                "hostname": hostname, "purpose": "xrayr", "provider": "hetzner",
                "country": "DE", "city": "Falkenstein", "status": "active",
                "ip_addresses": [{"ip": ip, "label": "public"}, {"ip": "10.1.2.3", "label": "private"}]
            })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn retire(api: &SigmaApi, id: &str) {
    let (st, v) = api
        .call(
            "POST",
            &format!("/api/vps/{id}/retire?force=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

fn start_api(kubeconfig: &Path) -> SigmaApi {
    SigmaApi::start_with(
        ApiOptions::default()
            .env("SIGMA_MESH_MODE", "kubernetes")
            .env("SIGMA_KUBECONFIG", kubeconfig.to_str().unwrap())
            .env("SIGMA_MESH_RESYNC_INTERVAL", "2s")
            .env("SIGMA_KUBE_TIMEOUT", "3s")
            .env("SIGMA_LOG", "info"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_entries_follow_the_inventory_on_a_real_api_server() {
    if !sigma_e2e::can_run(&["ip", "openssl", "curl"]) {
        return;
    }
    let dir = work_dir("registry");
    // API server and etcd only: the registry needs no istiod.
    let cp = ControlPlane::up(&dir.join("cp"), &[("E2E_ISTIOD", "0")]).await;
    cp.apply(&repo_root().join("k8s/base/rbac.yaml"));
    let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;
    let mut api = start_api(&kubeconfig);

    sigma_e2e::mesh_fleet_setup(&api, 80).await;

    let a = create_vps(&api, "node-a.example.net", "203.0.113.10").await;
    let e = wait_for(
        "the WorkloadEntry of node-a",
        Duration::from_secs(60),
        || async { entry(&cp, &a).await },
    )
    .await;
    let l = &e["metadata"]["labels"];
    assert_eq!(l["app"], "xrayr", "{e}");
    assert_eq!(l["country"], "DE", "{e}");
    assert_eq!(l["provider"], "hetzner", "{e}");
    assert_eq!(l["sigma.io/vps-id"], a.as_str(), "{e}");
    assert_eq!(l["app.kubernetes.io/managed-by"], "sigma", "{e}");
    assert_eq!(
        e["spec"]["address"], "203.0.113.10",
        "the public address: {e}"
    );
    assert_eq!(e["spec"]["network"], "provider-hetzner", "{e}");
    assert_eq!(e["spec"]["serviceAccount"], "sigma-vm", "{e}");
    assert_eq!(
        e["metadata"]["annotations"]["proxy.istio.io/health-checks-enabled"], "true",
        "{e}"
    );
    // The purpose's other objects were accepted by the API server's schema validation too.
    for kind in [
        "WorkloadGroup",
        "ServiceEntry",
        "Sidecar",
        "DestinationRule",
    ] {
        let n = cp
            .istio(kind, "sigma")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        assert!(n >= 1, "no {kind} applied");
    }
    // sigma-api records the result where operators see it.
    wait_for("mesh status synced", Duration::from_secs(30), || async {
        let v = api.vps("node-a.example.net").await?;
        (v["mesh"]["status"] == "synced").then_some(())
    })
    .await;

    // The API server goes away while one VPS registers and another retires: both converge
    // once it is back.
    let b = create_vps(&api, "node-b.example.net", "203.0.113.11").await;
    wait_for("node-b applied", Duration::from_secs(60), || async {
        entry(&cp, &b).await
    })
    .await;
    let restart = cp.stop_component("kube-apiserver");
    // Control: with the API server away a read is an error, never an empty list that would
    // pass for "every WorkloadEntry deleted".
    match entry_ids(&cp).await {
        Err(e) => eprintln!("control: listing with the API server stopped fails: {e}"),
        Ok(ids) => panic!("listing with the API server stopped returned {ids:?}"),
    }
    retire(&api, &b).await;
    let c = create_vps(&api, "node-c.example.net", "203.0.113.12").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    restart.start();
    wait_for(
        "convergence after the API server returned",
        Duration::from_secs(90),
        || async {
            // While the API server starts, a read fails: keep waiting (a failed read cannot
            // show node-c present, so it never passes this check).
            let ids = entry_ids(&cp).await.ok()?;
            (ids.contains(&c) && !ids.contains(&b)).then_some(())
        },
    )
    .await;

    // sigma-api killed (no graceful shutdown) while changes are not yet applied (the API
    // server is away, so the reconciler cannot have applied them): after both are back, the
    // new sigma-api converges from the inventory alone.
    let restart = cp.stop_component("kube-apiserver");
    retire(&api, &a).await;
    let d = create_vps(&api, "node-d.example.net", "203.0.113.13").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.kill();
    restart.start();
    api.restart();
    wait_for(
        "convergence after sigma-api was killed",
        Duration::from_secs(90),
        || async {
            let mut want = vec![c.clone(), d.clone()];
            want.sort();
            // A failed read (the API server still starting) is "not yet", never a match.
            (entry_ids(&cp).await.ok()? == want).then_some(())
        },
    )
    .await;

    // Steady state: a resync pass later, nothing was written (same resourceVersions).
    let before: Vec<Value> = cp.workload_entries().await.expect("list WorkloadEntries");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: Vec<Value> = cp.workload_entries().await.expect("list WorkloadEntries");
    assert_eq!(before.len(), 2, "{before:?}");
    let versions = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| {
                e["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        versions(&before),
        versions(&after),
        "resyncs must not rewrite objects"
    );
    drop(api);
}

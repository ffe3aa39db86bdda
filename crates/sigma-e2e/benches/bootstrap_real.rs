//! Bundle issuance latency with a real kube-apiserver and istiod in the path: every bundle costs
//! a TokenRequest (and, with `--istio-bootstrap-cache 0s`, the ConfigMap and Service reads too).
//!
//! Needs root-free loopback only, plus the Go-built components (scripts/e2e/build-components):
//!
//! ```text
//! cargo bench -p sigma-e2e --bench bootstrap_real
//! ```
//!
//! Prints p50/p90/p99 for one client, cache on and off.

use std::time::{Duration, Instant};

use serde_json::json;
use sigma_e2e::cluster::repo_root;
use sigma_e2e::{ControlPlane, wait_for, work_dir};
use sigma_testkit::{ADMIN_KEY, ApiOptions, SigmaApi};

const REQUESTS: usize = 300;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn measure(cp: &ControlPlane, kubeconfig: &std::path::Path, cache: &str) {
    let api = SigmaApi::start_with(
        ApiOptions::default()
            .env("SIGMA_MESH_MODE", "kubernetes")
            .env("SIGMA_KUBECONFIG", kubeconfig.to_str().unwrap())
            .env("SIGMA_ISTIO_CLUSTER_ID", "Kubernetes")
            .env("SIGMA_EASTWEST_ADDRESS", "192.0.2.1")
            .env("SIGMA_ISTIO_BOOTSTRAP_CACHE", cache),
    );
    let (st, v) = api
        .call(
            "PATCH",
            "/api/purposes/xrayr",
            Some(json!({"mesh": {"enabled": true}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = api
        .call(
            "POST",
            "/api/vps",
            Some(
                json!({"hostname": "bench.e2e.sigma", "purpose": "xrayr", "status": "active",
                        "ip_addresses": [{"ip": "198.51.100.7", "label": "public"}]}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let url = format!(
        "{}/api/agent/istio-bootstrap?hostname=bench.e2e.sigma",
        api.url
    );
    let get = || async {
        let r = api
            .http
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    // The reconciler and istiod settle first; the first bundles warm connections.
    wait_for("a first bundle", Duration::from_secs(60), || async {
        (get().await == 200).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get().await, 200);
    }
    let mut lat = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let st = get().await;
        lat.push(t.elapsed());
        assert_eq!(st, 200);
    }
    lat.sort();
    println!(
        "bundle issuance, real kube-apiserver {}: cache={cache} requests={REQUESTS} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        cp.var("KUBE_API_URL"),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = work_dir("bench-bootstrap");
    // istiod is needed: it writes the istio-ca-root-cert ConfigMap the bundle carries. Its
    // VPS-facing port is not used here, so it stays on an unusual loopback port.
    let cp = ControlPlane::up(
        &dir.join("cp"),
        &[
            ("E2E_ISTIOD_BIND", "127.0.0.1"),
            ("E2E_ISTIOD_XDS_PORT", "25012"),
        ],
    )
    .await;
    for f in [
        "k8s/base/rbac.yaml",
        "k8s/base/rbac-bootstrap.yaml",
        "k8s/base/serviceaccount-vm.yaml",
    ] {
        cp.apply(&repo_root().join(f));
    }
    let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;
    measure(&cp, &kubeconfig, "10s").await;
    measure(&cp, &kubeconfig, "0s").await;
}

//! The mesh scenario's cluster side, shared by the end-to-end tests that enroll VPS into the
//! mesh: the east-west gateway's address, the control plane with sigma-api's shipped RBAC, and
//! sigma-api in mesh mode `kubernetes` authenticated as its service account.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sigma_testkit::{ApiOptions, SigmaApi};

use crate::ControlPlane;
use crate::cluster::repo_root;

/// The east-west gateway's address: the `istio-eastwestgateway` Service's external IP, which
/// sigma-api hands VPS as istiod's address. It lives on the host's `lo`, so every VPS namespace
/// reaches istiod (bound on all addresses) through it.
pub const GATEWAY_IP: &str = "10.77.0.1";

/// [`GATEWAY_IP`] on the host's `lo`, removed on drop.
pub struct GatewayAddress(());

impl GatewayAddress {
    /// Adds the address (replacing one a crashed run left behind).
    pub fn add() -> GatewayAddress {
        let cidr = format!("{GATEWAY_IP}/32");
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", "lo"])
            .output();
        let st = Command::new("ip")
            .args(["addr", "add", &cidr, "dev", "lo"])
            .status()
            .unwrap();
        assert!(st.success(), "ip addr add {cidr} dev lo");
        GatewayAddress(())
    }
}

impl Drop for GatewayAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{GATEWAY_IP}/32"), "dev", "lo"])
            .output();
    }
}

/// A path the test command exports (Envoy, pilot-agent); a clear failure when it is missing.
pub fn env_path(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: run the test command (scripts/test)"))
}

/// The `Healthy` condition of a WorkloadEntry (what istiod's health checks write and Kiali
/// reads), if it has one.
pub fn healthy(entry: &Value) -> Option<bool> {
    entry["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Healthy")
        .map(|c| c["status"] == "True")
}

/// The cluster side of a mesh scenario, torn down in reverse order on drop.
pub struct MeshCluster {
    /// sigma-api in mesh mode `kubernetes`, with the fleet of [`crate::mesh_fleet_setup`].
    pub api: SigmaApi,
    /// etcd, kube-apiserver and istiod (bound on all addresses; upstream Envoy's limits set).
    pub cp: ControlPlane,
    /// Declared last so the address goes after the processes that use it.
    _gateway: GatewayAddress,
}

impl MeshCluster {
    /// Starts the control plane under `dir`, applies sigma's shipped RBAC and the gateway's
    /// Service, and starts sigma-api as service account `sigma/sigma-api` (not cluster-admin).
    pub async fn up(dir: &Path) -> MeshCluster {
        let gateway = GatewayAddress::add();
        let cp = ControlPlane::up(
            &dir.join("cp"),
            &[("E2E_ISTIOD_BIND", "0.0.0.0"), ("E2E_UPSTREAM_ENVOY", "1")],
        )
        .await;
        for f in [
            "k8s/base/rbac.yaml",
            "k8s/base/rbac-bootstrap.yaml",
            "k8s/base/serviceaccount-vm.yaml",
        ] {
            cp.apply(&repo_root().join(f));
        }
        // The east-west gateway's Service: sigma-api reads the address VPS reach istiod at
        // from it.
        cp.apply_object(
            &cp.core("Service", "istio-system"),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                "spec": {"type": "ClusterIP", "externalIPs": [GATEWAY_IP],
                         "ports": [{"name": "tls-istiod", "port": 15012, "targetPort": 15012}]}
            }),
        )
        .await;
        let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;
        let api = SigmaApi::start_with(
            ApiOptions::default()
                .listen_ip("0.0.0.0")
                .env("SIGMA_MESH_MODE", "kubernetes")
                .env("SIGMA_KUBECONFIG", kubeconfig.to_str().unwrap())
                .env("SIGMA_MESH_RESYNC_INTERVAL", "2s")
                .env("SIGMA_ISTIO_CLUSTER_ID", "Kubernetes")
                .env("SIGMA_ISTIO_BOOTSTRAP_CACHE", "0s")
                .env("SIGMA_LOG", "info"),
        );
        crate::mesh_fleet_setup(&api, 8001).await;
        MeshCluster {
            api,
            cp,
            _gateway: gateway,
        }
    }
}

//! The cluster's side of the mesh scenario as a real cluster has it: istiod on an address only
//! the cluster side routes to, a real east-west gateway (`pilot-agent proxy router` + Envoy in
//! its own network namespace, configured by istiod from the Gateway objects of `k8s/istio/`),
//! and a stand-in Xboard with its own sidecar, a workload of network `k8s-network` selected by
//! the Kubernetes Service `sigma/xboard`.
//!
//! Addresses (`10.78.0.0/16`, apart from the VPS' `10.77.0.0/16`):
//!
//! | what | address | who routes to it |
//! | --- | --- | --- |
//! | istiod (xDS and CA, 15012) | [`ISTIOD_IP`] on the host's `lo` | the cluster namespaces (default route to the host) |
//! | east-west gateway | [`GATEWAY_IP`] (namespace `…-78-1`) | everyone: VPS namespaces have a route to it and to nothing else |
//! | Xboard | [`XBOARD_IP`] (namespace `…-78-2`) | the cluster namespaces and the host |
//!
//! The host forwards only between these links (per-interface `forwarding`, see
//! [`Netns::forward_from`]). A VPS has no route to istiod's or Xboard's address, so the only
//! way it reaches either is the gateway: 15012 passed through to istiod, 15443 (mTLS,
//! `AUTO_PASSTHROUGH`, routed by SNI) to Xboard's sidecar.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::cluster::repo_root;
use crate::mesh::env_path;
use crate::netns::CLUSTER_NET;
use crate::{ControlPlane, Netns, Proc, wait_for};

/// istiod's address: its xDS/CA port listens here only (not on all addresses: the host
/// accepts packets for any of its addresses, so a VPS could otherwise reach istiod through
/// the host side of its own link).
pub const ISTIOD_IP: &str = "10.78.0.1";
/// The east-west gateway's address: its namespace's, and the load-balancer address of the
/// `istio-eastwestgateway` Service.
pub const GATEWAY_IP: &str = "10.78.1.2";
/// Xboard's address: its namespace's, and its WorkloadEntry's.
pub const XBOARD_IP: &str = "10.78.2.2";
/// The cluster's Istio network (the gateway's Service label, Xboard's WorkloadEntry).
pub const CLUSTER_NETWORK: &str = "k8s-network";
/// Xboard's mesh port (Service `sigma/xboard` port 80; captured by its sidecar).
pub const XBOARD_PORT: u16 = 80;
/// A second port of the same Xboard process that its sidecar does not capture: the direct
/// path the benchmark compares with.
pub const XBOARD_DIRECT_PORT: u16 = 8080;

/// [`ISTIOD_IP`] on the host's `lo`, removed on drop.
pub struct IstiodAddress(());

impl IstiodAddress {
    /// Adds the address (replacing one a crashed run left behind).
    pub fn add() -> IstiodAddress {
        let cidr = format!("{ISTIOD_IP}/32");
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", "lo"])
            .output();
        let st = Command::new("ip")
            .args(["addr", "add", &cidr, "dev", "lo"])
            .status()
            .unwrap();
        assert!(st.success(), "ip addr add {cidr} dev lo");
        IstiodAddress(())
    }
}

impl Drop for IstiodAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{ISTIOD_IP}/32"), "dev", "lo"])
            .output();
    }
}

/// A pilot-agent (and its Envoy) of the cluster side, in a namespace of its own. Field order
/// is drop order: the process stops before its namespace goes.
pub struct ClusterProxy {
    /// pilot-agent (Envoy is its child).
    pub agent: Proc,
    /// Its files (bootstrap, certificates, log).
    pub dir: PathBuf,
    /// Its namespace.
    pub ns: Netns,
}

/// What a cluster-side proxy is: the identity and labels a pod would have given it.
struct ProxySpec<'a> {
    kind: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    workload: &'a str,
    labels: Value,
    extra_env: &'a [(&'a str, &'a str)],
}

/// A bound service-account token for istiod's CA (audience `istio-ca`), as the kubelet
/// projects into a pod.
async fn istio_token(cp: &ControlPlane, ns: &str, sa: &str) -> String {
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("content-type", "application/json")
    .body(
        serde_json::to_vec(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["istio-ca"], "expirationSeconds": 86400}
        }))
        .unwrap(),
    )
    .unwrap();
    let tr: Value = cp
        .admin
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    tr["status"]["token"].as_str().expect("token").to_string()
}

/// Writes the files pilot-agent reads (with Envoy's per-listener and per-outbound-cluster
/// stats kept, which Istio's bootstrap drops by default, so tests can see what crossed it) (relative to its working directory, as in
/// `scripts/e2e/vm-agent`) and starts `pilot-agent proxy <kind>` in `ns`.
async fn start_proxy(
    cp: &ControlPlane,
    ns: Netns,
    dir: &Path,
    spec: ProxySpec<'_>,
) -> ClusterProxy {
    let _ = std::fs::remove_dir_all(dir);
    for d in [
        "var/run/secrets/tokens",
        "var/run/secrets/istio",
        "etc/certs",
        "etc/istio/config",
        "etc/istio/proxy",
        "var/lib/istio/envoy",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let agent_bin = env_path("SIGMA_E2E_PILOT_AGENT_BIN");
    std::fs::copy(
        Path::new(&agent_bin).with_file_name("envoy_bootstrap_tmpl.json"),
        dir.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
    )
    .expect("Envoy bootstrap template next to pilot-agent");
    let token = istio_token(cp, spec.namespace, spec.service_account).await;
    std::fs::write(dir.join("var/run/secrets/tokens/istio-token"), token).unwrap();
    let root = std::fs::read_to_string(cp.var("ISTIO_ROOT_CERT")).expect("istio root cert");
    std::fs::write(dir.join("etc/certs/root-cert.pem"), &root).unwrap();
    std::fs::write(dir.join("var/run/secrets/istio/root-cert.pem"), &root).unwrap();
    std::fs::write(
        dir.join("etc/istio/config/mesh"),
        format!(
            "defaultConfig:\n  discoveryAddress: {ISTIOD_IP}:15012\n  binaryPath: {}\n  configPath: {}\n  proxyStatsMatcher:\n    inclusionPrefixes:\n    - cluster.outbound\n    - listener.\ntrustDomain: cluster.local\n",
            env_path("SIGMA_ENVOY_BIN"),
            dir.join("etc/istio/proxy").display()
        ),
    )
    .unwrap();
    let certs = dir.join("var/run/secrets/istio");
    let labels = spec.labels.to_string();
    let mut cmd = ns.command(&agent_bin);
    cmd.args(["proxy", spec.kind, "--meshConfig"])
        .arg(dir.join("etc/istio/config/mesh"))
        .args(["--proxyLogLevel", "warning"])
        .current_dir(dir)
        .env("POD_NAMESPACE", spec.namespace)
        .env("SERVICE_ACCOUNT", spec.service_account)
        .env("POD_NAME", format!("{}-e2e", spec.workload))
        .env("INSTANCE_IP", &ns.ip)
        // istiod by IP: its certificate names the Service, not the address (NOTES.md).
        .env("ISTIOD_SAN", "istiod.istio-system.svc")
        .env("PILOT_CERT_PROVIDER", "istiod")
        .env("JWT_POLICY", "third-party-jwt")
        .env("PROV_CERT", &certs)
        .env("OUTPUT_CERTS", &certs)
        .env("TRUST_DOMAIN", "cluster.local")
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env("ISTIO_META_MESH_ID", "cluster.local")
        .env("ISTIO_META_NETWORK", CLUSTER_NETWORK)
        .env("ISTIO_META_WORKLOAD_NAME", spec.workload)
        .env("ISTIO_META_DNS_CAPTURE", "false")
        // No pod: the labels istiod matches Gateway and Sidecar selectors against come from
        // the proxy's metadata.
        .env("ISTIO_METAJSON_LABELS", &labels)
        .env("CANONICAL_SERVICE", spec.workload)
        .env("CANONICAL_REVISION", "latest")
        .envs(spec.extra_env.iter().copied());
    let agent = Proc::spawn(&format!("pilot-agent-{}", spec.workload), cmd, dir);
    let mut proxy = ClusterProxy {
        agent,
        dir: dir.to_path_buf(),
        ns,
    };
    proxy.wait_ready().await;
    proxy
}

impl ClusterProxy {
    /// Waits for Envoy's readiness (port 15021: istiod's listeners and clusters accepted).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}:15021/healthz/ready", self.ns.ip);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                self.agent.running(),
                "{} exited:\n{}",
                self.agent.name,
                self.agent.tail(40)
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready after 90 s:\n{}",
                self.agent.name,
                self.agent.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Envoy's admin API inside the namespace (`/clusters`, `/listeners`, ...).
    pub fn admin(&self, path: &str) -> String {
        self.ns.output(
            "curl",
            &["-sS", "-m", "5", &format!("http://127.0.0.1:15000{path}")],
        )
    }
}

/// Objects a real cluster has for istiod and the east-west gateway: the gateway's manifests
/// from `k8s/istio/` (its Service labelled with the network), the Service's load-balancer
/// address written through the status subresource, the network label on `istio-system`, and
/// Service `istiod` with the EndpointSlice the endpoint controller would write for it.
pub async fn register_cluster_objects(cp: &ControlPlane) {
    for f in [
        "k8s/istio/eastwest-gateway.yaml",
        "k8s/istio/expose-istiod.yaml",
        "k8s/istio/expose-services.yaml",
    ] {
        cp.apply(&repo_root().join(f));
    }
    let params = PatchParams::default();
    cp.core("Service", "istio-system")
        .patch_status(
            "istio-eastwestgateway",
            &params,
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": GATEWAY_IP}]}}})),
        )
        .await
        .expect("write the gateway Service's load-balancer status");
    let namespaces = kube::api::Api::<kube::api::DynamicObject>::all_with(
        cp.admin.clone(),
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "",
            "v1",
            "Namespace",
        )),
    );
    namespaces
        .patch(
            "istio-system",
            &params,
            &Patch::Merge(
                json!({"metadata": {"labels": {"topology.istio.io/network": CLUSTER_NETWORK}}}),
            ),
        )
        .await
        .expect("label istio-system with the network");
    // Injection labels as a real install has them: `sigma` as k8s/base/namespace.yaml ships it,
    // `default` marked as needing none (what `istioctl analyze` asks of every namespace).
    for (ns, injection) in [("sigma", "enabled"), ("default", "disabled")] {
        namespaces
            .patch(
                ns,
                &params,
                &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": injection}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("label namespace {ns}: {e}"));
    }
    // The gateway runs as a process, not as the Deployment's pod (no scheduler, no kubelet, no
    // injection webhook here): the Deployment goes, and a Pod object with the gateway's labels
    // stands for the process, as the Deployment's pod would in a cluster (istiod ignores a pod
    // without an address; `istioctl analyze` finds the Gateways' selector matched).
    let deployments = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
        cp.admin.clone(),
        "istio-system",
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "apps",
            "v1",
            "Deployment",
        )),
    );
    deployments
        .delete("istio-eastwestgateway", &Default::default())
        .await
        .expect("delete the gateway Deployment the process stands for");
    cp.apply_object(
        &cp.core("Pod", "istio-system"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "istio-eastwestgateway-e2e", "namespace": "istio-system",
                         "labels": {"app": "istio-eastwestgateway", "istio": "eastwestgateway",
                                    "topology.istio.io/network": CLUSTER_NETWORK}},
            "spec": {"serviceAccountName": "istio-eastwestgateway",
                     "containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.3"}]}
        }),
    )
    .await;
    cp.apply_object(
        &cp.core("Service", "istio-system"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
            "spec": {"selector": {"app": "istiod"},
                     "ports": [{"name": "https-dns", "port": 15012, "targetPort": 15012, "protocol": "TCP"},
                               {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"}]}
        }),
    )
    .await;
    let slices = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
        cp.admin.clone(),
        "istio-system",
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
        )),
    );
    cp.apply_object(
        &slices,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "istiod-e2e", "namespace": "istio-system", "labels": {
                "kubernetes.io/service-name": "istiod",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ISTIOD_IP], "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "https-dns", "port": 15012, "protocol": "TCP"},
                      {"name": "https-webhook", "port": 15017, "protocol": "TCP"}]
        }),
    )
    .await;
}

/// Starts the east-west gateway (namespace `10.78.1.0/24`) and waits until it passes both
/// ports through.
pub async fn start_gateway(cp: &ControlPlane, dir: &Path) -> ClusterProxy {
    let ns = Netns::create_in(CLUSTER_NET, 1);
    assert_eq!(ns.ip, GATEWAY_IP);
    ns.forward_from();
    let gw = start_proxy(
        cp,
        ns,
        &dir.join("eastwestgateway"),
        ProxySpec {
            kind: "router",
            namespace: "istio-system",
            service_account: "istio-eastwestgateway",
            workload: "istio-eastwestgateway",
            labels: json!({
                "app": "istio-eastwestgateway",
                "istio": "eastwestgateway",
                "topology.istio.io/network": CLUSTER_NETWORK,
                "service.istio.io/canonical-name": "istio-eastwestgateway"
            }),
            // As Istio's gen-eastwest-gateway.sh: SNI-DNAT clusters for AUTO_PASSTHROUGH, and
            // endpoints of its own network only.
            extra_env: &[
                ("ISTIO_META_ROUTER_MODE", "sni-dnat"),
                ("ISTIO_META_REQUESTED_NETWORK_VIEW", CLUSTER_NETWORK),
            ],
        },
    )
    .await;
    wait_for(
        "the gateway's 15012 and 15443 listeners",
        Duration::from_secs(60),
        || async {
            let l = gw.admin("/listeners");
            (l.contains(":15012") && l.contains(":15443")).then_some(())
        },
    )
    .await;
    gw
}

/// The stand-in Xboard: its HTTP server, its sidecar (inbound captured by `istio-iptables` in
/// its namespace, as in a pod), and the log of the requests it served.
pub struct Xboard {
    /// The HTTP server (`scripts/e2e/xboard`); declared first so it stops before the
    /// namespace (which goes with the proxy).
    pub app: Proc,
    /// The sidecar, and the namespace.
    pub proxy: ClusterProxy,
    /// One JSON object a line per request served.
    pub requests_log: PathBuf,
}

impl Xboard {
    /// The requests it served so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.requests_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("xboard log {l}: {e}")))
            .collect()
    }
}

/// Registers Xboard (ServiceAccount, WorkloadEntry of network [`CLUSTER_NETWORK`], Service
/// `sigma/xboard` selecting it) and starts it with its sidecar.
pub async fn start_xboard(cp: &ControlPlane, dir: &Path) -> Xboard {
    let ns = Netns::create_in(CLUSTER_NET, 2);
    assert_eq!(ns.ip, XBOARD_IP);
    ns.forward_from();
    let dir = dir.join("xboard");
    std::fs::create_dir_all(&dir).unwrap();
    cp.apply_object(
        &cp.core("ServiceAccount", "sigma"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "xboard", "namespace": "sigma"}}),
    )
    .await;
    cp.apply_object(
        &cp.istio("WorkloadEntry", "sigma"),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": "xboard", "namespace": "sigma", "labels": {"app": "xboard"}},
            "spec": {"address": XBOARD_IP, "network": CLUSTER_NETWORK, "serviceAccount": "xboard",
                     "labels": {"app": "xboard", "security.istio.io/tlsMode": "istio"},
                     "ports": {"http": XBOARD_PORT}}
        }),
    )
    .await;
    cp.apply_object(
        &cp.core("Service", "sigma"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "xboard", "namespace": "sigma", "labels": {"app": "xboard"}},
            "spec": {"selector": {"app": "xboard"},
                     "ports": [{"name": "http", "port": XBOARD_PORT, "targetPort": XBOARD_PORT, "protocol": "TCP"}]}
        }),
    )
    .await;
    let requests_log = dir.join("requests.jsonl");
    let mut cmd = ns.command("python3");
    cmd.arg(repo_root().join("scripts/e2e/xboard"))
        .arg(&requests_log)
        .arg(format!("0.0.0.0:{XBOARD_PORT}"))
        .arg(format!("0.0.0.0:{XBOARD_DIRECT_PORT}"));
    let app = Proc::spawn("xboard-app", cmd, &dir);
    // Inbound capture of every port but the proxy's own and the direct one; no outbound
    // capture (Xboard calls nothing in the mesh).
    let out = ns
        .command(env_path("SIGMA_E2E_PILOT_AGENT_BIN"))
        .args([
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "0",
            "-g",
            "0",
            "-m",
            "REDIRECT",
            "-i",
            "",
            "-b",
            "*",
            "-d",
            &format!("15090,15021,15020,{XBOARD_DIRECT_PORT}"),
            "--redirect-dns=false",
        ])
        .output()
        .expect("run istio-iptables");
    std::fs::write(
        dir.join("istio-iptables.log"),
        [out.stdout, out.stderr].concat(),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "istio-iptables in Xboard's namespace failed: see {}",
        dir.join("istio-iptables.log").display()
    );
    let proxy = start_proxy(
        cp,
        ns,
        &dir.join("proxy"),
        ProxySpec {
            kind: "sidecar",
            namespace: "sigma",
            service_account: "xboard",
            workload: "xboard",
            labels: json!({"app": "xboard", "service.istio.io/canonical-name": "xboard",
                           "security.istio.io/tlsMode": "istio"}),
            extra_env: &[],
        },
    )
    .await;
    Xboard {
        app,
        proxy,
        requests_log,
    }
}

//! A stand-in for the few Kubernetes API server endpoints sigma-api calls, served over real
//! HTTP on loopback and reached through a real kubeconfig, so the real sigma-api binary can be
//! tested (and benchmarked) with `--mesh kubernetes` without a cluster:
//!
//! * `GET  /api/v1/namespaces/{ns}/configmaps/{name}` (root certificate, mesh config)
//! * `GET  /api/v1/namespaces/{ns}/services/{name}` (east-west gateway)
//! * `POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token` (TokenRequest)
//! * the reconciler's list / server-side apply / delete of Istio objects, answered as a cluster
//!   that holds only the WorkloadEntries a test put there and accepts every write (without
//!   keeping it);
//! * the list of WorkloadEntries filtered by `fieldSelector=metadata.name=…` that
//!   `GET /api/vps/{id}/mesh` makes.
//!
//! The real API server belongs to the end-to-end harness; this double answers with the same
//! status codes and `Status` bodies for these calls.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A self-signed P-256 certificate (`openssl req -x509 -subj /O=cluster.local`).
pub const ROOT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUF3GR9qK/V/q7AyjZ9Jt22RTjzE8wCgYIKoZIzj0EAwIw
GDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDAgFw0yNjExMjcwMjQ2NDlaGA8yMTI2
MTEwMzAyNDY0OVowGDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKCj5FPx6lbeMHXeZCE1DjCjJEwBLxg9LzHwU+Y+nTg6
csjnQmo6U6mnpQwkAwpGyK3MhuBl7xMHti4N7O4qNoGjUzBRMB0GA1UdDgQWBBSG
m61CjObOZ0DJdWZCwS0zAWt1iDAfBgNVHSMEGDAWgBSGm61CjObOZ0DJdWZCwS0z
AWt1iDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIFtphA51vsd4
XaOZXbuAWlki+vLef93o4sV9DAsvKZ8KAiEAyYF2wORf5h/hZiOZVsLEoK340CiN
vyVeKa5+VNr6gQ8=
-----END CERTIFICATE-----
";

/// `openssl x509 -outform der | sha256sum` of [`ROOT_CERT`].
pub const ROOT_CERT_SHA256: &str =
    "53268bb913f9a57acac620780f91c2eb817058216c351afd3b4d4d6df7a05ff0";

/// A mesh config as Istio's install writes it.
pub const MESH_CONFIG: &str = "\
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: \"true\"
trustDomain: cluster.local
";

/// What the fake cluster holds; tests change it while sigma-api runs.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// ConfigMaps by (namespace, name): their `data`.
    pub config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// Services by (namespace, name): the whole object.
    pub services: BTreeMap<(String, String), Value>,
    /// Service accounts that exist, by (namespace, name).
    pub service_accounts: Vec<(String, String)>,
    /// Status code of TokenRequests for existing accounts (201, or 403 to refuse).
    pub token_status: u16,
    /// Added to every answer.
    pub latency: Duration,
    /// Every call: `METHOD path`.
    pub calls: Vec<String>,
    /// Tokens minted so far.
    pub minted: u64,
    /// WorkloadEntries by (namespace, name): the whole object, status included.
    pub workload_entries: BTreeMap<(String, String), Value>,
    /// Status code of every Istio object list (200, or 403 to refuse).
    pub istio_list_status: u16,
    /// `fieldSelector` of every Istio object list that had one.
    pub field_selectors: Vec<String>,
}

impl Default for Cluster {
    /// A cluster where Istio is installed with an east-west gateway at 198.51.100.50.
    fn default() -> Self {
        let mut c = Cluster {
            config_maps: BTreeMap::new(),
            services: BTreeMap::new(),
            service_accounts: vec![("sigma".into(), "sigma-vm".into())],
            token_status: 201,
            latency: Duration::ZERO,
            calls: Vec::new(),
            minted: 0,
            workload_entries: BTreeMap::new(),
            istio_list_status: 200,
            field_selectors: Vec::new(),
        };
        c.config_maps.insert(
            ("sigma".into(), "istio-ca-root-cert".into()),
            BTreeMap::from([("root-cert.pem".to_string(), ROOT_CERT.to_string())]),
        );
        c.config_maps.insert(
            ("istio-system".into(), "istio".into()),
            BTreeMap::from([("mesh".to_string(), MESH_CONFIG.to_string())]),
        );
        c.set_gateway(
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.50"}]}}),
            json!({}),
        );
        c
    }
}

impl Cluster {
    /// Replaces the east-west gateway Service's status and spec.
    pub fn set_gateway(&mut self, status: Value, spec: Value) {
        self.services.insert(
            ("istio-system".into(), "istio-eastwestgateway".into()),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                   "spec": spec, "status": status}),
        );
    }
}

/// A running fake API server.
pub struct FakeKube {
    pub state: Arc<Mutex<Cluster>>,
    pub base: String,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn handle(state: &Mutex<Cluster>, method: &Method, uri: &Uri, body: &[u8]) -> Response {
    let path = uri.path();
    let mut c = state.lock().unwrap();
    c.calls.push(format!("{method} {path}"));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
            match c.config_maps.get(&(ns.to_string(), name.to_string())) {
                Some(data) => ok(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name, "namespace": ns}, "data": data}),
                ),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("configmaps \"{name}\" not found"),
                ),
            }
        }
        ("GET", ["api", "v1", "namespaces", ns, "services", name]) => {
            match c.services.get(&(ns.to_string(), name.to_string())) {
                Some(s) => ok(StatusCode::OK, s),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("services \"{name}\" not found"),
                ),
            }
        }
        (
            "POST",
            [
                "api",
                "v1",
                "namespaces",
                ns,
                "serviceaccounts",
                sa,
                "token",
            ],
        ) => {
            if !c
                .service_accounts
                .contains(&(ns.to_string(), sa.to_string()))
            {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("serviceaccounts \"{sa}\" not found"),
                );
            }
            if c.token_status != 201 {
                return status(
                    StatusCode::from_u16(c.token_status).unwrap(),
                    "Forbidden",
                    "cannot create resource \"serviceaccounts/token\"",
                );
            }
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            if req["spec"]["audiences"] != json!(["istio-ca"]) {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "audience istio-ca expected",
                );
            }
            let secs = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
            c.minted += 1;
            let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
            let expires = expires
                .replace_nanosecond(0)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            ok(
                StatusCode::CREATED,
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "metadata": {"name": sa, "namespace": ns},
                        "spec": req["spec"],
                        "status": {"token": format!("eyJhbGciOiJSUzI1NiJ9.{sa}-{}.c2ln", c.minted),
                                   "expirationTimestamp": expires}}),
            )
        }
        // The reconciler's calls: a cluster holding the test's WorkloadEntries that accepts
        // every write.
        (
            "GET",
            [
                "apis",
                "networking.istio.io",
                "v1",
                "namespaces",
                ns,
                plural,
            ],
        ) => {
            if c.istio_list_status != 200 {
                return status(
                    StatusCode::from_u16(c.istio_list_status).unwrap(),
                    "Forbidden",
                    &format!(
                        "cannot list resource \"{plural}\" in API group \"networking.istio.io\""
                    ),
                );
            }
            let selector: Option<String> = uri.query().and_then(|q| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                    .ok()?
                    .into_iter()
                    .find(|(k, _)| k == "fieldSelector")
                    .map(|(_, v)| v)
            });
            if let Some(f) = &selector {
                c.field_selectors.push(f.clone());
            }
            let wanted = selector
                .as_deref()
                .map(|f| f.strip_prefix("metadata.name=").unwrap_or(f).to_string());
            let items: Vec<Value> = if *plural == "workloadentries" {
                c.workload_entries
                    .iter()
                    .filter(|((n, name), _)| n == ns && wanted.as_ref().is_none_or(|w| w == name))
                    .map(|(_, v)| v.clone())
                    .collect()
            } else {
                Vec::new()
            };
            ok(
                StatusCode::OK,
                &json!({"apiVersion": "networking.istio.io/v1", "kind": "List",
                        "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("PATCH", ["apis", "networking.istio.io", "v1", "namespaces", _, _, _]) => {
            let mut v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            v["metadata"]["uid"] = json!("uid-1");
            ok(StatusCode::OK, &v)
        }
        ("DELETE", ["apis", "networking.istio.io", "v1", "namespaces", _, _, _]) => ok(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the fake API server does not serve {method} {path}"),
        ),
    }
}

impl FakeKube {
    /// Starts serving `cluster` on a free loopback port and writes a kubeconfig for it in `dir`.
    pub async fn start(dir: &Path, cluster: Cluster) -> FakeKube {
        let state = Arc::new(Mutex::new(cluster));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let shared = shared.clone();
            async move {
                let latency = shared.lock().unwrap().latency;
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                handle(&shared, &method, &uri, &body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let base = format!("http://{addr}");
        let kubeconfig = write_kubeconfig(dir, &base);
        FakeKube {
            state,
            base,
            kubeconfig,
        }
    }

    /// Changes the cluster.
    pub fn edit(&self, f: impl FnOnce(&mut Cluster)) {
        f(&mut self.state.lock().unwrap());
    }

    /// Calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

/// A kubeconfig naming `server` (with a bearer token, as a service account would have).
pub fn write_kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: sigma-api\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sigma-api\n    namespace: sigma\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// The environment that starts sigma-api in kubernetes mode against `kubeconfig`, reconciling
/// without a Lease and reading the cluster for every bundle.
pub fn kube_env(kubeconfig: &Path) -> Vec<(String, String)> {
    vec![
        ("SIGMA_MESH_MODE".into(), "kubernetes".into()),
        ("SIGMA_KUBECONFIG".into(), kubeconfig.display().to_string()),
        ("SIGMA_MESH_LEADER_ELECTION".into(), "none".into()),
        ("SIGMA_ISTIO_BOOTSTRAP_CACHE".into(), "0".into()),
        ("SIGMA_KUBE_TIMEOUT".into(), "3s".into()),
    ]
}

//! One stand-in for the Kubernetes API server, for every test and benchmark that would
//! otherwise need a cluster. It answers the calls sigma makes with the API server's status
//! codes and `Status` bodies, records every call, and is reached two ways over the same state:
//!
//! * in-process, through a `kube::Client` ([`FakeKube::client`], or [`FakeKube::answer`] for a
//!   `tower_test` mock handle), for the reconciler's tests, which drive one pass at a time;
//! * over real HTTP on loopback with a kubeconfig ([`FakeKube::start`]), for the real
//!   sigma-api binary in `--mesh kubernetes`.
//!
//! What it serves:
//! * `GET  /api/v1/namespaces/{ns}/configmaps/{name}` (root certificate, mesh config);
//! * `GET  /api/v1/namespaces/{ns}/services/{name}` (east-west gateway);
//! * `POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token` (TokenRequest);
//! * Istio objects (`/apis/networking.istio.io/v1/namespaces/{ns}/{plural}[/{name}]`): list
//!   (pages with `limit`/`continue`, `fieldSelector=metadata.name=…`), get, server-side apply
//!   and delete with UID preconditions. With [`IstioWrites::Discard`] writes are answered but
//!   not kept, so a test alone decides which objects a reader of the cluster sees.
//!
//! One file (about 660 lines) because it is one stand-in: the cluster state, the answers to
//! each call and the two ways of reaching it share every type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use crate::api::Mesh;

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

const ISTIO_PREFIX: &str = "/apis/networking.istio.io/v1/namespaces/";

/// What the cluster does with writes of Istio objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioWrites {
    /// Kept, as the API server does (the reconciler's tests watch the cluster converge).
    Keep,
    /// Answered as if kept, but not kept: the cluster holds only the objects the test put
    /// there, so a test of a reader (sigma-api's `GET /api/vps/{id}/mesh`) decides what it
    /// sees while sigma-api's reconciler runs alongside.
    Discard,
}

/// One call as the server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Its query string, as sent.
    pub query: String,
    /// Its `content-type`.
    pub content_type: String,
    /// Its body as JSON (`Null` when empty).
    pub body: Value,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

impl Call {
    /// `GET`, `PATCH`, `DELETE`, …
    pub fn verb(&self) -> &str {
        self.method.as_str()
    }

    /// `METHOD path`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn param(&self, key: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// What the fake cluster holds; tests change it while it serves.
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
    /// Tokens minted so far.
    pub minted: u64,
    /// Istio objects by (namespace, plural, name): the whole object, status included.
    pub objects: BTreeMap<(String, String, String), Value>,
    /// Whether writes of Istio objects are kept.
    pub istio_writes: IstioWrites,
    /// Status code of every Istio object list (200, or 403 to refuse).
    pub istio_list_status: u16,
    /// `fieldSelector` of every Istio object list that had one.
    pub field_selectors: Vec<String>,
    /// Every call.
    pub calls: Vec<Call>,
    /// Requests still to fail as if the API server were unreachable (a transport error
    /// in-process; over HTTP, 503 without a `Status`).
    pub fail_next: usize,
    /// Added to every answer.
    pub latency: Duration,
    next_uid: u64,
    next_rv: u64,
}

impl Default for Cluster {
    /// A cluster where Istio is installed with an east-west gateway at 198.51.100.50, the
    /// `sigma-vm` service account exists, and no Istio object yet; writes are kept.
    fn default() -> Self {
        let mut c = Cluster {
            config_maps: BTreeMap::new(),
            services: BTreeMap::new(),
            service_accounts: vec![("sigma".into(), "sigma-vm".into())],
            token_status: 201,
            minted: 0,
            objects: BTreeMap::new(),
            istio_writes: IstioWrites::Keep,
            istio_list_status: 200,
            field_selectors: Vec::new(),
            calls: Vec::new(),
            fail_next: 0,
            latency: Duration::ZERO,
            next_uid: 0,
            next_rv: 0,
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
    /// The same cluster, with Istio writes answered but not kept ([`IstioWrites::Discard`]).
    pub fn discarding_writes(mut self) -> Self {
        self.istio_writes = IstioWrites::Discard;
        self
    }

    /// The same cluster, adding `latency` to every answer.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Replaces the east-west gateway Service's status and spec.
    pub fn set_gateway(&mut self, status: Value, spec: Value) {
        self.services.insert(
            ("istio-system".into(), "istio-eastwestgateway".into()),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                   "spec": spec, "status": status}),
        );
    }

    /// Creates an Istio object as another tool (or an earlier sigma) would: the server gives
    /// it a UID and a resource version.
    pub fn insert(&mut self, namespace: &str, plural: &str, mut obj: Value) {
        self.next_uid += 1;
        self.next_rv += 1;
        obj["metadata"]["uid"] = json!(format!("uid-{}", self.next_uid));
        obj["metadata"]["resourceVersion"] = json!(self.next_rv.to_string());
        obj["metadata"]["namespace"] = json!(namespace);
        self.put(namespace, plural, obj);
    }

    /// Puts an Istio object exactly as given (server fields and status included).
    pub fn put(&mut self, namespace: &str, plural: &str, obj: Value) {
        let name = obj["metadata"]["name"].as_str().expect("metadata.name");
        self.objects.insert(
            (namespace.to_string(), plural.to_string(), name.to_string()),
            obj,
        );
    }

    /// Answers one call (already recorded).
    fn respond(&mut self, call: &Call) -> (StatusCode, Value) {
        let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        match (call.verb(), parts.as_slice()) {
            ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
                match self.config_maps.get(&(ns.to_string(), name.to_string())) {
                    Some(data) => (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": name, "namespace": ns}, "data": data}),
                    ),
                    None => not_found(&format!("configmaps \"{name}\" not found")),
                }
            }
            ("GET", ["api", "v1", "namespaces", ns, "services", name]) => {
                match self.services.get(&(ns.to_string(), name.to_string())) {
                    Some(s) => (StatusCode::OK, s.clone()),
                    None => not_found(&format!("services \"{name}\" not found")),
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
            ) => self.token_request(ns, sa, &call.body),
            _ if call.path.starts_with(ISTIO_PREFIX) => {
                let rest: Vec<&str> = call.path[ISTIO_PREFIX.len()..].split('/').collect();
                match (call.verb(), rest.as_slice()) {
                    ("GET", [ns, plural]) => self.list(call, ns, plural),
                    ("GET", [ns, plural, name]) => match self.objects.get(&key(ns, plural, name)) {
                        Some(o) => (StatusCode::OK, o.clone()),
                        None => not_found(&format!("{plural} \"{name}\" not found")),
                    },
                    ("PATCH", [ns, plural, name]) => self.apply(call, ns, plural, name),
                    ("DELETE", [ns, plural, name]) => self.delete(call, ns, plural, name),
                    _ => status(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        "unsupported",
                    ),
                }
            }
            _ => not_found(&format!(
                "the fake API server does not serve {} {}",
                call.method, call.path
            )),
        }
    }

    fn token_request(&mut self, ns: &str, sa: &str, req: &Value) -> (StatusCode, Value) {
        if !self
            .service_accounts
            .contains(&(ns.to_string(), sa.to_string()))
        {
            return not_found(&format!("serviceaccounts \"{sa}\" not found"));
        }
        if self.token_status != 201 {
            return status(
                StatusCode::from_u16(self.token_status).unwrap(),
                "Forbidden",
                "cannot create resource \"serviceaccounts/token\"",
            );
        }
        if req["spec"]["audiences"] != json!(["istio-ca"]) {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "audience istio-ca expected",
            );
        }
        let secs = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
        self.minted += 1;
        let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
        let expires = expires
            .replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        (
            StatusCode::CREATED,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "metadata": {"name": sa, "namespace": ns},
                   "spec": req["spec"],
                   "status": {"token": format!("eyJhbGciOiJSUzI1NiJ9.{sa}-{}.c2ln", self.minted),
                              "expirationTimestamp": expires}}),
        )
    }

    fn list(&mut self, call: &Call, ns: &str, plural: &str) -> (StatusCode, Value) {
        if self.istio_list_status != 200 {
            return status(
                StatusCode::from_u16(self.istio_list_status).unwrap(),
                "Forbidden",
                &format!("cannot list resource \"{plural}\" in API group \"networking.istio.io\""),
            );
        }
        let selector = call.param("fieldSelector");
        if let Some(f) = &selector {
            self.field_selectors.push(f.clone());
        }
        let wanted = selector.map(|f| f.strip_prefix("metadata.name=").unwrap_or(&f).to_string());
        let limit: usize = call
            .param("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let start: usize = call
            .param("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let all: Vec<Value> = self
            .objects
            .iter()
            .filter(|((n, p, name), _)| {
                n == ns && p == plural && wanted.as_ref().is_none_or(|w| w == name)
            })
            .map(|(_, v)| v.clone())
            .collect();
        let end = start.saturating_add(limit).min(all.len());
        let items = all[start.min(all.len())..end].to_vec();
        let cont = if end < all.len() {
            end.to_string()
        } else {
            String::new()
        };
        (
            StatusCode::OK,
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": format!("{}List", kind_of(plural)),
                "metadata": {"resourceVersion": self.next_rv.to_string(), "continue": cont},
                "items": items,
            }),
        )
    }

    fn apply(&mut self, call: &Call, ns: &str, plural: &str, name: &str) -> (StatusCode, Value) {
        if call.content_type != "application/apply-patch+yaml" {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "only server-side apply",
            );
        }
        let Some(manager) = call.param("fieldManager") else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "fieldManager is required for apply",
            );
        };
        let k = key(ns, plural, name);
        self.next_rv += 1;
        let rv = self.next_rv;
        let uid = match self.objects.get(&k) {
            Some(old) => old["metadata"]["uid"].clone(),
            None => {
                self.next_uid += 1;
                json!(format!("uid-{}", self.next_uid))
            }
        };
        let mut obj = call.body.clone();
        obj["metadata"]["uid"] = uid;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["generation"] = json!(1);
        obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        obj["metadata"]["managedFields"] = json!([{"manager": manager,
            "operation": "Apply", "apiVersion": "networking.istio.io/v1"}]);
        // What Istio's controllers add; sigma must ignore it.
        obj["status"] = json!({"conditions": [{"type": "Reconciled", "status": "True"}]});
        if self.istio_writes == IstioWrites::Keep {
            self.objects.insert(k, obj.clone());
        }
        (StatusCode::OK, obj)
    }

    fn delete(&mut self, call: &Call, ns: &str, plural: &str, name: &str) -> (StatusCode, Value) {
        let success =
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
        if self.istio_writes == IstioWrites::Discard {
            return (StatusCode::OK, success);
        }
        let k = key(ns, plural, name);
        let Some(old) = self.objects.get(&k) else {
            return not_found("not found");
        };
        if let Some(uid) = call.body["preconditions"]["uid"].as_str()
            && old["metadata"]["uid"].as_str() != Some(uid)
        {
            return status(StatusCode::CONFLICT, "Conflict", "UID precondition failed");
        }
        self.objects.remove(&k);
        (StatusCode::OK, success)
    }
}

fn key(ns: &str, plural: &str, name: &str) -> (String, String, String) {
    (ns.to_string(), plural.to_string(), name.to_string())
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "workloadgroups" => "WorkloadGroup",
        "workloadentries" => "WorkloadEntry",
        "serviceentries" => "ServiceEntry",
        "sidecars" => "Sidecar",
        "destinationrules" => "DestinationRule",
        _ => "Unknown",
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn not_found(message: &str) -> (StatusCode, Value) {
    status(StatusCode::NOT_FOUND, "NotFound", message)
}

/// The transport failure of a call [`Cluster::fail_next`] fails.
const UNREACHABLE: &str = "connection refused (fake API server down)";

/// A running fake API server: the cluster's state, and where it listens when started over
/// HTTP.
#[derive(Clone, Default)]
pub struct FakeKube {
    /// The cluster; tests change it while sigma runs.
    pub state: Arc<Mutex<Cluster>>,
    served: Option<(String, PathBuf)>,
}

impl FakeKube {
    /// A fake serving `cluster` in-process only (see [`FakeKube::client`]).
    pub fn new(cluster: Cluster) -> FakeKube {
        FakeKube {
            state: Arc::new(Mutex::new(cluster)),
            served: None,
        }
    }

    /// Starts serving `cluster` over HTTP on a free loopback port and writes a kubeconfig for
    /// it in `dir`.
    pub async fn start(dir: &Path, cluster: Cluster) -> FakeKube {
        let mut me = FakeKube::new(cluster);
        let shared = me.state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method,
                  uri: http::Uri,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let shared = shared.clone();
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let (code, v) = match process(&shared, method, &uri, content_type, &body).await
                    {
                        Ok(answer) => answer,
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, json!(e)),
                    };
                    (code, [("content-type", "application/json")], v.to_string())
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let base = format!("http://{addr}");
        let kubeconfig = write_kubeconfig(dir, &base);
        me.served = Some((base, kubeconfig));
        me
    }

    /// `http://127.0.0.1:PORT` of a fake started with [`FakeKube::start`].
    pub fn base(&self) -> &str {
        &self.served.as_ref().expect("started over HTTP").0
    }

    /// The kubeconfig of a fake started with [`FakeKube::start`].
    pub fn kubeconfig(&self) -> &Path {
        &self.served.as_ref().expect("started over HTTP").1
    }

    /// sigma-api's mesh mode `kubernetes` against this fake.
    pub fn mesh(&self) -> Mesh {
        Mesh::Kubernetes(self.kubeconfig().to_path_buf())
    }

    /// A kube client whose every request this fake answers in-process.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { me.handle(req).await }
        });
        kube::Client::new(svc, "default")
    }

    /// Answers one in-process request.
    pub async fn handle(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await?;
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (code, v) =
            process(&self.state, parts.method, &parts.uri, content_type, &bytes).await?;
        Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap())
    }

    /// Answers one request of a `tower_test` mock handle the way [`FakeKube::handle`] would.
    pub async fn answer(
        &self,
        req: Request<Body>,
        send: tower_test::mock::SendResponse<Response<Body>>,
    ) {
        match self.handle(req).await {
            Ok(r) => send.send_response(r),
            Err(e) => send.send_error(e),
        }
    }

    /// Changes the cluster.
    pub fn edit<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Calls made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// Calls by verb: (GET, PATCH, DELETE).
    pub fn counts(&self) -> (usize, usize, usize) {
        let calls = self.calls();
        let n = |m: &str| calls.iter().filter(|c| c.verb() == m).count();
        (n("GET"), n("PATCH"), n("DELETE"))
    }

    /// Creates an Istio object (see [`Cluster::insert`]).
    pub fn insert(&self, namespace: &str, plural: &str, obj: Value) {
        self.edit(|c| c.insert(namespace, plural, obj));
    }

    /// An Istio object, if the cluster holds it.
    pub fn object(&self, namespace: &str, plural: &str, name: &str) -> Option<Value> {
        self.edit(|c| c.objects.get(&key(namespace, plural, name)).cloned())
    }

    /// How many Istio objects of `plural` the cluster holds.
    pub fn count(&self, plural: &str) -> usize {
        self.edit(|c| c.objects.keys().filter(|(_, p, _)| p == plural).count())
    }
}

/// Records and answers one call, after the cluster's latency; `Err` is a transport failure.
async fn process(
    state: &Mutex<Cluster>,
    method: Method,
    uri: &http::Uri,
    content_type: String,
    bytes: &[u8],
) -> Result<(StatusCode, Value), &'static str> {
    let latency = state.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = if bytes.is_empty() {
        Some(Value::Null)
    } else {
        serde_json::from_slice(bytes).ok()
    };
    let call = Call {
        method,
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        content_type,
        body: body.clone().unwrap_or(Value::Null),
        at: tokio::time::Instant::now(),
    };
    let mut c = state.lock().unwrap();
    c.calls.push(call.clone());
    if c.fail_next > 0 {
        c.fail_next -= 1;
        return Err(UNREACHABLE);
    }
    if body.is_none() {
        return Ok(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON",
        ));
    }
    Ok(c.respond(&call))
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

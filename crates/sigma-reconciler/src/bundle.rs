//! The Kubernetes reads behind a VPS's Istio bootstrap bundle (`GET
//! /api/agent/istio-bootstrap`): the same objects `istioctl x workload entry configure` reads,
//! read directly by sigma-api, then rendered by [`sigma_mesh::bundle`].
//!
//! * ConfigMap `istio-ca-root-cert` in the mesh namespace → `root-cert.pem`;
//! * ConfigMap `istio[-<rev>]` in Istio's namespace → the mesh config behind `mesh.yaml`;
//! * Service `istio-eastwestgateway` in Istio's namespace (or `--eastwest-address`) → where the
//!   VPS reaches istiod, for `hosts`;
//! * a TokenRequest for the purpose's service account, audience `istio-ca` → `istio-token`.
//!
//! The first three are the same for every VPS and change rarely (a root rotation, an Istio
//! upgrade): they are cached for a short time, so a fleet refreshing its tokens costs the API
//! server one TokenRequest per bundle. A failure to read them is remembered for a second, so a
//! fleet retrying against a broken cluster does not multiply into the API server either.
//! Tokens are never cached.
//!
//! Every failure names what is missing or which call failed; none of them is the client's
//! fault, and sigma-api answers them with 503.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, PostParams};
use sigma_mesh::bundle::{
    BundleInput, ControlPlane, EASTWEST_SERVICE, ISTIOD_PORT, MESH_CONFIG_KEY,
    ROOT_CERT_CONFIG_MAP, ROOT_CERT_KEY, TOKEN_AUDIENCE, bundle_workload, render_bundle,
};
use sigma_mesh::{MeshPurpose, MeshTemplate, MeshVps};
use sigma_types::mesh::{IstioBootstrapBundle, IstioBootstrapFiles, IstioProxyArchive};
use time::OffsetDateTime;

use crate::limiter::RateLimiter;
use crate::metrics::{BundleCall, BundleCallLabels, CallCounters};
use crate::{Error, HostProblem, Missing, Result, TokenAnswer};

/// How long a failure to read the shared pieces is answered from memory.
const FAILURE_TTL: Duration = Duration::from_secs(1);

/// Shortest token lifetime the API server grants (`expirationSeconds` minimum).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Longest token lifetime sigma asks for: a day. Longer-lived credentials on thousands of
/// hosts only widen what a stolen disk gives away; pilot-agent needs the token for first
/// contact only, since it renews its certificate with the current one.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How bundles are built.
#[derive(Debug, Clone)]
pub struct BundleSettings {
    /// Namespace of the workloads (root certificate ConfigMap, service accounts).
    pub mesh_namespace: String,
    /// Where Istio runs and how it is named.
    pub control_plane: ControlPlane,
    /// Lifetime asked for each token.
    pub token_ttl: Duration,
    /// Name of the east-west gateway Service in Istio's namespace.
    pub eastwest_service: String,
    /// The east-west gateway's address, when the operator gives it (the Service is then not
    /// read).
    pub eastwest_address: Option<IpAddr>,
    /// Longest wait for one API call (and for resolving the gateway's host name).
    pub timeout: Duration,
    /// How long the root certificate, mesh config and gateway address are reused; zero reads
    /// them for every bundle.
    pub cache_ttl: Duration,
    /// Where agents download the proxy, when configured.
    pub istio_proxy: Option<IstioProxyArchive>,
    /// Average TokenRequests per second toward the API server (every bundle makes one).
    pub token_qps: f64,
    /// TokenRequests allowed at once above that average.
    pub token_burst: u32,
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings {
            mesh_namespace: "sigma".into(),
            control_plane: ControlPlane::default(),
            token_ttl: Duration::from_secs(3600),
            eastwest_service: EASTWEST_SERVICE.into(),
            eastwest_address: None,
            timeout: Duration::from_secs(15),
            cache_ttl: Duration::from_secs(10),
            istio_proxy: None,
            token_qps: 100.0,
            token_burst: 200,
        }
    }
}

/// What every bundle shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPieces {
    /// `root-cert.pem`.
    pub root_cert_pem: String,
    /// The `mesh` key of Istio's ConfigMap.
    pub mesh_config: String,
    /// The east-west gateway's address.
    pub eastwest: IpAddr,
}

/// A minted service-account token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token (a secret: never logged).
    pub token: String,
    /// When the API server stops accepting it.
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// API calls made for bundles, by what was called (for metrics and the benchmark).
pub type BundleCalls = CallCounters<BundleCallLabels>;

/// Where the east-west gateway's address is found on its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAddress {
    /// A load-balancer IP or an external IP.
    Ip(IpAddr),
    /// A load-balancer host name (AWS ELB and the like), still to be resolved.
    Hostname(String),
}

/// The gateway's address on its Service: a load-balancer ingress IP, else a load-balancer
/// ingress host name, else the first `spec.externalIPs` entry; `None` when it has none yet (a
/// load balancer still pending).
pub fn gateway_address(svc: &Service) -> Option<GatewayAddress> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(ip) = ingress
        .iter()
        .filter_map(|i| i.ip.as_deref())
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
    {
        return Some(GatewayAddress::Ip(ip));
    }
    if let Some(h) = ingress
        .iter()
        .filter_map(|i| i.hostname.as_deref())
        .map(str::trim)
        .find(|h| !h.is_empty())
    {
        return Some(GatewayAddress::Hostname(h.to_string()));
    }
    svc.spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(GatewayAddress::Ip)
}

/// The address to give VPS for a resolved host name: the first IPv4 address (what almost
/// every VPS can reach), else the first address.
pub fn pick_address(addrs: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
    let all: Vec<IpAddr> = addrs.into_iter().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
}

struct Cached {
    at: Instant,
    result: std::result::Result<Arc<SharedPieces>, Error>,
}

/// Issues Istio bootstrap bundles: the API server, as bundle issuance uses it.
pub struct BundleIssuer {
    client: kube::Client,
    settings: BundleSettings,
    cache: Mutex<Option<Cached>>,
    /// Spaces out TokenRequests: a fleet re-fetching bundles at once (a sigma-api restart,
    /// agents restarted together) must not turn into a TokenRequest storm on the API server.
    tokens: RateLimiter,
    /// Calls made so far.
    pub calls: BundleCalls,
}

/// Longest a bundle request waits in line for a TokenRequest; beyond it the caller is told when
/// to come back (503 with Retry-After), so a storm does not pile up open requests.
pub const TOKEN_QUEUE_MAX: Duration = Duration::from_secs(2);

/// A copy of a failure to hand to the next callers within [`FAILURE_TTL`].
fn replay(e: &Error) -> Error {
    match e {
        Error::Missing(m) => Error::Missing(m.clone()),
        Error::Kube { doing, source } => Error::Kube {
            doing: doing.clone(),
            source: source.clone(),
        },
        Error::Encoding { what, reason } => Error::Encoding {
            what: what.clone(),
            reason: reason.clone(),
        },
        Error::Timeout(d) => Error::Timeout(*d),
        Error::Model(sigma_mesh::Error::BadClusterData { what, reason }) => {
            Error::Model(sigma_mesh::Error::BadClusterData {
                what: what.clone(),
                reason: reason.clone(),
            })
        }
        other => Error::Encoding {
            what: "the cluster's bundle pieces".into(),
            reason: other.to_string(),
        },
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl BundleIssuer {
    /// Wraps a client (a real one, or one over a test service). The settings are taken as
    /// validated by the caller (sigma-api checks its flags at start).
    pub fn new(client: kube::Client, settings: BundleSettings) -> Self {
        BundleIssuer {
            client,
            tokens: RateLimiter::new(settings.token_qps, settings.token_burst),
            settings,
            cache: Mutex::new(None),
            calls: BundleCalls::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &BundleSettings {
        &self.settings
    }

    /// Registers the call counters into `registry` (sigma-api: its `bootstrap` sub-registry).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.calls.register(
            registry,
            "made for Istio bootstrap bundles by call (config_map, service, token_request)",
            BundleCall::ALL.map(|call| BundleCallLabels { call }),
        );
    }

    async fn timed<T>(
        &self,
        call: BundleCall,
        f: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        crate::cluster::timed_call(
            self.settings.timeout,
            &self.calls,
            BundleCallLabels { call },
            f,
        )
        .await
    }

    /// One key of one ConfigMap; `hint` says what its absence usually means.
    async fn config_map_key(&self, ns: &str, name: &str, key: &str, hint: &str) -> Result<String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let cm = match self.timed(BundleCall::ConfigMap, api.get(name)).await? {
            Ok(cm) => cm,
            Err(e) if is_not_found(&e) => {
                return Err(Missing::ConfigMap {
                    namespace: ns.into(),
                    name: name.into(),
                    hint: hint.into(),
                }
                .into());
            }
            Err(e) => return Err(Error::kube(format!("reading ConfigMap {ns}/{name}"), e)),
        };
        cm.data.and_then(|mut d| d.remove(key)).ok_or_else(|| {
            Missing::ConfigMapKey {
                namespace: ns.into(),
                name: name.into(),
                key: key.into(),
            }
            .into()
        })
    }

    async fn root_cert(&self) -> Result<String> {
        self.config_map_key(
            &self.settings.mesh_namespace,
            ROOT_CERT_CONFIG_MAP,
            ROOT_CERT_KEY,
            "istiod writes it into every namespace it watches: is istiod installed and running?",
        )
        .await
    }

    async fn mesh_config(&self) -> Result<String> {
        let cp = &self.settings.control_plane;
        let hint = match cp.revision() {
            Some(r) => format!("is Istio revision {r} installed? see --istio-revision"),
            None => "is Istio installed? a revisioned install needs --istio-revision".into(),
        };
        self.config_map_key(&cp.namespace, &cp.mesh_config_map(), MESH_CONFIG_KEY, &hint)
            .await
    }

    async fn eastwest(&self) -> Result<IpAddr> {
        if let Some(a) = self.settings.eastwest_address {
            return Ok(a);
        }
        let ns = &self.settings.control_plane.namespace;
        let name = &self.settings.eastwest_service;
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let svc = match self.timed(BundleCall::Service, api.get(name)).await? {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => {
                return Err(Missing::GatewayService {
                    namespace: ns.clone(),
                    name: name.clone(),
                }
                .into());
            }
            Err(e) => return Err(Error::kube(format!("reading Service {ns}/{name}"), e)),
        };
        match gateway_address(&svc) {
            Some(GatewayAddress::Ip(ip)) => Ok(ip),
            Some(GatewayAddress::Hostname(h)) => self.resolve(&h, ns, name).await,
            None => Err(Missing::GatewayAddress {
                namespace: ns.clone(),
                name: name.clone(),
            }
            .into()),
        }
    }

    async fn resolve(&self, host: &str, ns: &str, name: &str) -> Result<IpAddr> {
        let missing = |problem| -> Error {
            Missing::GatewayHost {
                host: host.into(),
                namespace: ns.into(),
                name: name.into(),
                problem,
            }
            .into()
        };
        let found = tokio::time::timeout(
            self.settings.timeout,
            tokio::net::lookup_host((host, ISTIOD_PORT)),
        )
        .await
        .map_err(|_| missing(HostProblem::Timeout))?
        .map_err(|e| missing(HostProblem::Lookup(Arc::new(e))))?;
        pick_address(found.map(|s| s.ip())).ok_or_else(|| missing(HostProblem::NoAddress))
    }

    async fn read_shared(&self) -> Result<SharedPieces> {
        let (root_cert_pem, mesh_config, eastwest) =
            tokio::try_join!(self.root_cert(), self.mesh_config(), self.eastwest())?;
        Ok(SharedPieces {
            root_cert_pem,
            mesh_config,
            eastwest,
        })
    }

    /// The root certificate, mesh config and gateway address, from the cache when fresh.
    pub async fn shared(&self) -> Result<Arc<SharedPieces>> {
        let ttl = self.settings.cache_ttl;
        if !ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.as_ref() {
                match &c.result {
                    Ok(p) if c.at.elapsed() < ttl => return Ok(p.clone()),
                    Err(e) if c.at.elapsed() < FAILURE_TTL.min(ttl) => return Err(replay(e)),
                    _ => {}
                }
            }
        }
        // Not read under the lock: a slow API server must not queue every request behind one
        // read. A few concurrent misses read the same objects; the last one to finish is kept.
        let result = self.read_shared().await.map(Arc::new);
        if !ttl.is_zero() {
            let stored = match &result {
                Ok(p) => Ok(p.clone()),
                Err(e) => Err(replay(e)),
            };
            *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
                at: Instant::now(),
                result: stored,
            });
        }
        result
    }

    /// A fresh token for a service account of the mesh namespace, audience `istio-ca`.
    pub async fn token(&self, service_account: &str) -> Result<IssuedToken> {
        self.tokens
            .acquire_within(TOKEN_QUEUE_MAX)
            .await
            .map_err(|retry_after| Error::Throttled {
                qps: self.settings.token_qps,
                retry_after,
            })?;
        let ns = &self.settings.mesh_namespace;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![TOKEN_AUDIENCE.to_string()],
                expiration_seconds: Some(self.settings.token_ttl.as_secs() as i64),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let resp = match self
            .timed(
                BundleCall::TokenRequest,
                api.create_token_request(service_account, &PostParams::default(), &req),
            )
            .await?
        {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => {
                return Err(Missing::ServiceAccount {
                    namespace: ns.clone(),
                    name: service_account.into(),
                }
                .into());
            }
            Err(e) => {
                return Err(Error::kube(
                    format!("TokenRequest for ServiceAccount {ns}/{service_account}"),
                    e,
                ));
            }
        };
        let no_token = |answer| -> Error {
            Missing::Token {
                namespace: ns.clone(),
                name: service_account.into(),
                answer,
            }
            .into()
        };
        let status = resp.status.ok_or_else(|| no_token(TokenAnswer::NoToken))?;
        if status.token.trim().is_empty() {
            return Err(no_token(TokenAnswer::EmptyToken));
        }
        let ts = status.expiration_timestamp.0;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(ts.as_second()).map_err(|e| Error::Encoding {
                what: "TokenRequest expiration time".into(),
                reason: e.to_string(),
            })?;
        Ok(IssuedToken {
            token: status.token,
            expires_at,
        })
    }

    /// The bundle of one VPS: its workload as the reconciler computes it, the shared pieces and
    /// a fresh token (read concurrently), rendered and checked the way the agent checks it.
    ///
    /// [`Error::Model`] with [`sigma_mesh::Error::NotMeshed`] or
    /// [`sigma_mesh::Error::InvalidPurpose`] is about the inventory (the VPS has no proxy);
    /// every other error is about the cluster.
    pub async fn issue(
        &self,
        template: &MeshTemplate,
        purpose: &MeshPurpose,
        vps: &MeshVps,
    ) -> Result<IstioBootstrapBundle> {
        let workload = bundle_workload(template, purpose, vps)?;
        let (shared, token) =
            tokio::try_join!(self.shared(), self.token(&workload.service_account))?;
        let rendered = render_bundle(&BundleInput {
            control_plane: &self.settings.control_plane,
            workload: &workload,
            root_cert_pem: &shared.root_cert_pem,
            mesh_config: &shared.mesh_config,
            eastwest: shared.eastwest,
            istio_proxy: self.settings.istio_proxy.as_ref(),
        })?;
        let bundle = IstioBootstrapBundle {
            vps_id: vps.id,
            hostname: vps.hostname.clone(),
            workload_entry: rendered.workload_entry,
            files: IstioBootstrapFiles {
                istio_token: token.token,
                ..rendered.files
            },
            token_expires_at: token.expires_at,
            root_cert_sha256: rendered.root_cert_sha256,
            bundle_version: rendered.bundle_version,
            interception: rendered.interception,
            egress: rendered.egress,
            istio_proxy: rendered.istio_proxy,
        };
        // The agent refuses a bundle that fails these checks; failing here names the cause
        // (an oversized root certificate bundle, a token with spaces) in sigma-api's answer
        // instead of in a VPS's log.
        bundle.check().map_err(|f| {
            Error::Model(sigma_mesh::Error::BadClusterData {
                what: "the bundle built from the cluster".into(),
                reason: f.to_string(),
            })
        })?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use sigma_types::{IpAddress, VpsStatus};

    const ROOT_CERT: &str = "-----BEGIN CERTIFICATE-----
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

    const TOKEN_PATH: &str = "/api/v1/namespaces/sigma/serviceaccounts/sigma-vm/token";
    const ROOT_PATH: &str = "/api/v1/namespaces/sigma/configmaps/istio-ca-root-cert";
    const MESH_PATH: &str = "/api/v1/namespaces/istio-system/configmaps/istio";
    const SVC_PATH: &str = "/api/v1/namespaces/istio-system/services/istio-eastwestgateway";

    /// What the mocked API server answers.
    enum Reply {
        Json(u16, Value),
        /// A transport error: the API server is unreachable.
        Down,
    }

    type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

    fn status(code: u16, reason: &str, message: &str) -> Reply {
        Reply::Json(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": reason, "message": message, "code": code}),
        )
    }

    fn config_map(ns: &str, name: &str, key: &str, value: &str) -> Reply {
        Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": ns}, "data": {key: value}}),
        )
    }

    fn service(status: Value, spec: Value) -> Reply {
        Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                   "spec": spec, "status": status}),
        )
    }

    fn lb_ip(ip: &str) -> Reply {
        service(
            json!({"loadBalancer": {"ingress": [{"ip": ip}]}}),
            json!({}),
        )
    }

    fn token_reply(body: &Value) -> Reply {
        let secs = body["spec"]["expirationSeconds"].as_i64().unwrap_or(0);
        assert_eq!(body["spec"]["audiences"], json!(["istio-ca"]), "{body}");
        Reply::Json(
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": body["spec"].clone(),
                   "status": {"token": format!("eyJ.{secs}.sig"),
                              "expirationTimestamp": "2030-01-01T00:00:00Z"}}),
        )
    }

    /// The whole happy cluster; tests replace single answers.
    fn healthy(method: &str, path: &str, body: &Value) -> Reply {
        match (method, path) {
            ("GET", ROOT_PATH) => {
                config_map("sigma", "istio-ca-root-cert", "root-cert.pem", ROOT_CERT)
            }
            ("GET", MESH_PATH) => config_map(
                "istio-system",
                "istio",
                "mesh",
                "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\ntrustDomain: cluster.local\n",
            ),
            ("GET", SVC_PATH) => lb_ip("198.51.100.50"),
            ("POST", TOKEN_PATH) => token_reply(body),
            _ => status(404, "NotFound", "not found"),
        }
    }

    /// A client over a tower-test mock whose requests `answer` replies to; every request is
    /// recorded.
    fn mock_client(
        answer: impl Fn(&str, &str, &Value) -> Reply + Send + Sync + 'static,
    ) -> (kube::Client, Seen) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let method = parts.method.to_string();
                let path = parts.uri.path().to_string();
                log.lock()
                    .unwrap()
                    .push((method.clone(), path.clone(), body.clone()));
                match answer(&method, &path, &body) {
                    Reply::Json(code, v) => send.send_response(
                        Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&v).unwrap()))
                            .unwrap(),
                    ),
                    Reply::Down => send.send_error("connection refused"),
                }
            }
        });
        (kube::Client::new(svc, "default"), seen)
    }

    fn source(
        settings: BundleSettings,
        answer: impl Fn(&str, &str, &Value) -> Reply + Send + Sync + 'static,
    ) -> (BundleIssuer, Seen) {
        let (client, seen) = mock_client(answer);
        (BundleIssuer::new(client, settings), seen)
    }

    fn purpose() -> MeshPurpose {
        MeshPurpose {
            name: "xrayr".into(),
            settings: sigma_mesh::MeshSettings::from_json(&json!({
                "enabled": true,
                "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]
            }))
            .unwrap(),
        }
    }

    fn vps() -> MeshVps {
        MeshVps {
            id: uuid::Uuid::from_u128(7),
            hostname: "node-1.example.com".into(),
            status: VpsStatus::Active,
            purpose: "xrayr".into(),
            provider: Some("hetzner".into()),
            country: None,
            city: None,
            ip_addresses: vec![IpAddress {
                ip: "203.0.113.10".into(),
                label: "public".into(),
            }],
            mesh_opt_out: false,
        }
    }

    async fn issue(b: &BundleIssuer) -> Result<IstioBootstrapBundle> {
        b.issue(&MeshTemplate::default(), &purpose(), &vps()).await
    }

    fn paths(seen: &Seen) -> Vec<String> {
        let mut p: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect();
        p.sort();
        p
    }

    #[tokio::test]
    async fn a_bundle_reads_the_four_objects_and_mints_a_token() {
        let (b, seen) = source(BundleSettings::default(), healthy);
        let bundle = issue(&b).await.unwrap();
        let mut want = vec![
            format!("GET {MESH_PATH}"),
            format!("GET {ROOT_PATH}"),
            format!("GET {SVC_PATH}"),
            format!("POST {TOKEN_PATH}"),
        ];
        want.sort();
        assert_eq!(paths(&seen), want);
        let token_body = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _, _)| m == "POST")
            .unwrap()
            .2
            .clone();
        assert_eq!(token_body["spec"]["expirationSeconds"], 3600);
        assert_eq!(token_body["kind"], "TokenRequest");
        assert_eq!(bundle.files.istio_token, "eyJ.3600.sig");
        assert_eq!(
            bundle.token_expires_at,
            time::macros::datetime!(2030-01-01 00:00:00 UTC)
        );
        assert_eq!(bundle.files.root_cert_pem, ROOT_CERT);
        assert!(
            bundle
                .files
                .hosts
                .starts_with("198.51.100.50 istiod.istio-system.svc\n"),
            "{}",
            bundle.files.hosts
        );
        assert_eq!(
            bundle.workload_entry,
            sigma_mesh::model::workload_entry_name("node-1.example.com")
        );
        assert_eq!(bundle.vps_id, vps().id);
        assert_eq!(bundle.egress.len(), 1);
        bundle.check().unwrap();
        // The Debug form of a token never shows it.
        let t = b.token("sigma-vm").await.unwrap();
        assert!(!format!("{t:?}").contains("eyJ"), "{t:?}");
    }

    #[tokio::test]
    async fn the_token_lifetime_and_service_account_are_the_ones_asked_for() {
        let (b, seen) = source(
            BundleSettings {
                token_ttl: Duration::from_secs(900),
                ..BundleSettings::default()
            },
            |m, p, body| {
                if m == "POST" && p == "/api/v1/namespaces/sigma/serviceaccounts/xrayr-sa/token" {
                    token_reply(body)
                } else {
                    healthy(m, p, body)
                }
            },
        );
        let mut p = purpose();
        p.settings.service_account = Some("xrayr-sa".into());
        let bundle = b.issue(&MeshTemplate::default(), &p, &vps()).await.unwrap();
        assert_eq!(bundle.files.istio_token, "eyJ.900.sig");
        assert!(
            bundle
                .files
                .cluster_env
                .contains("SERVICE_ACCOUNT='xrayr-sa'\n")
        );
        assert!(
            paths(&seen).contains(
                &"POST /api/v1/namespaces/sigma/serviceaccounts/xrayr-sa/token".to_string()
            )
        );
    }

    #[tokio::test]
    async fn missing_config_maps_are_named() {
        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == ROOT_PATH {
                status(
                    404,
                    "NotFound",
                    "configmaps \"istio-ca-root-cert\" not found",
                )
            } else {
                healthy(m, p, body)
            }
        });
        let e = issue(&b).await.unwrap_err();
        assert!(matches!(e, Error::Missing(_)), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("ConfigMap sigma/istio-ca-root-cert not found"),
            "{m}"
        );
        assert!(m.contains("istiod"), "{m}");

        let rev = BundleSettings {
            control_plane: ControlPlane {
                revision: Some("1-24".into()),
                ..ControlPlane::default()
            },
            ..BundleSettings::default()
        };
        let (b, seen) = source(rev, healthy);
        let m = issue(&b).await.unwrap_err().to_string();
        assert!(
            m.contains("ConfigMap istio-system/istio-1-24 not found"),
            "{m}"
        );
        assert!(m.contains("revision 1-24"), "{m}");
        assert!(
            paths(&seen)
                .contains(&"GET /api/v1/namespaces/istio-system/configmaps/istio-1-24".to_string())
        );

        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == MESH_PATH {
                config_map("istio-system", "istio", "meshNetworks", "{}")
            } else {
                healthy(m, p, body)
            }
        });
        let m = issue(&b).await.unwrap_err().to_string();
        assert_eq!(m, "ConfigMap istio-system/istio has no key mesh");
    }

    #[tokio::test]
    async fn bad_cluster_data_is_named_not_rendered() {
        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == ROOT_PATH {
                config_map("sigma", "istio-ca-root-cert", "root-cert.pem", "garbage")
            } else {
                healthy(m, p, body)
            }
        });
        let e = issue(&b).await.unwrap_err();
        assert!(
            matches!(&e, Error::Model(sigma_mesh::Error::BadClusterData { what, .. }) if what.contains("istio-ca-root-cert")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn the_gateway_address_comes_from_ip_then_hostname_then_external_ip() {
        let cases: Vec<(Reply, &str)> = vec![
            (
                service(
                    json!({"loadBalancer": {"ingress": [{"hostname": "localhost"}, {"ip": "203.0.113.9"}]}}),
                    json!({"externalIPs": ["192.0.2.1"]}),
                ),
                "203.0.113.9",
            ),
            (
                service(
                    json!({"loadBalancer": {"ingress": [{"hostname": "localhost"}]}}),
                    json!({"externalIPs": ["192.0.2.1"]}),
                ),
                "127.0.0.1",
            ),
            (
                service(
                    json!({"loadBalancer": {}}),
                    json!({"externalIPs": ["bogus", "192.0.2.1"]}),
                ),
                "192.0.2.1",
            ),
        ];
        for (reply, want) in cases {
            let reply = Arc::new(Mutex::new(Some(reply)));
            let (b, _) = source(BundleSettings::default(), move |m, p, body| {
                if p == SVC_PATH {
                    reply.lock().unwrap().take().unwrap()
                } else {
                    healthy(m, p, body)
                }
            });
            let bundle = issue(&b).await.unwrap();
            assert!(
                bundle
                    .files
                    .hosts
                    .starts_with(&format!("{want} istiod.istio-system.svc\n")),
                "{want}: {}",
                bundle.files.hosts
            );
        }
    }

    #[tokio::test]
    async fn a_gateway_without_an_address_is_a_clear_error() {
        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == SVC_PATH {
                service(json!({"loadBalancer": {}}), json!({"type": "LoadBalancer"}))
            } else {
                healthy(m, p, body)
            }
        });
        let m = issue(&b).await.unwrap_err().to_string();
        assert!(m.contains("has no load-balancer address"), "{m}");
        assert!(m.contains("--eastwest-address"), "{m}");

        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == SVC_PATH {
                status(
                    404,
                    "NotFound",
                    "services \"istio-eastwestgateway\" not found",
                )
            } else {
                healthy(m, p, body)
            }
        });
        let m = issue(&b).await.unwrap_err().to_string();
        assert!(
            m.contains("Service istio-system/istio-eastwestgateway not found"),
            "{m}"
        );

        let (b, _) = source(
            BundleSettings {
                timeout: Duration::from_secs(3),
                ..BundleSettings::default()
            },
            |m, p, body| {
                if p == SVC_PATH {
                    service(
                        json!({"loadBalancer": {"ingress": [{"hostname": "gw.sigma-test.invalid"}]}}),
                        json!({}),
                    )
                } else {
                    healthy(m, p, body)
                }
            },
        );
        let e = issue(&b).await.unwrap_err();
        assert!(matches!(e, Error::Missing(_)), "{e:?}");
        assert!(
            e.to_string().contains("host name gw.sigma-test.invalid"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_address_given_by_the_operator_skips_the_service() {
        let (b, seen) = source(
            BundleSettings {
                eastwest_address: Some("2001:db8::1".parse().unwrap()),
                ..BundleSettings::default()
            },
            healthy,
        );
        let bundle = issue(&b).await.unwrap();
        assert!(
            bundle
                .files
                .hosts
                .starts_with("2001:db8::1 istiod.istio-system.svc\n")
        );
        assert!(
            !paths(&seen).iter().any(|p| p.contains("/services/")),
            "{:?}",
            paths(&seen)
        );
    }

    #[tokio::test]
    async fn refused_token_requests_and_a_lost_api_server_are_named() {
        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == TOKEN_PATH {
                status(
                    403,
                    "Forbidden",
                    "cannot create resource \"serviceaccounts/token\"",
                )
            } else {
                healthy(m, p, body)
            }
        });
        let m = issue(&b).await.unwrap_err().to_string();
        assert!(
            m.contains("TokenRequest for ServiceAccount sigma/sigma-vm: 403 Forbidden"),
            "{m}"
        );

        let (b, _) = source(BundleSettings::default(), |m, p, body| {
            if p == TOKEN_PATH {
                status(404, "NotFound", "serviceaccounts \"sigma-vm\" not found")
            } else {
                healthy(m, p, body)
            }
        });
        let m = issue(&b).await.unwrap_err().to_string();
        assert!(m.contains("ServiceAccount sigma/sigma-vm not found"), "{m}");

        let (b, _) = source(BundleSettings::default(), |_, _, _| Reply::Down);
        let e = issue(&b).await.unwrap_err();
        assert!(matches!(e, Error::Kube { .. }), "{e:?}");
        assert!(e.to_string().contains("unreachable"), "{e}");
        assert!(
            [
                BundleCall::ConfigMap,
                BundleCall::Service,
                BundleCall::TokenRequest
            ]
            .into_iter()
            .map(|call| b.calls.failures(&BundleCallLabels { call }))
            .sum::<u64>()
                >= 1
        );
    }

    #[tokio::test]
    async fn shared_pieces_are_cached_and_failures_briefly_too() {
        let (b, seen) = source(BundleSettings::default(), healthy);
        for _ in 0..3 {
            issue(&b).await.unwrap();
        }
        let p = paths(&seen);
        assert_eq!(
            p.iter().filter(|p| p.starts_with("GET")).count(),
            3,
            "{p:?}"
        );
        assert_eq!(
            p.iter().filter(|p| p.starts_with("POST")).count(),
            3,
            "a token per bundle"
        );
        assert_eq!(
            b.calls.calls(&BundleCallLabels {
                call: BundleCall::ConfigMap
            }),
            2
        );
        assert_eq!(
            b.calls.calls(&BundleCallLabels {
                call: BundleCall::TokenRequest
            }),
            3
        );

        let (b, seen) = source(
            BundleSettings {
                cache_ttl: Duration::ZERO,
                ..BundleSettings::default()
            },
            healthy,
        );
        for _ in 0..2 {
            issue(&b).await.unwrap();
        }
        assert_eq!(
            paths(&seen).iter().filter(|p| p.starts_with("GET")).count(),
            6
        );

        let (b, seen) = source(BundleSettings::default(), |m, p, body| {
            if p == ROOT_PATH {
                status(404, "NotFound", "gone")
            } else {
                healthy(m, p, body)
            }
        });
        let first = b.shared().await.unwrap_err().to_string();
        let again = b.shared().await.unwrap_err().to_string();
        assert_eq!(first, again);
        assert_eq!(
            paths(&seen)
                .iter()
                .filter(|p| p.contains("istio-ca-root-cert"))
                .count(),
            1,
            "the failure is remembered"
        );
    }

    #[tokio::test]
    async fn a_vps_without_a_proxy_costs_no_api_call() {
        let (b, seen) = source(BundleSettings::default(), healthy);
        let mut v = vps();
        v.status = VpsStatus::Retired;
        let e = b
            .issue(&MeshTemplate::default(), &purpose(), &v)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Model(sigma_mesh::Error::NotMeshed(_))),
            "{e:?}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn gateway_address_and_pick_address() {
        let svc: Service = serde_json::from_value(json!({
            "status": {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}, {"hostname": " "}, {"hostname": "lb.example.com"}]}}
        }))
        .unwrap();
        assert_eq!(
            gateway_address(&svc),
            Some(GatewayAddress::Hostname("lb.example.com".into()))
        );
        assert_eq!(gateway_address(&Service::default()), None);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(pick_address([v6, v4]), Some(v4));
        assert_eq!(pick_address([v6]), Some(v6));
        assert_eq!(pick_address([]), None);
    }
}

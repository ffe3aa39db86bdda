//! The agent's `/metrics` (Prometheus text), `/healthz`, and in mesh mode `/metrics/envoy`
//! (Envoy's own Prometheus stats, passed through, for scrapers that can reach only this port).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `unreachable`, `unauthorized`, `conflict`, `error`.
    pub result: String,
}

/// Labels of the mesh phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `installing`, `starting`, `ready`, `degraded`, `stopped`.
    pub phase: String,
}

/// Mesh-mode metrics (registered only in mesh mode).
#[derive(Default)]
pub struct MeshMetrics {
    /// 1 for the current phase, 0 for the others.
    pub phase: Family<PhaseLabels, Gauge>,
    /// pilot-agent restarts.
    pub restarts: Counter,
    /// Unix time the installed token expires (0: none).
    pub token_expiry: Gauge,
    /// Unix time the workload certificate expires (0: unknown).
    pub cert_expiry: Gauge,
    /// 1 while Envoy answers ready.
    pub envoy_ready: Gauge,
    /// Bundle fetches by result.
    pub bundle_fetches: Family<ResultLabels, Counter>,
    /// Why `/healthz` fails (the mesh proxy is not ready), if it does.
    pub unhealthy: std::sync::Mutex<Option<String>>,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Heartbeats by result.
    pub heartbeats: Family<ResultLabels, Counter>,
    /// Registrations by result.
    pub registrations: Family<ResultLabels, Counter>,
    /// Unix time of the last successful heartbeat.
    pub last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while sigma-api refuses the agent's key (revoked, expired, unknown).
    pub key_rejected: Gauge,
    /// 1 once registered.
    pub registered: Gauge,
    /// Desired-state version last applied.
    pub applied_version: Gauge,
    /// Unix time the main loop last ran (for `/healthz`).
    pub loop_tick: AtomicI64,
    /// Seconds after which a silent main loop counts as stuck.
    pub stuck_after: AtomicU64,
    /// Mesh mode's metrics, in mesh mode.
    pub mesh: Option<MeshMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("sigma_agent");
        let heartbeats = Family::<ResultLabels, Counter>::default();
        r.register(
            "heartbeats",
            "Heartbeats to sigma-api by result",
            heartbeats.clone(),
        );
        let registrations = Family::<ResultLabels, Counter>::default();
        r.register(
            "registrations",
            "Registrations with sigma-api by result",
            registrations.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        r.register(
            "last_heartbeat_success_timestamp_seconds",
            "Unix time of the last successful heartbeat",
            last_success.clone(),
        );
        let key_rejected = Gauge::default();
        r.register(
            "key_rejected",
            "1 while sigma-api refuses this agent's key (revoked, expired or unknown)",
            key_rejected.clone(),
        );
        let registered = Gauge::default();
        r.register(
            "registered",
            "1 once the agent is registered",
            registered.clone(),
        );
        let applied_version = Gauge::default();
        r.register(
            "applied_version",
            "Desired-state version last applied",
            applied_version.clone(),
        );
        Metrics {
            registry: r,
            heartbeats,
            registrations,
            last_success,
            key_rejected,
            registered,
            applied_version,
            loop_tick: AtomicI64::new(now()),
            stuck_after: AtomicU64::new(120),
            mesh: None,
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Metrics {
    /// The metrics of an agent in classic mode: the common ones and its xDS server's, which
    /// the server keeps and counts itself (`sigma_agent_xds_*`).
    pub fn classic(xds: &sigma_xds::XdsHandle) -> Metrics {
        let mut m = Metrics::default();
        xds.register_metrics(m.registry.sub_registry_with_prefix("xds"));
        m
    }

    /// The metrics of an agent in mesh mode: the common ones and the mesh proxy's.
    pub fn with_mesh() -> Metrics {
        let mut m = Metrics::default();
        let mesh = MeshMetrics::default();
        let r = &mut m.registry;
        r.register(
            "mesh_phase",
            "1 for the mesh proxy's current phase (installing, starting, ready, degraded, stopped)",
            mesh.phase.clone(),
        );
        r.register(
            "mesh_restarts",
            "pilot-agent restarts since the agent started",
            mesh.restarts.clone(),
        );
        r.register(
            "mesh_token_expiry_timestamp_seconds",
            "Unix time the installed istio-token expires",
            mesh.token_expiry.clone(),
        );
        r.register(
            "mesh_cert_expiry_timestamp_seconds",
            "Unix time pilot-agent's workload certificate expires (0: none yet)",
            mesh.cert_expiry.clone(),
        );
        r.register(
            "mesh_envoy_ready",
            "1 while Envoy answers ready on its readiness port",
            mesh.envoy_ready.clone(),
        );
        r.register(
            "mesh_bundle_fetches",
            "Istio bootstrap bundle fetches from sigma-api by result",
            mesh.bundle_fetches.clone(),
        );
        m.mesh = Some(mesh);
        m
    }

    /// Counts an outcome.
    pub fn count(family: &Family<ResultLabels, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Notes that the main loop is alive.
    pub fn tick(&self) {
        self.loop_tick.store(now(), Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Where `/metrics/envoy` gets Envoy's stats.
#[derive(Clone)]
pub struct EnvoyStats {
    /// `http://127.0.0.1:15090/stats/prometheus`.
    pub url: String,
    /// Client for it (no proxy, short timeout).
    pub http: reqwest::Client,
}

/// Largest Envoy stats answer passed through.
const MAX_ENVOY_STATS_BYTES: usize = 64 << 20;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    envoy: Option<EnvoyStats>,
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthorized\n",
    )
        .into_response()
}

fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time: the comparison must not tell how much of a guess was right.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(t) = &s.token
        && !token_ok(&headers, t)
    {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(s): State<Shared>) -> Response {
    let age = now() - s.metrics.loop_tick.load(Ordering::Relaxed);
    if age > s.metrics.stuck_after.load(Ordering::Relaxed) as i64 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("main loop silent for {age}s\n"),
        )
            .into_response();
    }
    if let Some(m) = &s.metrics.mesh
        && let Some(why) = m
            .unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    {
        // The WorkloadGroup's probe hits this endpoint: a VPS whose Envoy is not ready must
        // not receive mesh traffic.
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    "ok\n".into_response()
}

async fn envoy_stats(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(t) = &s.token
        && !token_ok(&headers, t)
    {
        return unauthorized();
    }
    let Some(e) = &s.envoy else {
        return (StatusCode::NOT_FOUND, "no Envoy stats in classic mode\n").into_response();
    };
    let resp = match e.http.get(&e.url).send().await {
        Ok(r) => r,
        Err(err) => {
            let what = if err.is_timeout() {
                "did not answer in time"
            } else {
                "is not reachable"
            };
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Envoy's stats endpoint {what}\n"),
            )
                .into_response();
        }
    };
    if !resp.status().is_success() {
        return (
            StatusCode::BAD_GATEWAY,
            format!(
                "Envoy's stats endpoint answered {}\n",
                resp.status().as_u16()
            ),
        )
            .into_response();
    }
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_ENVOY_STATS_BYTES as u64)
    {
        return (StatusCode::BAD_GATEWAY, "Envoy's stats are too large\n").into_response();
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| header::HeaderValue::from_static("text/plain; version=0.0.4"));
    match resp.bytes().await {
        Ok(b) if b.len() <= MAX_ENVOY_STATS_BYTES => {
            ([(header::CONTENT_TYPE, content_type)], b).into_response()
        }
        Ok(_) => (StatusCode::BAD_GATEWAY, "Envoy's stats are too large\n").into_response(),
        Err(_) => (StatusCode::BAD_GATEWAY, "Envoy's stats answer broke off\n").into_response(),
    }
}

/// The metrics and health router; with `envoy`, also `/metrics/envoy`.
pub fn router(metrics: Arc<Metrics>, token: Option<String>, envoy: Option<EnvoyStats>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/metrics/envoy", get(envoy_stats))
        .route("/healthz", get(healthz))
        .with_state(Shared {
            metrics,
            token: token.map(Arc::from),
            envoy,
        })
}

async fn metrics_handler(state: State<Shared>, headers: HeaderMap) -> Response {
    metrics(state, headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let mut h = HeaderMap::new();
        assert!(!token_ok(&h, "secret"));
        h.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert!(token_ok(&h, "secret"));
        assert!(!token_ok(&h, "secreT"));
        assert!(!token_ok(&h, "secret2"));
    }

    #[test]
    fn encodes_agent_metrics() {
        let m = Metrics::default();
        Metrics::count(&m.heartbeats, "ok");
        let t = m.encode();
        assert!(
            t.contains("sigma_agent_heartbeats_total{result=\"ok\"} 1"),
            "{t}"
        );
        assert!(t.contains("sigma_agent_key_rejected 0"));
    }

    /// Every family the agent can export, in either mode, is in `metrics.txt`, which
    /// docs/check reads: the real names, sub-registry prefixes included.
    #[test]
    fn every_metric_is_in_metrics_txt() {
        let xds = sigma_xds::XdsServer::new(sigma_xds::ResourceOptions {
            listen_address: "127.0.0.1".parse().unwrap(),
        });
        let classic = Metrics::classic(&xds.handle());
        let mesh = Metrics::with_mesh();
        let m = mesh.mesh.as_ref().unwrap();
        m.phase
            .get_or_create(&PhaseLabels {
                phase: "ready".into(),
            })
            .set(1);
        Metrics::count(&m.bundle_fetches, "ok");
        for r in [&classic, &mesh] {
            Metrics::count(&r.heartbeats, "ok");
            Metrics::count(&r.registrations, "ok");
        }
        sigma_testkit::metrics::assert_listed(
            &[&classic, &mesh].map(|r| (r.encode(), format!("{:?}", r.registry))),
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics.txt"),
            "The metric families sigma-agent exports in classic and in mesh mode, as `name type`.\n\
             Kept in step by `cargo test -p sigma-agent --lib every_metric_is_in_metrics_txt`\n\
             (SIGMA_UPDATE_METRICS=1 rewrites it); docs/check checks the docs against it.",
        );
    }

    #[test]
    fn classic_mode_exports_the_xds_servers_counters() {
        let xds = sigma_xds::XdsServer::new(sigma_xds::ResourceOptions {
            listen_address: "127.0.0.1".parse().unwrap(),
        });
        let m = Metrics::classic(&xds.handle());
        xds.handle().publish(3, Vec::new());
        let t = m.encode();
        for want in [
            "# TYPE sigma_agent_xds_pushes counter\nsigma_agent_xds_pushes_total 0\n",
            "# TYPE sigma_agent_xds_nacks counter\nsigma_agent_xds_nacks_total 0\n",
            "sigma_agent_xds_config_version 3\n",
            "sigma_agent_xds_clients 0\n",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
        assert!(!Metrics::default().encode().contains("xds"));
    }
}

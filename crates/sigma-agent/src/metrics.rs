//! The agent's `/metrics` (Prometheus text) and `/healthz`.

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
    /// Envoys connected to the agent's xDS server.
    pub xds_clients: Gauge,
    /// Envoy config version served.
    pub xds_config_version: Gauge,
    /// Pushes to Envoy.
    pub xds_pushes: Counter,
    /// Updates Envoy rejected.
    pub xds_nacks: Counter,
    /// Unix time the main loop last ran (for `/healthz`).
    pub loop_tick: AtomicI64,
    /// Seconds after which a silent main loop counts as stuck.
    pub stuck_after: AtomicU64,
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
        let xds_clients = Gauge::default();
        r.register(
            "xds_clients",
            "Envoys connected to the xDS server",
            xds_clients.clone(),
        );
        let xds_config_version = Gauge::default();
        r.register(
            "xds_config_version",
            "Envoy routes version served",
            xds_config_version.clone(),
        );
        let xds_pushes = Counter::default();
        r.register(
            "xds_pushes",
            "Configuration pushes to Envoy",
            xds_pushes.clone(),
        );
        let xds_nacks = Counter::default();
        r.register(
            "xds_nacks",
            "Configuration updates Envoy rejected",
            xds_nacks.clone(),
        );
        Metrics {
            registry: r,
            heartbeats,
            registrations,
            last_success,
            key_rejected,
            registered,
            applied_version,
            xds_clients,
            xds_config_version,
            xds_pushes,
            xds_nacks,
            loop_tick: AtomicI64::new(now()),
            stuck_after: AtomicU64::new(120),
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Metrics {
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

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
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
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response();
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
    "ok\n".into_response()
}

/// The metrics and health router.
pub fn router(metrics: Arc<Metrics>, token: Option<String>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(Shared {
            metrics,
            token: token.map(Arc::from),
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
}

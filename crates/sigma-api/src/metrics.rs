//! sigma-api's own Prometheus metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// Route template (`/api/vps/{id}`), never the raw path, so ids do not explode cardinality.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, or the error code (`unauthorized`, `conflict`, …).
    pub result: String,
}

/// Labels of the VPS gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// VPS status.
    pub status: String,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;
type ResultHistogramFamily = Family<ResultLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~4 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 15))
}

fn bootstrap_histogram() -> Histogram {
    // 1 ms … ~16 s: a bundle costs up to four API server calls, each bounded by
    // --kube-timeout (15 s by default).
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric sigma-api exports.
pub struct Metrics {
    registry: Registry,
    /// Request latency by method, route and status (its `_count` is the request count).
    pub requests: HistogramFamily,
    /// Agent heartbeats by outcome.
    pub heartbeats: Family<ResultLabels, Counter>,
    /// Agent registrations by outcome.
    pub registrations: Family<ResultLabels, Counter>,
    /// VPS by status, refreshed at each scrape.
    pub vps: Family<StatusLabels, Gauge>,
    /// Live VPS by mesh status, refreshed at each scrape.
    pub mesh_vps: Family<StatusLabels, Gauge>,
    /// 1 while this replica reconciles the mesh.
    pub mesh_leader: Gauge,
    /// Reconcile passes by result (`ok`, `failed`), copied from the reconciler at each scrape.
    pub mesh_passes: Family<ResultLabels, Gauge>,
    /// Kubernetes API calls of the reconciler by verb (`list`, `apply`, `delete`, `failed`).
    pub mesh_api_calls: Family<VerbLabels, Gauge>,
    /// Unix time of the last pass that reached the desired state.
    pub mesh_last_success: Gauge,
    /// Istio bootstrap bundle requests by result (`ok`, or the error code).
    pub bootstrap_issued: Family<ResultLabels, Counter>,
    /// Istio bootstrap bundle request latency by result.
    pub bootstrap_duration: ResultHistogramFamily,
}

/// Labels of the Kubernetes call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// `list`, `apply`, `delete`, or `failed` (calls of any verb that failed).
    pub verb: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sigma_api");
        let requests =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by method, route and status, with latency",
            requests.clone(),
        );
        let heartbeats = Family::<ResultLabels, Counter>::default();
        registry.register(
            "agent_heartbeats",
            "Agent heartbeats by result",
            heartbeats.clone(),
        );
        let registrations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "agent_registrations",
            "Agent registrations by result",
            registrations.clone(),
        );
        let vps = Family::<StatusLabels, Gauge>::default();
        registry.register("vps", "VPS in the inventory by status", vps.clone());
        let mesh_vps = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "mesh_vps",
            "Live VPS by mesh status (pending, synced, error, not_meshed)",
            mesh_vps.clone(),
        );
        let mesh_leader = Gauge::default();
        registry.register(
            "mesh_leader",
            "1 while this replica reconciles the mesh",
            mesh_leader.clone(),
        );
        let mesh_passes = Family::<ResultLabels, Gauge>::default();
        registry.register(
            "mesh_passes",
            "Mesh reconcile passes since start by result",
            mesh_passes.clone(),
        );
        let mesh_api_calls = Family::<VerbLabels, Gauge>::default();
        registry.register(
            "mesh_kube_calls",
            "Kubernetes API calls of the mesh reconciler since start by verb",
            mesh_api_calls.clone(),
        );
        let mesh_last_success = Gauge::default();
        registry.register(
            "mesh_last_success_timestamp_seconds",
            "When the mesh last reached the desired state (0: never)",
            mesh_last_success.clone(),
        );
        let bootstrap_issued = Family::<ResultLabels, Counter>::default();
        registry.register(
            "bootstrap_issued",
            "Istio bootstrap bundle requests by result (ok, or the error code)",
            bootstrap_issued.clone(),
        );
        let bootstrap_duration =
            ResultHistogramFamily::new_with_constructor(bootstrap_histogram as fn() -> Histogram);
        registry.register(
            "bootstrap_duration_seconds",
            "Istio bootstrap bundle request latency by result, Kubernetes calls included",
            bootstrap_duration.clone(),
        );
        Metrics {
            registry,
            requests,
            heartbeats,
            registrations,
            vps,
            mesh_vps,
            mesh_leader,
            mesh_passes,
            mesh_api_calls,
            mesh_last_success,
            bootstrap_issued,
            bootstrap_duration,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts an outcome.
    pub fn outcome<T, E>(family: &Family<ResultLabels, Counter>, r: &Result<T, E>)
    where
        E: HasCode,
    {
        let result = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code().to_string(),
        };
        family.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Something with a stable error code.
pub trait HasCode {
    /// The code.
    fn code(&self) -> &str;
}

impl HasCode for crate::error::ApiError {
    fn code(&self) -> &str {
        self.code
    }
}

/// The method label: the standard methods by name, anything else `other`. Hyper accepts any
/// token as a method, and each distinct label value is a new series kept for the process's
/// life, so a raw method would let anyone grow `/metrics` without bound.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware recording every request. Every label is from a closed set: the method by
/// [`method_label`], the route as the router's template (a registered route, or `unmatched`;
/// never the raw path), and the status the handlers answered (a code of sigma's, never one the
/// client chose).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.into(),
            route,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for m in ["FOO", "get", "X-1", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }
}

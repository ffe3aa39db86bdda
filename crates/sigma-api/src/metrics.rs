//! sigma-api's Prometheus registry and the metrics its HTTP layer counts.
//!
//! One registry (prefix `sigma_api`) holds everything `/metrics` serves. What the HTTP layer
//! counts (requests, agent heartbeats and registrations, bundle requests) is registered here;
//! the subsystems register what they count themselves, each in a sub-registry
//! ([`crate::MeshState::register_metrics`]: the reconciler under `mesh_`, bundle issuance under
//! `bootstrap_`). The inventory gauges are counts of the database: [`InventoryGauges`] keeps
//! them and recounts only when the inventory changed or the counts grew old, so a scrape does
//! not cost two `GROUP BY`s over the whole fleet each time.

use std::time::{Duration, Instant};

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
    /// `ok`, or the error code (`unauthorized`, `conflict`, …): a fixed word of sigma's.
    pub result: &'static str,
}

impl ResultLabels {
    /// The labels of an outcome.
    pub fn of<T, E: HasCode>(r: &Result<T, E>) -> ResultLabels {
        ResultLabels {
            result: match r {
                Ok(_) => "ok",
                Err(e) => e.code(),
            },
        }
    }
}

/// Labels of the inventory gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// A [`sigma_types::VpsStatus`] or [`sigma_types::MeshSyncStatus`], spelled as stored.
    pub status: &'static str,
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

/// What the HTTP layer counts, and the registry `/metrics` serves.
pub struct Metrics {
    registry: Registry,
    /// Request latency by method, route and status (its `_count` is the request count).
    pub requests: HistogramFamily,
    /// Agent heartbeats by outcome.
    pub heartbeats: Family<ResultLabels, Counter>,
    /// Agent registrations by outcome.
    pub registrations: Family<ResultLabels, Counter>,
    /// Istio bootstrap bundle requests by result (`ok`, or the error code).
    pub bootstrap_issued: Family<ResultLabels, Counter>,
    /// Istio bootstrap bundle request latency by result.
    pub bootstrap_duration: ResultHistogramFamily,
    /// VPS by status and live VPS by mesh status.
    pub inventory: InventoryGauges,
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
        let inventory = InventoryGauges::default();
        inventory.register(&mut registry);
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
            bootstrap_issued,
            bootstrap_duration,
            inventory,
        }
    }
}

/// How old the inventory counts may grow while the inventory reports no change. Mesh statuses
/// written by the reconciler (of any replica) and changes made through another replica before
/// its change poll sees them do not wake this replica's counts; this bounds how late they show.
pub const INVENTORY_COUNTS_MAX_AGE: Duration = Duration::from_secs(30);

/// The inventory gauges (`sigma_api_vps{status}`, `sigma_api_mesh_vps{status}`) and when they
/// were last counted.
///
/// A gauge refreshed by a timer would serve a count older than the change a client has just
/// been told succeeded; a count at every scrape would cost the database two scans per scrape
/// of every Prometheus. Instead [`InventoryGauges::refresh`] (called by the scrape) recounts
/// only when the store has reported a change since the last count (its change notice is
/// raised before the write's answer leaves) or the counts are older than
/// [`INVENTORY_COUNTS_MAX_AGE`]; concurrent scrapes share one recount.
#[derive(Default)]
pub struct InventoryGauges {
    vps: Family<StatusLabels, Gauge>,
    mesh_vps: Family<StatusLabels, Gauge>,
    counted: tokio::sync::Mutex<Option<Counted>>,
}

struct Counted {
    at: Instant,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl InventoryGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register("vps", "VPS in the inventory by status", self.vps.clone());
        registry.register(
            "mesh_vps",
            "Live VPS by mesh status (pending, synced, error, not_meshed)",
            self.mesh_vps.clone(),
        );
    }

    /// One sample in each gauge, so that a test's encoding lists both families.
    #[cfg(test)]
    pub(crate) fn sample_for_test(&self) {
        let labels = StatusLabels { status: "active" };
        self.vps.get_or_create(&labels).set(1);
        self.mesh_vps.get_or_create(&labels).set(1);
    }

    /// Recounts when the inventory changed since the last count or the counts are older than
    /// [`INVENTORY_COUNTS_MAX_AGE`]; returns whether it counted.
    pub async fn refresh(&self, store: &sigma_store::Store) -> Result<bool, sigma_store::Error> {
        let mut counted = self.counted.lock().await;
        let fresh = counted.as_mut().is_some_and(|c| {
            c.at.elapsed() < INVENTORY_COUNTS_MAX_AGE && !c.changes.has_changed().unwrap_or(true)
        });
        if fresh {
            return Ok(false);
        }
        // Marked seen before counting: a change during the count is counted next time.
        let mut changes = match counted.take() {
            Some(c) => c.changes,
            None => store.mesh_changes(),
        };
        changes.borrow_and_update();
        for (status, n) in store.count_vps_by_status().await? {
            self.vps
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(n);
        }
        for (status, n) in store.count_vps_by_mesh_status().await? {
            self.mesh_vps
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(n);
        }
        *counted = Some(Counted {
            at: Instant::now(),
            changes,
        });
        Ok(true)
    }
}

impl Metrics {
    /// The registry, for subsystems to register what they count (before the metrics are
    /// shared).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

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
        family.get_or_create(&ResultLabels::of(r)).inc();
    }
}

/// Something with a stable error code.
pub trait HasCode {
    /// The code.
    fn code(&self) -> &'static str;
}

impl HasCode for crate::error::ApiError {
    fn code(&self) -> &'static str {
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

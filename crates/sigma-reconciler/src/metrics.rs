//! The Prometheus metrics of the reconciler, of its Kubernetes calls and of bundle issuance,
//! kept by the code that counts them and registered by it into the caller's registry
//! (sigma-api gives each a sub-registry, so the names carry its prefix).
//!
//! Every label value is from a closed set ([`PassResult`], [`FailureKind`], [`Verb`],
//! [`BundleCall`]): a label taken from free text (an error message, an object name) would grow
//! a series per distinct text for the life of the process.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

/// Label values that are a fixed word each.
macro_rules! label_value {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

/// How a reconcile pass ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PassResult {
    /// The cluster reached the desired state.
    Ok,
    /// The pass failed wholly or in part.
    Failed,
}

impl PassResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PassResult::Ok => "ok",
            PassResult::Failed => "failed",
        }
    }
}
label_value!(PassResult);

/// Why a reconcile pass failed: the [`Error`] variant, or some objects' writes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailureKind {
    /// The inventory could not be read or the results not stored.
    Store,
    /// Stored purposes' mesh settings no longer validate.
    InvalidPurposes,
    /// The model refused the inputs.
    Model,
    /// A Kubernetes API call failed.
    Kube,
    /// An object or answer could not be encoded or decoded.
    Encoding,
    /// A Kubernetes API call did not answer in time.
    Timeout,
    /// A cluster object is missing.
    Missing,
    /// The Kubernetes configuration is unusable.
    Config,
    /// The pass ran, but the apply or delete of some objects failed.
    Objects,
    /// A rate limit refused the call (bootstrap bundles' TokenRequests; passes wait instead).
    Throttled,
}

impl FailureKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Store,
        FailureKind::InvalidPurposes,
        FailureKind::Model,
        FailureKind::Kube,
        FailureKind::Encoding,
        FailureKind::Timeout,
        FailureKind::Missing,
        FailureKind::Config,
        FailureKind::Objects,
        FailureKind::Throttled,
    ];

    /// The kind of a failed pass's error.
    pub fn of(e: &Error) -> FailureKind {
        match e {
            Error::Store(_) => FailureKind::Store,
            Error::InvalidPurposes(_) => FailureKind::InvalidPurposes,
            Error::Model(_) => FailureKind::Model,
            Error::Kube { .. } => FailureKind::Kube,
            Error::Encoding { .. } => FailureKind::Encoding,
            Error::Timeout(_) => FailureKind::Timeout,
            Error::Missing(_) => FailureKind::Missing,
            Error::Config(_) => FailureKind::Config,
            Error::Throttled { .. } => FailureKind::Throttled,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Store => "store",
            FailureKind::InvalidPurposes => "invalid_purposes",
            FailureKind::Model => "model",
            FailureKind::Kube => "kube",
            FailureKind::Encoding => "encoding",
            FailureKind::Timeout => "timeout",
            FailureKind::Missing => "missing",
            FailureKind::Config => "config",
            FailureKind::Objects => "objects",
            FailureKind::Throttled => "throttled",
        }
    }
}
label_value!(FailureKind);

/// A Kubernetes API verb the reconciler uses.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Verb {
    /// A list page (also the diagnostic read of one WorkloadEntry).
    List,
    /// A server-side apply.
    Apply,
    /// A delete.
    Delete,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 3] = [Verb::List, Verb::Apply, Verb::Delete];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
        }
    }
}
label_value!(Verb);

/// A Kubernetes API call made for a bundle.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BundleCall {
    /// A ConfigMap read (root certificate, mesh config).
    ConfigMap,
    /// A Service read (the east-west gateway).
    Service,
    /// A TokenRequest.
    TokenRequest,
}

impl BundleCall {
    /// Every call.
    pub const ALL: [BundleCall; 3] = [
        BundleCall::ConfigMap,
        BundleCall::Service,
        BundleCall::TokenRequest,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleCall::ConfigMap => "config_map",
            BundleCall::Service => "service",
            BundleCall::TokenRequest => "token_request",
        }
    }
}
label_value!(BundleCall);

/// Labels of the pass counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// How the pass ended.
    pub result: PassResult,
}

/// Labels of the pass failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Why the pass failed.
    pub error: FailureKind,
}

/// Labels of the reconciler's call counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The verb.
    pub verb: Verb,
}

/// Labels of the bundle issuer's call counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleCallLabels {
    /// What was called.
    pub call: BundleCall,
}

/// What the reconciler counts. Cloning shares the counters.
#[derive(Clone, Debug)]
pub struct Stats {
    passes: Family<PassLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    applied: Counter,
    deleted: Counter,
    last_success: Gauge,
    leader: Gauge,
    durations: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            passes: Family::default(),
            failures: Family::default(),
            applied: Counter::default(),
            deleted: Counter::default(),
            last_success: Gauge::default(),
            leader: Gauge::default(),
            // 10 ms … ~22 min: a steady pass of a small fleet takes milliseconds, the first
            // pass of 100,000 VPS at the default rate limit over an hour (the last bucket).
            durations: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
        }
    }
}

impl Stats {
    /// Registers the counters into `registry` (sigma-api: its `mesh` sub-registry). Every
    /// label set is exported from the start, at 0: a series that first appears at 1 loses
    /// that first increase to `increase()` and `rate()`.
    pub fn register(&self, registry: &mut Registry) {
        for result in [PassResult::Ok, PassResult::Failed] {
            drop(self.passes.get_or_create(&PassLabels { result }));
        }
        for error in FailureKind::ALL {
            drop(self.failures.get_or_create(&FailureLabels { error }));
        }
        registry.register(
            "passes",
            "Mesh reconcile passes since start by result (ok, failed)",
            self.passes.clone(),
        );
        registry.register(
            "pass_failures",
            "Failed mesh reconcile passes since start by what failed (store, invalid_purposes, model, kube, encoding, timeout, missing, config, objects)",
            self.failures.clone(),
        );
        registry.register(
            "objects_applied",
            "Istio objects the reconciler applied since start",
            self.applied.clone(),
        );
        registry.register(
            "objects_deleted",
            "Istio objects the reconciler deleted since start",
            self.deleted.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles the mesh",
            self.leader.clone(),
        );
        registry.register(
            "pass_duration_seconds",
            "Duration of mesh reconcile passes (ok or failed): inventory read, cluster list, writes and stored results",
            self.durations.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the mesh last reached the desired state (0: never)",
            self.last_success.clone(),
        );
    }

    /// Passes that ended with `result`.
    pub fn passes(&self, result: PassResult) -> u64 {
        self.passes.get_or_create(&PassLabels { result }).get()
    }

    /// Failed passes of one kind.
    pub fn failures(&self, error: FailureKind) -> u64 {
        self.failures.get_or_create(&FailureLabels { error }).get()
    }

    /// Objects applied since start.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Objects deleted since start.
    pub fn deleted(&self) -> u64 {
        self.deleted.get()
    }

    /// Unix seconds of the last pass that reached the desired state (0: never).
    pub fn last_success(&self) -> i64 {
        self.last_success.get()
    }

    /// Whether this replica reconciles.
    pub fn leading(&self) -> bool {
        self.leader.get() == 1
    }

    pub(crate) fn pass_ok(&self, unix_seconds: i64) {
        self.passes
            .get_or_create(&PassLabels {
                result: PassResult::Ok,
            })
            .inc();
        self.last_success.set(unix_seconds);
    }

    pub(crate) fn pass_failed(&self, error: FailureKind) {
        self.passes
            .get_or_create(&PassLabels {
                result: PassResult::Failed,
            })
            .inc();
        self.failures.get_or_create(&FailureLabels { error }).inc();
    }

    pub(crate) fn pass_took(&self, seconds: f64) {
        self.durations.observe(seconds);
    }

    pub(crate) fn wrote(&self, applied: usize, deleted: usize) {
        self.applied.inc_by(applied as u64);
        self.deleted.inc_by(deleted as u64);
    }

    pub(crate) fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// A pair of call counters by some label: calls made, and those that failed or timed out.
#[derive(Debug)]
pub struct CallCounters<L> {
    calls: Family<L, Counter>,
    failures: Family<L, Counter>,
}

// Not derived: the derive would ask `L: Default`/`L: Clone` for nothing.
impl<L> Default for CallCounters<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    fn default() -> Self {
        CallCounters {
            calls: Family::default(),
            failures: Family::default(),
        }
    }
}

impl<L> CallCounters<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    /// Registers both counters as `kube_calls` and `kube_call_failures` with `what` in their
    /// help text, each of the `known` label sets exported from the start at 0.
    pub fn register(
        &self,
        registry: &mut Registry,
        what: &str,
        known: impl IntoIterator<Item = L>,
    ) {
        for labels in known {
            drop(self.calls.get_or_create(&labels));
            drop(self.failures.get_or_create(&labels));
        }
        registry.register(
            "kube_calls",
            format!("Kubernetes API calls {what} since start"),
            self.calls.clone(),
        );
        registry.register(
            "kube_call_failures",
            format!("Kubernetes API calls {what} that failed or timed out since start"),
            self.failures.clone(),
        );
    }

    /// Calls made with `labels`.
    pub fn calls(&self, labels: &L) -> u64 {
        self.calls.get_or_create(labels).get()
    }

    /// Calls with `labels` that failed or timed out.
    pub fn failures(&self, labels: &L) -> u64 {
        self.failures.get_or_create(labels).get()
    }

    pub(crate) fn started(&self, labels: &L) {
        self.calls.get_or_create(labels).inc();
    }

    pub(crate) fn failed(&self, labels: &L) {
        self.failures.get_or_create(labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn counters_are_exported_as_counters_with_closed_labels() {
        let mut registry = Registry::with_prefix("sigma_api");
        let stats = Stats::default();
        let calls = CallCounters::<VerbLabels>::default();
        let mesh = registry.sub_registry_with_prefix("mesh");
        stats.register(mesh);
        calls.register(
            mesh,
            "of the mesh reconciler by verb",
            Verb::ALL.map(|verb| VerbLabels { verb }),
        );
        stats.pass_ok(1_700_000_000);
        stats.pass_failed(FailureKind::Kube);
        stats.pass_failed(FailureKind::Kube);
        stats.set_leader(true);
        calls.started(&VerbLabels { verb: Verb::Apply });
        calls.failed(&VerbLabels { verb: Verb::Apply });
        let text = encode(&registry);
        for want in [
            "# TYPE sigma_api_mesh_passes counter",
            "sigma_api_mesh_passes_total{result=\"ok\"} 1",
            "sigma_api_mesh_passes_total{result=\"failed\"} 2",
            "# TYPE sigma_api_mesh_pass_failures counter",
            "sigma_api_mesh_pass_failures_total{error=\"kube\"} 2",
            "# TYPE sigma_api_mesh_kube_calls counter",
            "sigma_api_mesh_kube_calls_total{verb=\"apply\"} 1",
            "sigma_api_mesh_kube_calls_total{verb=\"list\"} 0",
            "sigma_api_mesh_pass_failures_total{error=\"timeout\"} 0",
            "sigma_api_mesh_kube_call_failures_total{verb=\"apply\"} 1",
            "# TYPE sigma_api_mesh_leader gauge",
            "sigma_api_mesh_leader 1",
            "sigma_api_mesh_last_success_timestamp_seconds 1700000000",
            "# TYPE sigma_api_mesh_pass_duration_seconds histogram",
            "sigma_api_mesh_pass_duration_seconds_count 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert_eq!(stats.passes(PassResult::Failed), 2);
        assert_eq!(stats.failures(FailureKind::Kube), 2);
        assert_eq!(calls.calls(&VerbLabels { verb: Verb::Apply }), 1);
    }

    #[test]
    fn label_values_are_distinct_words() {
        let words: std::collections::HashSet<&str> =
            FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(words.len(), FailureKind::ALL.len());
    }
}

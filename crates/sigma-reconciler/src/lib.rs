//! sigma's mesh reconciler: keeps the Istio objects in Kubernetes equal to the desired state
//! that [`sigma_mesh`] computes from the inventory, and exports that state as YAML for GitOps.
//!
//! It is level-triggered: every pass reads the whole desired state from the database (the
//! source of truth) and the actual state of the API server (the five Istio kinds in the mesh
//! namespace), diffs them, server-side applies what differs and deletes sigma's objects that
//! are no longer desired. A pass runs when the store reports a change, on a periodic resync,
//! and after a failure with capped exponential backoff. The first pass, each resync and the
//! pass after a failure list the whole namespace; a pass for a change starts from the state the
//! last pass left and reads again only the objects it is about to write, so one register costs
//! a few calls, not a list of the fleet's objects. A steady state costs the resync's list calls
//! and nothing else. The result per VPS is written back to the database so that every
//! replica shows it, and only one replica (the leader) reconciles at a time.
//!
//! * [`desired`] — desired state from the store's snapshot, and the GitOps export.
//! * [`cluster`] — the API server calls: list, apply, delete, rate-limited.
//! * [`reconcile`] — one pass, and the loop that schedules passes.
//! * [`leader`] — leader election through a Kubernetes Lease.
//! * [`inspect`] — one VPS's place in the mesh, desired against actual, for diagnosis.
//! * [`bundle`] — issuing a VPS's Istio bootstrap bundle: the reads behind it (root
//!   certificate, mesh config, east-west gateway, service-account token).
//! * [`metrics`] — what the above count, registered by them into the caller's Prometheus
//!   registry.

pub mod bundle;
pub mod cluster;
pub mod desired;
pub mod inspect;
pub mod leader;
pub mod limiter;
mod memory;
pub mod metrics;
pub mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;

pub use bundle::{BundleIssuer, BundleSettings};
pub use cluster::{Cluster, ClusterSettings, FIELD_MANAGER};
pub use desired::{Desired, desired, export_yaml};
pub use leader::{Leadership, LeaseSettings};
pub use metrics::Stats;
pub use reconcile::{PassReport, PassTimings, Reconciler, ReconcilerSettings};

/// Everything that can go wrong in the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the inventory failed.
    #[error("reading the inventory: {0}")]
    Store(#[from] sigma_store::Error),
    /// Stored purposes have mesh settings that no longer validate; nothing is changed in the
    /// cluster until they are fixed, since their objects cannot be computed.
    #[error("invalid mesh settings stored for purpose(s) {}", .0.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "))]
    InvalidPurposes(Vec<sigma_store::mesh::InvalidPurpose>),
    /// The model refused the inputs (an invalid template, or a bug).
    #[error("computing the mesh: {0}")]
    Model(#[from] sigma_mesh::Error),
    /// A Kubernetes API call failed: what it was doing (`applying WorkloadEntry x`) and the
    /// client's error, kept as the source ([`Arc`]ed so a cached failure can be handed on).
    #[error("Kubernetes API: {doing}: {}", describe_kube(source))]
    Kube {
        /// What the call was for.
        doing: String,
        /// The client's error.
        #[source]
        source: Arc<kube::Error>,
    },
    /// An object could not be turned into the JSON the API server takes, or an answer into
    /// what sigma needs (a bug, or a server answering outside its API).
    #[error("Kubernetes API: {what}: {reason}")]
    Encoding {
        /// The object or answer.
        what: String,
        /// Why.
        reason: String,
    },
    /// A Kubernetes API call did not answer in time.
    #[error("Kubernetes API did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A cluster object that a VPS's bootstrap bundle is made from is missing (Istio not
    /// installed yet, no east-west gateway address, no such service account).
    #[error(transparent)]
    Missing(#[from] Missing),
    /// The kubeconfig or in-cluster configuration is unusable.
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    /// Bundles are asked for faster than TokenRequests may be made (`--istio-token-qps`).
    #[error(
        "bootstrap bundles are asked for faster than the {qps} TokenRequests per second allowed; try again in {:.1} s",
        retry_after.as_secs_f64()
    )]
    Throttled {
        /// The allowed average rate.
        qps: f64,
        /// When a TokenRequest will be allowed again.
        retry_after: std::time::Duration,
    },
}

/// What a bootstrap bundle needs from the cluster and did not find, each with what to do.
/// `Clone`, so a cached failure can be handed to the next callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Missing {
    /// A ConfigMap Istio writes is absent; `hint` says what that usually means.
    #[error("ConfigMap {namespace}/{name} not found ({hint})")]
    ConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What its absence usually means.
        hint: String,
    },
    /// The ConfigMap lacks the key.
    #[error("ConfigMap {namespace}/{name} has no key {key}")]
    ConfigMapKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The east-west gateway's Service is absent.
    #[error(
        "Service {namespace}/{name} not found: install Istio's east-west gateway, or give its address with --eastwest-address"
    )]
    GatewayService {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The east-west gateway's Service has no address yet.
    #[error(
        "Service {namespace}/{name} has no load-balancer address or external IP yet: wait for its load balancer, or give the address with --eastwest-address"
    )]
    GatewayAddress {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The east-west gateway's load-balancer host name does not give an address.
    #[error("host name {host} of Service {namespace}/{name} {problem}")]
    GatewayHost {
        /// The host name.
        host: String,
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// What went wrong.
        #[source]
        problem: HostProblem,
    },
    /// The purpose's ServiceAccount is absent.
    #[error("ServiceAccount {namespace}/{name} not found: create it (the purpose's mesh identity)")]
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A TokenRequest was answered without a usable token.
    #[error("TokenRequest for ServiceAccount {namespace}/{name} was answered {answer}")]
    Token {
        /// The ServiceAccount's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What came back.
        answer: TokenAnswer,
    },
}

/// Why a gateway host name gave no address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostProblem {
    /// The lookup took longer than the API timeout.
    #[error("did not resolve in time")]
    Timeout,
    /// The lookup failed.
    #[error("does not resolve: {0}")]
    Lookup(#[source] Arc<std::io::Error>),
    /// The lookup gave no usable address.
    #[error("resolves to no address")]
    NoAddress,
}

/// A TokenRequest answer without a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAnswer {
    /// No status at all.
    NoToken,
    /// An empty token.
    EmptyToken,
}

impl std::fmt::Display for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenAnswer::NoToken => "without a token",
            TokenAnswer::EmptyToken => "with an empty token",
        })
    }
}

impl Error {
    /// A failed Kubernetes API call, said with what it was doing.
    pub(crate) fn kube(doing: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            doing: doing.into(),
            source: Arc::new(source),
        }
    }
}

/// The one text of a Kubernetes client error: the API server's status (`403 Forbidden: …`)
/// when it answered, else that it could not be reached (connection refused, TLS, DNS: the call
/// never reached the API server's logic).
pub fn describe_kube(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!(
            "{} {}: {}",
            s.code,
            if s.reason.is_empty() {
                "Failure"
            } else {
                &s.reason
            },
            s.message
        ),
        other => format!("the API server is unreachable: {other}"),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the Kubernetes credentials come from.
#[derive(Debug, Clone, Default)]
pub struct KubeAccess {
    /// A kubeconfig file; without it `KUBECONFIG`, `~/.kube/config` and then the in-cluster
    /// service account are tried, as kubectl does.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    pub context: Option<String>,
    /// Timeout of each API call (connect and response).
    pub timeout: std::time::Duration,
}

impl KubeAccess {
    /// Whether any Kubernetes configuration can be found: the kubeconfig given, `KUBECONFIG`,
    /// `~/.kube/config`, or an in-cluster service account. Decides the default mesh mode.
    pub fn is_available(&self) -> bool {
        if self.kubeconfig.is_some() {
            return true;
        }
        if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
            return true;
        }
        if std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".kube/config"))
            .is_some_and(|p| p.is_file())
        {
            return true;
        }
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()
    }

    /// A client for the configured cluster. Reads the configuration only; the API server is
    /// not contacted, so this succeeds while the cluster is unreachable.
    pub async fn client(&self) -> Result<kube::Client> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
            (None, None) => kube::Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        config.connect_timeout = Some(self.timeout);
        config.read_timeout = Some(self.timeout);
        config.write_timeout = Some(self.timeout);
        kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
    }
}

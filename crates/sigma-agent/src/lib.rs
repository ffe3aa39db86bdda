//! sigma-agent: runs on each VPS. Registers with sigma-api (an enrollment token on first
//! contact, then its own key), heartbeats every interval, applies the desired state each
//! answer carries, exposes metrics, and manages the local proxy.

pub mod classic;
pub mod client;
pub mod config;
pub mod host;
pub mod mesh;
pub mod metrics;
pub mod runner;
pub mod state;
pub mod xds;

pub use config::{Cli, Command, Config};

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The state directory or key file.
    #[error("state: {0}")]
    State(String),
    /// sigma-api could not be reached or did not answer in time.
    #[error("sigma-api unreachable: {0}")]
    Unreachable(String),
    /// sigma-api refused the credentials (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credentials are valid but not for this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The VPS's state forbids it (409: retired, deleted).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other answer.
    #[error("sigma-api answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
        /// When sigma-api asked to be tried again (its `Retry-After`, in seconds).
        retry_after: Option<std::time::Duration>,
    },
    /// The local proxy.
    #[error("proxy: {0}")]
    Proxy(String),
    /// Mesh mode: the bundle, its files, pilot-agent.
    #[error("mesh: {0}")]
    Mesh(String),
}

/// The agent's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Checked settings and the parts built from them.
pub struct Prepared {
    /// The settings.
    pub config: Config,
    /// This VPS's hostname.
    pub hostname: String,
    /// Enrollment token, if given.
    pub token: Option<String>,
    /// State directory.
    pub state: state::StateDir,
    /// sigma-api client.
    pub client: client::Client,
    /// Token protecting `/metrics`.
    pub metrics_token: Option<String>,
}

/// Checks the settings before anything starts, so a bad setting is a clear error at once.
pub fn prepare(config: Config) -> Result<Prepared> {
    let hostname = match &config.hostname {
        Some(h) => h.clone(),
        None => host::hostname().ok_or_else(|| {
            Error::Config("cannot detect a valid hostname; set AGENT_HOSTNAME".into())
        })?,
    };
    let token = match &config.enrollment_token_file {
        Some(p) => Some(config::read_secret_file(p).map_err(|e| {
            Error::Config(format!("SIGMA_ENROLLMENT_TOKEN_FILE {}: {e}", p.display()))
        })?),
        None => config.enrollment_token.clone(),
    }
    .filter(|t| !t.trim().is_empty());
    let metrics_token = match &config.metrics_token_file {
        Some(p) => {
            let t = config::read_secret_file(p).map_err(|e| {
                Error::Config(format!("AGENT_METRICS_TOKEN_FILE {}: {e}", p.display()))
            })?;
            if t.trim().is_empty() {
                return Err(Error::Config(format!(
                    "AGENT_METRICS_TOKEN_FILE {} is empty",
                    p.display()
                )));
            }
            Some(t.trim().to_string())
        }
        None => None,
    };
    let client = client::Client::new(&config.api_url, config.request_timeout)?;
    let state = state::StateDir::open(&config.state_dir)?;
    if state.load_key()?.is_none() && token.is_none() {
        return Err(Error::Config(format!(
            "no agent key in {} and no enrollment token (set SIGMA_ENROLLMENT_TOKEN or SIGMA_ENROLLMENT_TOKEN_FILE)",
            state.key_path().display()
        )));
    }
    Ok(Prepared {
        config,
        hostname,
        token,
        state,
        client,
        metrics_token,
    })
}

/// Runs the agent with `managed` until `shutdown`: the metrics server (with `/metrics/envoy`
/// when `envoy_stats` is given) and the main loop.
pub async fn run<M: runner::Managed + 'static>(
    p: Prepared,
    managed: M,
    metrics: Arc<metrics::Metrics>,
    envoy_stats: Option<metrics::EnvoyStats>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(p.config.metrics_listen)
        .await
        .map_err(|e| Error::Config(format!("metrics listen {}: {e}", p.config.metrics_listen)))?;
    tracing::info!(addr = %p.config.metrics_listen, "metrics listening");
    let app = metrics::router(metrics.clone(), p.metrics_token.clone(), envoy_stats);
    let stop = shutdown.clone();
    tracker.spawn(
        async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        }
        .instrument(tracing::info_span!("metrics_server")),
    );
    let r = runner::Runner {
        client: p.client,
        state: p.state,
        metrics,
        hostname: p.hostname,
        token: p.token,
        interval: p.config.interval,
        max_backoff: p.config.max_backoff,
        managed,
    };
    r.run(shutdown).await
}

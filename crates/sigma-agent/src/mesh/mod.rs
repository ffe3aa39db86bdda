//! Mesh mode (`--istio-enabled`): the agent installs the Istio bootstrap bundle sigma-api
//! issues for this VPS and runs pilot-agent, which runs Envoy under istiod's control.
//!
//! - After registering, the agent fetches the bundle (`GET /api/agent/istio-bootstrap`),
//!   checks it, installs its files under `--root` the way Istio's VM onboarding lays them out,
//!   makes sure pilot-agent and Envoy are there (downloading Istio's sidecar archive the bundle
//!   names, checked against its SHA-256, when they are not), and starts `pilot-agent proxy`
//!   with the environment `istio-start.sh` would give it.
//! - pilot-agent is supervised ([`supervisor`]); Envoy's readiness is reported in the
//!   heartbeat's `mesh_state`, the metrics and `/healthz`.
//! - The token is refreshed at 50–70 % of its lifetime by rewriting only the token file
//!   (pilot-agent re-reads it). A new `bundle_version` rewrites everything and restarts
//!   pilot-agent; so does a workload certificate found expired (a VPS long offline).
//! - sigma-api unreachable: the proxy keeps running on the files it has, also across agent
//!   restarts (the last bundle is kept, mode 0600, in the state directory).
//! - Retire: pilot-agent and Envoy are stopped, the files and the hosts block removed.
//! - Traffic interception stays off unless the bundle asks for iptables mode; then only the
//!   bundle's service CIDRs are captured, and the rules are removed when the proxy stops.

pub mod archive;
mod bundle;
pub mod cert;
pub mod dataplane;
pub mod env;
pub mod hosts;
pub mod install;
pub mod privs;
mod proxy;
pub mod status;
pub mod supervisor;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sigma_types::backoff::Backoff;
use sigma_types::{AgentMode, AgentState, VpsStatus};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::Client;
use crate::metrics::{EnvoyStats, Metrics};
use crate::runner::{Desired, Managed};
use crate::state::StateDir;
use crate::{Config, Error, Result};

use bundle::Bundles;
use install::Layout;
use proxy::{Proxy, RunAs};
use status::{Shared, Stage};
use worker::Ctx;

/// Timeout of the agent's requests to Envoy on loopback.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Mesh mode's settings, from the agent's configuration.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Install root of the bundle's files (`/`).
    pub root: PathBuf,
    /// pilot-agent's path.
    pub agent_path: PathBuf,
    /// Envoy's path (given to pilot-agent as ProxyConfig `binaryPath`).
    pub envoy_path: PathBuf,
    /// User pilot-agent runs as when the agent is root.
    pub user: String,
    /// Envoy's readiness port (`/healthz/ready`).
    pub ready_port: u16,
    /// Envoy's Prometheus port (`/stats/prometheus`).
    pub stats_port: u16,
    /// Envoy's admin port on loopback (pilot-agent's `proxyAdminPort`), read for the data
    /// plane report.
    pub admin_port: u16,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

fn absolute(what: &str, p: &Path) -> Result<()> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {} must be an absolute path",
            p.display()
        )))
    }
}

impl MeshSettings {
    /// Checks the mesh settings of `c`.
    pub fn from_config(c: &Config) -> Result<MeshSettings> {
        absolute("--root", &c.root)?;
        if !c.root.is_dir() {
            return Err(Error::Config(format!(
                "--root {} is not a directory",
                c.root.display()
            )));
        }
        absolute("--istio-agent-path", &c.istio_agent_path)?;
        absolute("--istio-envoy-path", &c.istio_envoy_path)?;
        let u = &c.istio_user;
        if u.is_empty() || u.contains([':', '/', '\n']) || u.len() > 64 {
            return Err(Error::Config(format!(
                "--istio-user {u:?} is not a user name"
            )));
        }
        for (flag, p) in [
            ("--envoy-ready-port", c.envoy_ready_port),
            ("--envoy-stats-port", c.envoy_stats_port),
        ] {
            if p == 0 {
                return Err(Error::Config(format!("{flag} must be 1 to 65535")));
            }
        }
        Ok(MeshSettings {
            root: c.root.clone(),
            agent_path: c.istio_agent_path.clone(),
            envoy_path: c.istio_envoy_path.clone(),
            user: c.istio_user.clone(),
            ready_port: c.envoy_ready_port,
            stats_port: c.envoy_stats_port,
            admin_port: dataplane::ENVOY_ADMIN_PORT,
            max_backoff: c.max_backoff,
        })
    }

    /// Where `/metrics/envoy` gets Envoy's stats.
    pub fn envoy_stats(&self) -> Result<EnvoyStats> {
        Ok(EnvoyStats {
            url: format!("http://127.0.0.1:{}/stats/prometheus", self.stats_port),
            http: local_client(Duration::from_secs(5))?,
        })
    }
}

fn local_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

/// When to refresh a token expiring at `expires`: at 50–70 % of what is left of its life
/// (jittered so a fleet does not refresh in lockstep).
pub fn refresh_delay(
    expires: OffsetDateTime,
    now: OffsetDateTime,
    max_backoff: Duration,
) -> Duration {
    let left = (expires - now).as_seconds_f64();
    if left <= 0.0 {
        // An already expired token (clock skew?): ask again, but not in a tight loop.
        return max_backoff.max(Duration::from_secs(1));
    }
    let frac = 0.5 + fastrand::f64() * 0.2;
    Duration::from_secs_f64((left * frac).clamp(1.0, 7.0 * 86400.0))
}

/// How long to wait after a failed bundle fetch: the backoff's next (jittered) delay, but not
/// sooner than sigma-api's `Retry-After` when it gave one — spread over up to half as long
/// again, so a fleet told the same time (throttled TokenRequests after a restart of many
/// agents) does not come back in one wave.
pub fn retry_delay(backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
    let delay = backoff.next_delay();
    match retry_after {
        Some(r) if r > delay => {
            let spread = r.as_millis().min(u128::from(u64::MAX)) as u64 / 2;
            r + Duration::from_millis(fastrand::u64(0..=spread))
        }
        _ => delay,
    }
}

/// The mesh-mode manager.
pub struct Mesh {
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    worker: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Mesh {
    /// A manager; nothing starts before the runner asks.
    pub fn new(
        settings: MeshSettings,
        client: Client,
        hostname: String,
        state: StateDir,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Mesh> {
        if metrics.mesh.is_none() {
            return Err(Error::Config("mesh mode needs Metrics::with_mesh()".into()));
        }
        let download_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("sigma-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let run_as = RunAs::detect(&settings.user);
        let local_http = local_client(LOCAL_TIMEOUT)?;
        let layout = Layout {
            root: settings.root.clone(),
        };
        let ctx = Ctx {
            bundles: Bundles {
                client,
                hostname,
                state,
                metrics: metrics.clone(),
                root: settings.root.clone(),
                layout: layout.clone(),
                owner: run_as.owner(),
                tracker: tracker.clone(),
            },
            admin: dataplane::Admin::new(
                local_http.clone(),
                format!("http://127.0.0.1:{}", settings.admin_port),
            ),
            local_http,
            shared: Arc::new(Shared::new(metrics)),
            proxy: Proxy {
                settings,
                layout,
                run_as,
                download_http,
                tracker,
            },
        };
        Ok(Mesh {
            ctx: Arc::new(ctx),
            shutdown,
            worker: None,
        })
    }

    fn start(&mut self) {
        if self.worker.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return;
        }
        let stop = self.shutdown.child_token();
        let handle = self.ctx.bundles.tracker.spawn(
            worker::work(self.ctx.clone(), stop.clone()).instrument(tracing::info_span!("mesh")),
        );
        self.worker = Some((stop, handle));
    }

    async fn stop_worker(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            stop.cancel();
            let _ = handle.await;
        }
    }

    /// Stops everything and removes what mesh mode installed.
    async fn retire(&mut self, why: String) {
        self.stop_worker().await;
        let ctx = self.ctx.clone();
        let mut record = ctx.bundles.load_record();
        ctx.clean_iptables(&mut record).await;
        let reason = match ctx.bundles.uninstall(record).await {
            Ok(()) => {
                tracing::info!("mesh proxy stopped and its files removed");
                why
            }
            Err(e) => {
                tracing::error!(error = %e, "removing the mesh files failed");
                format!("{why}; clean-up incomplete: {e}")
            }
        };
        ctx.shared.update(|s| {
            s.stage = Stage::Stopped(reason);
            s.bundle_version = None;
            s.token_expires_at = None;
            s.cert_expires_at = None;
        });
    }
}

impl Managed for Mesh {
    async fn apply(&mut self, run: bool, desired: &Desired) -> Result<()> {
        if run {
            self.start();
        } else {
            let why = match desired.status {
                VpsStatus::Deleted => "VPS deleted",
                VpsStatus::Retired => "VPS retired",
                _ => "VPS retiring",
            };
            self.retire(why.into()).await;
        }
        Ok(())
    }

    fn report(&self) -> AgentState {
        AgentState {
            mode: Some(AgentMode::Mesh),
            envoy_applied_version: None,
            xds_clients: None,
            last_nack: None,
            mesh_state: Some(self.ctx.shared.report()),
            extra: Default::default(),
        }
    }

    async fn resume(&mut self) {
        // A bundle installed before the agent restarted: run on it at once, whether or not
        // sigma-api answers.
        if self.ctx.bundles.load_record().is_some() {
            tracing::info!("resuming the mesh proxy on the installed bundle");
            self.start();
        }
    }

    async fn shutdown(&mut self, _desired: Option<&Desired>) {
        self.stop_worker().await;
        self.ctx
            .shared
            .update(|s| s.stage = Stage::Stopped("agent stopped".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_honoured_and_spread() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<Duration> = (0..200)
            .map(|_| {
                b.reset();
                retry_delay(&mut b, Some(Duration::from_secs(10)))
            })
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(10) && *w <= Duration::from_secs(15))
        );
        let distinct: std::collections::BTreeSet<_> =
            waits.iter().map(|w| w.as_millis() / 250).collect();
        assert!(
            distinct.len() > 10,
            "spread over the window, not one wave: {distinct:?}"
        );
        // Without one, or with one shorter than the backoff, the backoff decides.
        let mut b = Backoff::exact(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(retry_delay(&mut b, None), Duration::from_secs(4));
        assert_eq!(
            retry_delay(&mut b, Some(Duration::from_secs(1))),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn refresh_comes_at_half_to_seventy_percent_of_the_life_left() {
        let now = OffsetDateTime::now_utc();
        for _ in 0..50 {
            let d = refresh_delay(now + time::Duration::hours(1), now, Duration::from_secs(60));
            assert!(
                d >= Duration::from_secs(1800) && d <= Duration::from_secs(2520),
                "{d:?}"
            );
        }
        assert_eq!(
            refresh_delay(
                now - time::Duration::seconds(5),
                now,
                Duration::from_secs(60)
            ),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_delay(
                now + time::Duration::milliseconds(100),
                now,
                Duration::from_secs(60)
            ),
            Duration::from_secs(1)
        );
    }
}

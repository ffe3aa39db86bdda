//! The mesh worker: one task that brings the proxy up, keeps its bundle fresh and watches its
//! workload certificate, as an explicit state machine (in the spirit of garage's background
//! `Worker`): [`State::Installing`] until a bundle is installed and pilot-agent started,
//! [`State::Running`] until asked to stop, then [`State::Stopping`]. One [`Backoff`] paces
//! every retry; a success resets it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use sigma_types::backoff::Backoff;

use super::bundle::{BundleError, Bundles, Prepared, Record};
use super::dataplane;
use super::proxy::Proxy;
use super::status::{Shared, Stage};
use super::supervisor::{LaunchSpec, Supervisor};
use super::{refresh_delay, retry_delay};

/// How often the workload certificate is looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often the data plane is read from Envoy's admin API (half the default heartbeat, so
/// each heartbeat carries a reading at most this old).
const DATAPLANE_INTERVAL: Duration = Duration::from_secs(15);

/// Why the worker could not bring the proxy up or renew its bundle. Its text is what the
/// heartbeat's `mesh_state` reports.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    /// Fetching, checking or installing the bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Installing pilot-agent and Envoy, or setting up the interception (the error names the
    /// download, file or command).
    #[error(transparent)]
    Proxy(#[from] super::proxy::ProxyError),
    /// No fresh bundle when the token was due.
    #[error("refreshing the bundle failed: {0}")]
    Refresh(#[source] BundleError),
    /// No fresh bundle after the workload certificate expired.
    #[error("the workload certificate expired and no fresh bundle came: {0}")]
    Lapse(#[source] BundleError),
}

impl WorkerError {
    /// When sigma-api asked to be tried again, if it did.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            WorkerError::Bundle(e) | WorkerError::Refresh(e) | WorkerError::Lapse(e) => {
                e.retry_after()
            }
            WorkerError::Proxy(_) => None,
        }
    }
}

/// What the worker and the mesh manager share.
pub(super) struct Ctx {
    /// Fetching, checking, installing and recording bundles.
    pub(super) bundles: Bundles,
    /// pilot-agent as a process.
    pub(super) proxy: Proxy,
    /// The status the heartbeat, metrics and `/healthz` report.
    pub(super) shared: Arc<Shared>,
    /// Client for Envoy's readiness endpoint on loopback.
    pub(super) local_http: reqwest::Client,
    /// Envoy's admin API, read for the data-plane report.
    pub(super) admin: dataplane::Admin,
}

impl Ctx {
    /// Everything before pilot-agent can start with bundle `p`.
    async fn bring_up(
        &self,
        p: &Prepared,
        record: &mut Option<Record>,
        stop: &CancellationToken,
    ) -> Result<LaunchSpec, WorkerError> {
        self.proxy
            .ensure_installed(p, stop)
            .await
            .map_err(WorkerError::Proxy)?;
        self.bundles.install(p, record).await?;
        let applied = record.as_ref().is_some_and(|r| r.iptables_applied);
        if let Some(on) = self
            .proxy
            .interception(p, applied)
            .await
            .map_err(WorkerError::Proxy)?
        {
            self.bundles.set_iptables(record, on)?;
        }
        Ok(self.proxy.spec(p))
    }

    /// Removes iptables rules the agent put in place, if any.
    pub(super) async fn clean_iptables(&self, record: &mut Option<Record>) {
        if !record.as_ref().is_some_and(|r| r.iptables_applied) {
            return;
        }
        match self.proxy.remove_iptables().await {
            Ok(()) => {
                tracing::info!("iptables rules removed");
                if let Err(e) = self.bundles.set_iptables(record, false) {
                    tracing::warn!(error = %e, "recording the iptables clean-up failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "removing the iptables rules failed"),
        }
    }

    fn note_bundle(&self, p: &Prepared) {
        self.shared.update(|s| {
            s.bundle_version = Some(p.bundle.bundle_version.clone());
            s.token_expires_at = Some(p.bundle.token_expires_at);
        });
    }
}

/// Where the worker is.
enum State {
    /// No proxy yet: fetch a bundle (or fall back to the installed one) and bring pilot-agent
    /// up, again after the backoff until it works.
    Installing,
    /// pilot-agent supervised on a bundle; the token refreshed, the certificate watched.
    Running(Box<Running>),
    /// Asked to stop while running: pilot-agent is stopped and the iptables rules removed.
    Stopping(Box<Running>),
    /// Finished.
    Done,
}

/// The running proxy and the worker's timers.
struct Running {
    /// The bundle pilot-agent runs on.
    current: Prepared,
    sup: Supervisor,
    /// When the token is due for refresh (or the next try after a failed one).
    next_refresh: Instant,
    /// Earliest next try to recover from a lapsed workload certificate.
    lapse_retry_at: Instant,
    housekeeping: Interval,
    dataplane_tick: Interval,
    /// This Envoy's earlier response counts (a new pilot-agent starts a new window).
    responses: dataplane::Window,
}

/// Why a running worker fetches a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// The token is due.
    Refresh,
    /// The workload certificate expired (a VPS long offline): pilot-agent must enrol again.
    CertLapsed,
}

struct Worker {
    ctx: Arc<Ctx>,
    record: Option<Record>,
    backoff: Backoff,
    ready_url: String,
    stop: CancellationToken,
}

/// The mesh worker: install, run, refresh, until `stop`.
pub(super) async fn work(ctx: Arc<Ctx>, stop: CancellationToken) {
    let max = ctx.proxy.settings.max_backoff;
    let mut w = Worker {
        record: ctx.bundles.load_record(),
        backoff: Backoff::new(Duration::from_secs(1), max),
        ready_url: format!(
            "http://127.0.0.1:{}/healthz/ready",
            ctx.proxy.settings.ready_port
        ),
        ctx,
        stop,
    };
    let mut state = State::Installing;
    loop {
        state = match state {
            State::Installing => w.install().await,
            State::Running(r) => w.run(r).await,
            State::Stopping(r) => {
                r.sup.stop().await;
                w.ctx.shared.update(|s| s.dataplane = None);
                w.ctx.clean_iptables(&mut w.record).await;
                State::Done
            }
            State::Done => return,
        };
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl Worker {
    fn next_refresh(&self, p: &Prepared) -> Instant {
        Instant::now()
            + refresh_delay(
                p.bundle.token_expires_at,
                OffsetDateTime::now_utc(),
                self.ctx.proxy.settings.max_backoff,
            )
    }

    /// Waits out the backoff: `Installing` again, or `Done` when asked to stop meanwhile
    /// (nothing runs yet, so there is nothing to stop).
    async fn retry_install(&mut self, retry_after: Option<Duration>) -> State {
        if sleep_or_stop(retry_delay(&mut self.backoff, retry_after), &self.stop).await {
            State::Installing
        } else {
            State::Done
        }
    }

    /// One attempt at bringing the proxy up.
    async fn install(&mut self) -> State {
        let ctx = self.ctx.clone();
        if self.stop.is_cancelled() {
            return State::Done;
        }
        let (p, note) = match ctx.bundles.fetch().await {
            Ok(p) => (p, None),
            Err(e) => match self
                .record
                .as_ref()
                .map(|r| ctx.bundles.prepare(r.bundle.clone()))
            {
                Some(Ok(p)) => {
                    tracing::warn!(error = %e, "no fresh bundle; running on the installed one");
                    (p, Some(format!("{e}; running on the installed bundle")))
                }
                _ => {
                    tracing::warn!(error = %e, "no Istio bootstrap bundle yet");
                    ctx.shared
                        .update(|s| s.stage = Stage::Installing(Some(e.to_string())));
                    return self.retry_install(e.retry_after()).await;
                }
            },
        };
        match ctx.bring_up(&p, &mut self.record, &self.stop).await {
            Ok(spec) => {
                ctx.note_bundle(&p);
                ctx.shared.update(|s| {
                    s.stage = Stage::Running;
                    s.problem = note;
                });
                let sup = Supervisor::start(
                    spec,
                    ctx.shared.clone(),
                    ctx.local_http.clone(),
                    self.ready_url.clone(),
                    &ctx.bundles.tracker,
                    self.stop.child_token(),
                );
                tracing::info!(bundle_version = %p.bundle.bundle_version, "mesh proxy installed");
                self.backoff.reset();
                State::Running(Box::new(Running {
                    next_refresh: self.next_refresh(&p),
                    current: p,
                    sup,
                    lapse_retry_at: Instant::now(),
                    housekeeping: tokio::time::interval(HOUSEKEEPING),
                    dataplane_tick: tokio::time::interval(DATAPLANE_INTERVAL),
                    responses: dataplane::Window::default(),
                }))
            }
            Err(e) => {
                tracing::error!(error = %e, "installing the mesh proxy failed");
                ctx.shared
                    .update(|s| s.stage = Stage::Installing(Some(e.to_string())));
                self.retry_install(e.retry_after()).await
            }
        }
    }

    /// Waits for the next thing to do while running and does it.
    async fn run(&mut self, mut r: Box<Running>) -> State {
        let ctx = self.ctx.clone();
        tokio::select! {
            _ = self.stop.cancelled() => return State::Stopping(r),
            _ = tokio::time::sleep_until(r.next_refresh.into()) => {
                self.renew(&mut r, Renewal::Refresh).await;
            }
            _ = r.dataplane_tick.tick() => {
                let mut d = dataplane::read(&ctx.admin, &ctx.bundles.layout.hosts(), &r.current.bundle.egress).await;
                r.responses.apply(Instant::now(), &mut d);
                ctx.shared.update(|s| s.dataplane = Some(d));
            }
            _ = r.housekeeping.tick() => {
                let expiry = ctx.proxy.cert_expiry(&r.current);
                ctx.shared.update(|s| s.cert_expires_at = expiry);
                let lapsed = expiry.is_some_and(|t| t <= OffsetDateTime::now_utc());
                if lapsed && Instant::now() >= r.lapse_retry_at {
                    tracing::warn!(expired = ?expiry, "the workload certificate has expired; recovering with a fresh bundle");
                    self.renew(&mut r, Renewal::CertLapsed).await;
                }
            }
        }
        State::Running(r)
    }

    /// Fetches and applies a fresh bundle for `why`; on failure keeps the installed one and
    /// tries again after the backoff.
    async fn renew(&mut self, r: &mut Running, why: Renewal) {
        let ctx = self.ctx.clone();
        let res = match ctx.bundles.fetch().await {
            Ok(p) => self.apply(r, p, why).await,
            Err(e) => Err(match why {
                Renewal::Refresh => WorkerError::Refresh(e),
                Renewal::CertLapsed => WorkerError::Lapse(e),
            }),
        };
        match res {
            Ok(p) => {
                self.backoff.reset();
                r.next_refresh = self.next_refresh(&p);
                r.current = p;
                ctx.shared.update(|s| {
                    s.problem = None;
                    if why == Renewal::CertLapsed {
                        s.cert_expires_at = None;
                    }
                });
            }
            Err(e) => {
                let retry_at = Instant::now() + retry_delay(&mut self.backoff, e.retry_after());
                match why {
                    Renewal::Refresh => {
                        tracing::warn!(error = %e, "keeping the installed bundle");
                        r.next_refresh = retry_at;
                    }
                    Renewal::CertLapsed => {
                        tracing::error!(error = %e, "recovering from the expired certificate failed");
                        r.lapse_retry_at = retry_at;
                    }
                }
                ctx.shared.update(|s| s.problem = Some(e.to_string()));
            }
        }
    }

    /// Applies a freshly fetched bundle: only the token when the version is unchanged, else
    /// every file and a pilot-agent restart. A lapsed certificate forces the latter and first
    /// drops the expired workload certificate, so pilot-agent enrols again with the new token.
    async fn apply(
        &mut self,
        r: &Running,
        p: Prepared,
        why: Renewal,
    ) -> Result<Prepared, WorkerError> {
        let ctx = self.ctx.clone();
        let current = &r.current;
        match why {
            Renewal::Refresh if p.bundle.bundle_version == current.bundle.bundle_version => {
                ctx.bundles.install_token(&p, &mut self.record).await?;
                tracing::info!(expires = %p.bundle.token_expires_at, "istio-token refreshed");
                ctx.note_bundle(&p);
                return Ok(p);
            }
            Renewal::Refresh => {
                tracing::info!(from = %current.bundle.bundle_version, to = %p.bundle.bundle_version, "bundle version changed; reinstalling and restarting pilot-agent");
            }
            Renewal::CertLapsed => {
                for d in &current.cert_dirs {
                    for f in ["cert-chain.pem", "key.pem"] {
                        let _ = std::fs::remove_file(d.join(f));
                    }
                }
            }
        }
        let spec = ctx.bring_up(&p, &mut self.record, &self.stop).await?;
        ctx.note_bundle(&p);
        r.sup.restart(spec).await;
        Ok(p)
    }
}

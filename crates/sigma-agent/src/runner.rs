//! The agent's life: register, then heartbeat every interval, applying the desired state each
//! answer carries; never exit because sigma-api is unreachable.

use std::sync::Arc;
use std::time::Duration;

use sigma_types::{
    AgentState, DesiredState, HeartbeatRequest, HeartbeatResponse, RegisterRequest, VpsStatus,
};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::metrics::Metrics;
use crate::state::StateDir;
use crate::{Error, Result, host};
use sigma_types::backoff::Backoff;

/// What the agent manages on the VPS (the proxy, in classic or mesh mode). The runner tells it
/// the desired state; it reports what it has applied.
pub trait Managed: Send {
    /// Brings what is managed to the desired state: running for an active VPS, stopped for a
    /// retiring, retired or deleted one.
    fn apply(
        &mut self,
        run: bool,
        desired: &Desired,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
    /// What to report in the next heartbeat.
    fn report(&self) -> AgentState;
    /// Called once before registering: restarts what ran before the agent restarted, so an
    /// unreachable sigma-api does not keep it down.
    fn resume(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
    /// Called when the agent stops while the VPS is still active (`desired` when known).
    /// Classic mode treats it like a stop.
    fn shutdown(
        &mut self,
        desired: Option<&Desired>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            if let Some(d) = desired {
                let _ = self.apply(false, d).await;
            }
        }
    }
}

/// The desired state as the runner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The VPS's id.
    pub vps_id: uuid::Uuid,
    /// Lifecycle status.
    pub status: VpsStatus,
    /// Desired-state version.
    pub version: i64,
    /// Envoy routes version.
    pub envoy_version: i64,
    /// The agent key (for managed parts that talk to sigma-api themselves).
    pub key: String,
}

impl Desired {
    fn from_register(d: &DesiredState, key: &str) -> Desired {
        Desired {
            vps_id: d.vps_id,
            status: d.status,
            version: d.desired_version,
            envoy_version: d.envoy_version,
            key: key.to_string(),
        }
    }

    fn from_heartbeat(h: &HeartbeatResponse, key: &str) -> Desired {
        Desired {
            vps_id: h.vps_id,
            status: h.status,
            version: h.desired_version,
            envoy_version: h.envoy_version,
            key: key.to_string(),
        }
    }

    /// Whether managed things should run.
    pub fn should_run(&self) -> bool {
        matches!(self.status, VpsStatus::Active | VpsStatus::Provisioning)
    }
}

/// Runner settings.
pub struct Runner<M: Managed> {
    /// sigma-api client.
    pub client: Client,
    /// State directory.
    pub state: StateDir,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This VPS's hostname.
    pub hostname: String,
    /// Enrollment token, for the first contact.
    pub token: Option<String>,
    /// Heartbeat interval.
    pub interval: Duration,
    /// Longest retry wait.
    pub max_backoff: Duration,
    /// What the agent manages.
    pub managed: M,
}

fn result_label(e: &Error) -> &'static str {
    match e {
        Error::Unreachable(_) => "unreachable",
        Error::Unauthorized(_) => "unauthorized",
        Error::Forbidden(_) => "forbidden",
        Error::Conflict(_) => "conflict",
        _ => "error",
    }
}

impl<M: Managed> Runner<M> {
    async fn sleep(&self, d: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Registers until it succeeds (or the VPS turns out to be retired, which heartbeats then
    /// report); returns the key and the desired state, or `None` on shutdown.
    async fn register(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(String, Option<Desired>)>> {
        let mut backoff = Backoff::new(
            Duration::from_millis(500).min(self.interval),
            self.max_backoff,
        );
        loop {
            self.metrics.tick();
            let key = self.state.load_key()?;
            let secret = match (&key, &self.token) {
                (Some(k), _) => k.clone(),
                (None, Some(t)) => t.clone(),
                (None, None) => {
                    return Err(Error::Config(format!(
                        "no agent key in {} and no enrollment token (set SIGMA_ENROLLMENT_TOKEN or SIGMA_ENROLLMENT_TOKEN_FILE)",
                        self.state.key_path().display()
                    )));
                }
            };
            let req = RegisterRequest {
                hostname: self.hostname.clone(),
                ip_addresses: host::addresses(),
                system_info: Some(host::system_info()),
                purpose: None,
            };
            match self.client.register(&secret, &req).await {
                Ok(resp) => {
                    Metrics::count(&self.metrics.registrations, "ok");
                    let key = match resp.agent_key {
                        Some(k) => {
                            // Stored before anything else: a crash now must not lose it.
                            self.state.store_key(&k)?;
                            tracing::info!(vps_id = %resp.vps.id, "enrolled; agent key stored");
                            k
                        }
                        None => secret,
                    };
                    self.metrics.registered.set(1);
                    self.metrics.key_rejected.set(0);
                    let d = Desired::from_register(&resp.desired, &key);
                    return Ok(Some((key, Some(d))));
                }
                Err(Error::Conflict(m)) if key.is_some() => {
                    // Retired or deleted: it cannot re-register, but heartbeats still report.
                    Metrics::count(&self.metrics.registrations, "conflict");
                    tracing::warn!(reason = %m, "sigma-api refuses to re-register this VPS; reporting only");
                    return Ok(Some((secret, None)));
                }
                Err(e) => {
                    Metrics::count(&self.metrics.registrations, result_label(&e));
                    if let Error::Unauthorized(m) = &e {
                        self.metrics.key_rejected.set(i64::from(key.is_some()));
                        tracing::error!(reason = %m, using = if key.is_some() { "agent key" } else { "enrollment token" }, "sigma-api rejected the credentials");
                    } else {
                        tracing::warn!(error = %e, "registering failed; retrying");
                    }
                    if !self.sleep(backoff.next_delay(), shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        self.metrics.stuck_after.store(
            (self.interval.max(self.max_backoff).as_secs() * 3 + 30).max(60),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.managed.resume().await;
        let Some((key, mut desired)) = self.register(&shutdown).await? else {
            self.managed.shutdown(None).await;
            return Ok(());
        };
        let mut applied: Option<i64> = None;
        let mut backoff = Backoff::new(
            Duration::from_millis(500).min(self.interval),
            self.max_backoff,
        );
        let mut rejected = false;
        loop {
            if let Some(d) = &desired
                && applied != Some(d.version)
            {
                match self.managed.apply(d.should_run(), d).await {
                    Ok(()) => {
                        applied = Some(d.version);
                        self.metrics.applied_version.set(d.version);
                        tracing::info!(
                            status = d.status.as_str(),
                            version = d.version,
                            "desired state applied"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "applying the desired state failed; retrying next beat")
                    }
                }
            }
            let req = HeartbeatRequest {
                hostname: self.hostname.clone(),
                ip_addresses: Some(host::addresses()),
                system_info: Some(host::system_info()),
                applied_version: applied,
                agent_state: Some(self.managed.report()),
            };
            self.metrics.tick();
            let wait = match self.client.heartbeat(&key, &req).await {
                Ok(resp) => {
                    Metrics::count(&self.metrics.heartbeats, "ok");
                    self.metrics
                        .last_success
                        .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
                    self.metrics.key_rejected.set(0);
                    if rejected {
                        tracing::info!("sigma-api accepts the agent key again");
                        rejected = false;
                    }
                    backoff.reset();
                    let d = Desired::from_heartbeat(&resp, &key);
                    if desired.as_ref().map(|x| x.status) != Some(d.status) {
                        tracing::info!(status = d.status.as_str(), "VPS status");
                    }
                    desired = Some(d);
                    // Jitter keeps a fleet restarted together from beating in lockstep.
                    self.interval.mul_f64(0.9 + fastrand::f64() * 0.2)
                }
                Err(e) => {
                    Metrics::count(&self.metrics.heartbeats, result_label(&e));
                    match &e {
                        Error::Unauthorized(m) => {
                            self.metrics.key_rejected.set(1);
                            if !rejected {
                                tracing::error!(reason = %m, "sigma-api rejects the agent key (revoked or expired?); an operator must issue a new enrollment token");
                                rejected = true;
                            }
                        }
                        Error::Conflict(m) => {
                            // Deleted: stop what is managed, keep reporting.
                            tracing::warn!(reason = %m, "sigma-api refuses heartbeats for this VPS");
                            if let Some(d) = &mut desired
                                && d.status != VpsStatus::Deleted
                            {
                                d.status = VpsStatus::Deleted;
                                d.version = -1;
                            }
                        }
                        _ => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                    }
                    backoff
                        .next_delay()
                        .min(self.interval.max(Duration::from_secs(1)))
                }
            };
            if !self.sleep(wait, &shutdown).await {
                break;
            }
        }
        match &desired {
            Some(d) if !d.should_run() => {
                let _ = self.managed.apply(false, d).await;
            }
            d => self.managed.shutdown(d.as_ref()).await,
        }
        Ok(())
    }
}

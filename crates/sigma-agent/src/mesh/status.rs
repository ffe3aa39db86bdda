//! Where mesh mode stands, shared by the manager, the supervisor, the heartbeat report, the
//! metrics and `/healthz`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sigma_types::mesh::{MeshAgentState, MeshDataPlane, MeshPhase};
use time::OffsetDateTime;

use crate::metrics::Metrics;

/// How long Envoy may take to become ready before the proxy counts as degraded.
pub const NOT_READY_GRACE: Duration = Duration::from_secs(60);

/// What the manager is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Fetching and installing the bundle; with the reason when the last try failed.
    Installing(Option<String>),
    /// pilot-agent is supervised.
    Running,
    /// Nothing runs, and why.
    Stopped(String),
}

/// The mutable state.
#[derive(Debug, Clone)]
pub struct Status {
    /// Manager stage.
    pub stage: Stage,
    /// Installed bundle version.
    pub bundle_version: Option<String>,
    /// Installed token's expiry.
    pub token_expires_at: Option<OffsetDateTime>,
    /// pilot-agent's workload certificate's expiry.
    pub cert_expires_at: Option<OffsetDateTime>,
    /// Restarts since the agent started.
    pub restarts: u32,
    /// pilot-agent's pid while it runs.
    pub pid: Option<u32>,
    started_at: Option<Instant>,
    ready: bool,
    /// Why pilot-agent is down (crashed, cannot start), while it is.
    down: Option<String>,
    /// A problem that does not stop the proxy (refresh failed, new bundle refused).
    pub problem: Option<String>,
    /// The last data-plane reading, while pilot-agent is supervised.
    pub dataplane: Option<MeshDataPlane>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            stage: Stage::Installing(None),
            bundle_version: None,
            token_expires_at: None,
            cert_expires_at: None,
            restarts: 0,
            pid: None,
            started_at: None,
            ready: false,
            down: None,
            problem: None,
            dataplane: None,
        }
    }
}

impl Status {
    /// pilot-agent started.
    pub fn child_up(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.started_at = Some(Instant::now());
        self.ready = false;
        self.down = None;
    }
    /// pilot-agent exited or could not start.
    pub fn child_down(&mut self, why: String) {
        self.pid = None;
        self.ready = false;
        self.down = Some(why);
    }
    /// pilot-agent was stopped on purpose.
    pub fn child_stopped(&mut self) {
        self.pid = None;
        self.ready = false;
        self.down = None;
    }
    /// The latest readiness poll.
    pub fn envoy_ready(&mut self, ok: bool) {
        self.ready = ok && self.pid.is_some();
    }
    /// Whether Envoy answered ready at the last poll.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The phase and its reason.
    pub fn phase(&self) -> (MeshPhase, Option<String>) {
        match &self.stage {
            Stage::Stopped(r) => (MeshPhase::Stopped, Some(r.clone())),
            Stage::Installing(None) => (MeshPhase::Installing, None),
            Stage::Installing(Some(r)) => (MeshPhase::Degraded, Some(r.clone())),
            Stage::Running => {
                if let Some(d) = &self.down {
                    return (MeshPhase::Degraded, Some(d.clone()));
                }
                if self.ready {
                    return match &self.problem {
                        Some(p) => (MeshPhase::Degraded, Some(p.clone())),
                        None => (MeshPhase::Ready, None),
                    };
                }
                let waited = self.started_at.map(|t| t.elapsed()).unwrap_or_default();
                if waited < NOT_READY_GRACE {
                    (
                        MeshPhase::Starting,
                        Some(
                            self.problem
                                .clone()
                                .unwrap_or_else(|| "waiting for Envoy to be ready".into()),
                        ),
                    )
                } else {
                    (
                        MeshPhase::Degraded,
                        Some(format!("Envoy not ready for {}s", waited.as_secs())),
                    )
                }
            }
        }
    }
}

const PHASES: [MeshPhase; 5] = [
    MeshPhase::Installing,
    MeshPhase::Starting,
    MeshPhase::Ready,
    MeshPhase::Degraded,
    MeshPhase::Stopped,
];

/// The status with the metrics that mirror it.
pub struct Shared {
    status: Mutex<Status>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// A fresh status.
    pub fn new(metrics: Arc<Metrics>) -> Shared {
        let s = Shared {
            status: Mutex::new(Status::default()),
            metrics,
        };
        s.update(|_| {});
        s
    }

    /// A copy of the status.
    pub fn get(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the status and mirrors it into the metrics.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.publish(&s);
    }

    /// Counts a restart.
    pub fn restarted(&self) {
        if let Some(m) = &self.metrics.mesh {
            m.restarts.inc();
        }
        self.update(|s| s.restarts = s.restarts.saturating_add(1));
    }

    fn publish(&self, s: &Status) {
        let Some(m) = &self.metrics.mesh else {
            return;
        };
        let (phase, reason) = s.phase();
        for p in PHASES {
            m.phase
                .get_or_create(&crate::metrics::PhaseLabels {
                    phase: p.as_str().to_string(),
                })
                .set(i64::from(p == phase));
        }
        m.envoy_ready.set(i64::from(s.ready));
        m.token_expiry
            .set(s.token_expires_at.map_or(0, |t| t.unix_timestamp()));
        m.cert_expiry
            .set(s.cert_expires_at.map_or(0, |t| t.unix_timestamp()));
        let unhealthy = if s.ready {
            None
        } else {
            Some(format!(
                "mesh {}: {}",
                phase.as_str(),
                reason.unwrap_or_else(|| "Envoy not ready".into())
            ))
        };
        *m.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = unhealthy;
    }

    /// What the heartbeat reports.
    pub fn report(&self) -> MeshAgentState {
        let s = self.get();
        // Re-published so a time-based change (not ready for too long) reaches the metrics.
        self.update(|_| {});
        let (state, reason) = s.phase();
        MeshAgentState {
            state,
            reason: reason.map(|r| r.chars().take(1000).collect()),
            bundle_version: s.bundle_version.clone(),
            token_expires_at: s.token_expires_at,
            cert_expires_at: s.cert_expires_at,
            restarts: s.restarts,
            // A reading is about the running proxy; none once the manager stopped it.
            dataplane: match s.stage {
                Stage::Running => s.dataplane.clone(),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_proxy() {
        let mut s = Status::default();
        assert_eq!(s.phase().0, MeshPhase::Installing);
        s.stage = Stage::Installing(Some("sha256 mismatch".into()));
        assert_eq!(
            s.phase(),
            (MeshPhase::Degraded, Some("sha256 mismatch".into()))
        );
        s.stage = Stage::Running;
        s.child_up(42);
        assert_eq!(s.phase().0, MeshPhase::Starting);
        s.envoy_ready(true);
        assert_eq!(s.phase(), (MeshPhase::Ready, None));
        s.problem = Some("refresh failed".into());
        assert_eq!(s.phase().0, MeshPhase::Degraded);
        s.problem = None;
        s.child_down("pilot-agent exited with code 3".into());
        assert_eq!(s.phase().0, MeshPhase::Degraded);
        assert!(!s.is_ready());
        s.envoy_ready(true);
        assert!(!s.is_ready(), "no process, not ready");
        s.stage = Stage::Stopped("VPS retired".into());
        assert_eq!(s.phase().0, MeshPhase::Stopped);
    }

    #[test]
    fn the_report_carries_the_data_plane_only_while_running() {
        let shared = Shared::new(Arc::new(Metrics::with_mesh()));
        let reading = sigma_types::mesh::MeshDataPlane {
            read_at: OffsetDateTime::UNIX_EPOCH,
            xds: sigma_types::mesh::dataplane::XdsConnection::Disconnected,
            egress: Vec::new(),
            omitted: 0,
            listeners: None,
        };
        shared.update(|s| {
            s.stage = Stage::Running;
            s.dataplane = Some(reading.clone());
        });
        assert_eq!(shared.report().dataplane, Some(reading));
        shared.update(|s| s.stage = Stage::Stopped("VPS retired".into()));
        assert_eq!(shared.report().dataplane, None);
    }
}

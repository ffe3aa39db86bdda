//! sigma's inventory storage: SQLite (the embedded default) and PostgreSQL behind one query
//! layer, plus the in-memory parts that keep the agent hot path off the database.
//!
//! Agent heartbeats are the one high-rate write. They are validated against an in-memory copy
//! of each VPS's identity and lifecycle state ([`fleet`]), and their effects (last heartbeat
//! time, reported addresses and system info) are coalesced per VPS and written in batches by a
//! background flusher; the final flush runs on shutdown, so the latest heartbeat of every VPS
//! survives a clean stop. Changes made by other replicas reach the in-memory copy through a
//! short poll of recently updated rows.

/// `format!` for SQL assembled from this crate's own constant fragments (column lists, table
/// names); values are always bound, never formatted in.
macro_rules! dynsql {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

pub mod agent;
pub mod audit;
pub mod auth;
#[cfg(any(test, feature = "bulk"))]
pub mod bulk;
pub mod console;
pub(crate) mod contracts;
pub mod db;
pub mod error;
pub mod fleet;
pub mod import;
pub mod inventory;
pub mod mesh;
pub mod route_targets;
pub mod routes;
pub mod secret;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use auth::Principal;
pub use db::{Backend, ConnectSettings};
pub use error::{Error, Result};

/// Tuning of the background work.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How often coalesced heartbeats are written.
    pub flush_interval: Duration,
    /// How often changes made by other replicas are picked up.
    pub refresh_interval: Duration,
    /// How long a VPS's agent may be silent before the VPS leaves the addresses of route
    /// targets (a pool member, or a single target VPS).
    pub target_silence: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            flush_interval: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(2),
            target_silence: Duration::from_secs(90),
        }
    }
}

/// The inventory store. Cheap to clone; all clones share pools and caches.
#[derive(Clone)]
pub struct Store {
    pub(crate) pools: db::Pools,
    pub(crate) fleet: Arc<fleet::Fleet>,
    pub(crate) keys: Arc<auth::KeyCache>,
    settings: StoreSettings,
}

impl Store {
    /// Connects, applies the schema and prepares the caches. Call [`Store::spawn_background`]
    /// to start flushing heartbeats.
    pub async fn open(connect: &ConnectSettings, settings: StoreSettings) -> Result<Store> {
        let pools = db::Pools::connect(connect).await?;
        Ok(Store {
            pools,
            fleet: Arc::new(fleet::Fleet::default()),
            keys: Arc::new(auth::KeyCache::default()),
            settings,
        })
    }

    /// How long an agent may stay silent before its VPS leaves route pools; also how old an
    /// agent's report may be before what it says about its Envoy is no longer current.
    pub fn target_silence(&self) -> Duration {
        self.settings.target_silence
    }

    /// The database backend.
    pub fn backend(&self) -> Backend {
        self.pools.backend()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pools.read).await?;
        Ok(())
    }

    /// Starts the heartbeat flusher and the change poller. Both stop when `shutdown` is
    /// cancelled; the flusher writes what is pending before it returns.
    pub fn spawn_background(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let store = self.clone();
        let token = shutdown.clone();
        tracker.spawn(
            async move { store.run_flusher(token).await }
                .instrument(tracing::info_span!("heartbeat_flusher")),
        );
        let store = self.clone();
        tracker.spawn(
            async move { store.run_refresher(shutdown).await }
                .instrument(tracing::info_span!("change_poller")),
        );
    }

    async fn run_flusher(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "writing heartbeats failed; will retry");
                    }
                }
            }
        }
        // Last write before the process exits; retried briefly in case the database blinked.
        for attempt in 1..=3 {
            match self.flush().await {
                Ok(n) => {
                    tracing::info!(written = n, "final heartbeat flush done");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "final heartbeat flush failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn run_refresher(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "polling for changes failed");
                    }
                }
            }
        }
    }

    /// Closes the pools. Call after the background tasks have finished.
    pub async fn close(&self) {
        self.pools.close().await;
    }
}

//! The bundle concern of mesh mode: fetching the Istio bootstrap bundle from sigma-api,
//! checking it, writing its files, and keeping the record of what is installed (state
//! directory, mode 0600: it holds the token) so the proxy survives agent restarts and
//! retirement can clean up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sigma_types::mesh::{InterceptionMode, IstioBootstrapBundle};
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::client::Client;
use crate::metrics::Metrics;
use crate::state::StateDir;

use super::env::ClusterEnv;
use super::hosts;
use super::install::{self, Layout, Owner};

/// Why a bundle could not be fetched, accepted, installed or removed. Its text is what the
/// heartbeat's `mesh_state` reports.
#[derive(Debug, thiserror::Error)]
pub(super) enum BundleError {
    /// The agent has not registered yet.
    #[error("the agent has no key yet")]
    NoKey,
    /// The state directory could not be read or written.
    #[error("{0}")]
    State(#[source] crate::Error),
    /// The record could not be written as JSON.
    #[error("{0}")]
    Record(#[from] serde_json::Error),
    /// sigma-api has no bundle for this VPS (409: not meshed, or invalid mesh settings).
    #[error("sigma-api has no bundle for this VPS (409): {0}")]
    NoBundle(String),
    /// sigma-api cannot build the bundle from the cluster, or is asked for bundles faster than
    /// it makes TokenRequests (503).
    #[error("the cluster cannot provide the bundle (503): {message}")]
    ClusterUnavailable {
        /// sigma-api's message.
        message: String,
        /// When sigma-api asked to be tried again.
        retry_after: Option<Duration>,
    },
    /// Any other failure of the request.
    #[error("fetching the bundle: {0}")]
    Fetch(#[source] crate::Error),
    /// The bundle fails its checks.
    #[error("the bundle is invalid: {0}")]
    Invalid(sigma_types::FieldErrors),
    /// The bundle names another VPS.
    #[error("the bundle is for {bundle:?}, not this VPS ({this:?})")]
    OtherHost {
        /// The bundle's host name.
        bundle: String,
        /// This VPS's.
        this: String,
    },
    /// Its `cluster.env` is refused (the reason names the file and the line or variable).
    #[error(transparent)]
    ClusterEnv(#[from] super::env::EnvError),
    /// Its `hosts` is refused (the reason names the file).
    #[error("{0}")]
    Content(String),
    /// Writing or removing the files failed (the error names the path).
    #[error(transparent)]
    Files(#[from] super::install::InstallError),
    /// The blocking file work did not finish (a panic).
    #[error("{doing}: {source}")]
    Task {
        /// What the task was doing.
        doing: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl BundleError {
    /// When sigma-api asked to be tried again, if it did.
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            BundleError::ClusterUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Name of the record of the installed bundle in the state directory.
pub(super) const RECORD_FILE: &str = "mesh-bundle.json";

/// What the agent keeps about the installed bundle (state directory, mode 0600: it holds the
/// token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) bundle: IstioBootstrapBundle,
    /// Certificate directories ever used, for the clean-up.
    pub(super) cert_dirs: Vec<PathBuf>,
    /// Directories the agent created, for the clean-up.
    pub(super) created_dirs: Vec<PathBuf>,
    /// Whether iptables rules are in place.
    pub(super) iptables_applied: bool,
}

/// A checked bundle with what the agent derived from it.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) bundle: IstioBootstrapBundle,
    pub(super) env: ClusterEnv,
    pub(super) cert_dirs: Vec<PathBuf>,
    pub(super) hosts: Vec<String>,
    /// Outbound CIDRs to capture (iptables mode only).
    pub(super) cidrs: Option<Vec<String>>,
}

/// Fetches, checks, installs and records bundles.
pub(super) struct Bundles {
    pub(super) client: Client,
    pub(super) hostname: String,
    pub(super) state: StateDir,
    pub(super) metrics: Arc<Metrics>,
    /// Install root of the bundle's files.
    pub(super) root: PathBuf,
    pub(super) layout: Layout,
    /// Owner of the installed files (pilot-agent's user when the agent is root).
    pub(super) owner: Owner,
    pub(super) tracker: TaskTracker,
}

impl Bundles {
    /// The record of the installed bundle, if there is a readable one.
    pub(super) fn load_record(&self) -> Option<Record> {
        match self.state.load_private(RECORD_FILE) {
            Ok(Some(bytes)) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable {RECORD_FILE}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read {RECORD_FILE}");
                None
            }
        }
    }

    pub(super) fn save_record(&self, r: &Record) -> Result<(), BundleError> {
        let json = serde_json::to_vec_pretty(r)?;
        self.state
            .store_private(RECORD_FILE, &json)
            .map_err(BundleError::State)
    }

    /// Records whether iptables rules are in place (nothing to record without a bundle).
    pub(super) fn set_iptables(
        &self,
        record: &mut Option<Record>,
        on: bool,
    ) -> Result<(), BundleError> {
        if let Some(r) = record {
            r.iptables_applied = on;
            self.save_record(r)?;
        }
        Ok(())
    }

    /// Checks a bundle and derives what the agent needs from it.
    pub(super) fn prepare(&self, bundle: IstioBootstrapBundle) -> Result<Prepared, BundleError> {
        // Includes the root certificate against its stated fingerprint (sigma_types::cert).
        bundle.check().map_err(BundleError::Invalid)?;
        if !bundle.hostname.eq_ignore_ascii_case(&self.hostname) {
            return Err(BundleError::OtherHost {
                bundle: bundle.hostname,
                this: self.hostname.clone(),
            });
        }
        let env = ClusterEnv::parse(&bundle.files.cluster_env)?;
        let cert_dirs = env.cert_dirs(&self.root)?;
        let hosts = hosts::check_entries(&bundle.files.hosts).map_err(BundleError::Content)?;
        let cidrs = match bundle.interception {
            InterceptionMode::None => None,
            InterceptionMode::Iptables => Some(env.service_cidrs()?),
        };
        Ok(Prepared {
            bundle,
            env,
            cert_dirs,
            hosts,
            cidrs,
        })
    }

    /// Fetches this VPS's bundle from sigma-api and checks it.
    pub(super) async fn fetch(&self) -> Result<Prepared, BundleError> {
        let key = self
            .state
            .load_key()
            .map_err(BundleError::State)?
            .ok_or(BundleError::NoKey)?;
        let r = self.client.istio_bootstrap(&key, &self.hostname).await;
        if let Some(m) = &self.metrics.mesh {
            let label = match &r {
                Ok(_) => "ok",
                Err(Error::Unreachable(_)) => "unreachable",
                Err(Error::Conflict(_)) => "conflict",
                Err(Error::Api { status: 503, .. }) => "unavailable",
                Err(_) => "error",
            };
            Metrics::count(&m.bundle_fetches, label);
        }
        let bundle = r.map_err(|e| match e {
            Error::Conflict(m) => BundleError::NoBundle(m),
            Error::Api {
                status: 503,
                message,
                retry_after,
            } => BundleError::ClusterUnavailable {
                message,
                retry_after,
            },
            e => BundleError::Fetch(e),
        })?;
        self.prepare(bundle)
    }

    /// Writes the bundle's files and records them.
    pub(super) async fn install(
        &self,
        p: &Prepared,
        record: &mut Option<Record>,
    ) -> Result<(), BundleError> {
        let mut created = record
            .as_ref()
            .map(|r| r.created_dirs.clone())
            .unwrap_or_default();
        let (layout, pc, owner) = (self.layout.clone(), p.clone(), self.owner);
        let created = self
            .tracker
            .spawn_blocking(move || {
                install::install(
                    &layout,
                    &pc.bundle,
                    &pc.cert_dirs,
                    &pc.hosts,
                    owner,
                    &mut created,
                )
                .map(|()| created)
            })
            .await
            .map_err(|source| BundleError::Task {
                doing: "installing",
                source,
            })?
            .map_err(BundleError::Files)?;
        let mut cert_dirs = record
            .as_ref()
            .map(|r| r.cert_dirs.clone())
            .unwrap_or_default();
        for d in &p.cert_dirs {
            if !cert_dirs.contains(d) {
                cert_dirs.push(d.clone());
            }
        }
        let rec = Record {
            bundle: p.bundle.clone(),
            cert_dirs,
            created_dirs: created,
            iptables_applied: record.as_ref().is_some_and(|r| r.iptables_applied),
        };
        self.save_record(&rec)?;
        *record = Some(rec);
        Ok(())
    }

    /// Rewrites only the token of the installed bundle (same version; pilot-agent re-reads
    /// the file) and records the new bundle.
    pub(super) async fn install_token(
        &self,
        p: &Prepared,
        record: &mut Option<Record>,
    ) -> Result<(), BundleError> {
        let (layout, token, owner) = (
            self.layout.clone(),
            p.bundle.files.istio_token.clone(),
            self.owner,
        );
        self.tracker
            .spawn_blocking(move || install::install_token(&layout, &token, owner))
            .await
            .map_err(|source| BundleError::Task {
                doing: "writing the token",
                source,
            })?
            .map_err(BundleError::Files)?;
        if let Some(r) = record {
            r.bundle = p.bundle.clone();
            self.save_record(r)?;
        }
        Ok(())
    }

    /// Removes the files `record` says were installed (or, without a record, only the hosts
    /// block, the one thing recognisably ours), then the record itself.
    pub(super) async fn uninstall(&self, record: Option<Record>) -> Result<(), BundleError> {
        let layout = self.layout.clone();
        self.tracker
            .spawn_blocking(move || match record {
                Some(r) => install::uninstall(&layout, &r.cert_dirs, &r.created_dirs),
                None => install::write_hosts(&layout, &[]),
            })
            .await
            .map_err(|source| BundleError::Task {
                doing: "removing the files",
                source,
            })?
            .map_err(BundleError::Files)?;
        if let Err(e) = self.state.remove_private(RECORD_FILE) {
            tracing::warn!(error = %e, "removing {RECORD_FILE} failed");
        }
        Ok(())
    }
}

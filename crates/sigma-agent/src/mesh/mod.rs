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
pub mod cert;
pub mod dataplane;
pub mod env;
pub mod hosts;
pub mod install;
pub mod privs;
pub mod status;
pub mod supervisor;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sigma_types::mesh::{InterceptionMode, IstioBootstrapBundle};
use sigma_types::{AgentMode, AgentState, VpsStatus};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::{Backoff, Client};
use crate::metrics::{EnvoyStats, Metrics};
use crate::runner::{Desired, Managed};
use crate::state::StateDir;
use crate::{Config, Error, Result};

use env::ClusterEnv;
use install::{Layout, Owner};
use privs::{Credentials, User};
use status::{Shared, Stage};
use supervisor::{LaunchSpec, Supervisor};

/// Name of the record of the installed bundle in the state directory.
const RECORD_FILE: &str = "mesh-bundle.json";
/// How often the workload certificate is looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often the data plane is read from Envoy's admin API (half the default heartbeat, so
/// each heartbeat carries a reading at most this old).
const DATAPLANE_INTERVAL: Duration = Duration::from_secs(15);
/// Longest a `pilot-agent istio-iptables` run may take.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of the agent's requests to Envoy on loopback.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Envoy's outbound capture port and inbound capture port (Istio's defaults).
const ENVOY_OUTBOUND_PORT: &str = "15001";
const ENVOY_INBOUND_PORT: &str = "15006";
/// The PATH pilot-agent gets (it inherits nothing from the agent).
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// What the agent keeps about the installed bundle (state directory, mode 0600: it holds the
/// token).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    bundle: IstioBootstrapBundle,
    /// Certificate directories ever used, for the clean-up.
    cert_dirs: Vec<PathBuf>,
    /// Directories the agent created, for the clean-up.
    created_dirs: Vec<PathBuf>,
    /// Whether iptables rules are in place.
    iptables_applied: bool,
}

/// Whom pilot-agent runs as.
#[derive(Debug, Clone)]
struct RunAs {
    /// The user switched to, when the agent is root and the user exists.
    user: Option<(User, Vec<u32>)>,
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn detect(name: &str) -> RunAs {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if !privs::is_root() {
            tracing::info!(
                uid,
                "not root: pilot-agent runs as the agent's user, files keep their owner"
            );
            return RunAs {
                user: None,
                uid,
                gid,
            };
        }
        match privs::lookup(name) {
            Some((u, groups)) => RunAs {
                uid: u.uid,
                gid: u.gid,
                user: Some((u, groups)),
            },
            None => {
                tracing::warn!(
                    user = name,
                    "user not found in /etc/passwd: pilot-agent and Envoy run as root"
                );
                RunAs {
                    user: None,
                    uid,
                    gid,
                }
            }
        }
    }

    fn owner(&self) -> Owner {
        self.user.as_ref().map(|(u, _)| (u.uid, u.gid))
    }
}

/// A checked bundle with what the agent derived from it.
#[derive(Debug, Clone)]
struct Prepared {
    bundle: IstioBootstrapBundle,
    env: ClusterEnv,
    cert_dirs: Vec<PathBuf>,
    hosts: Vec<String>,
    /// Outbound CIDRs to capture (iptables mode only).
    cidrs: Option<Vec<String>>,
}

struct Ctx {
    settings: MeshSettings,
    layout: Layout,
    client: Client,
    hostname: String,
    state: StateDir,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    local_http: reqwest::Client,
    admin: dataplane::Admin,
    download_http: reqwest::Client,
    tracker: TaskTracker,
    run_as: RunAs,
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

impl Ctx {
    fn load_record(&self) -> Option<Record> {
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

    fn save_record(&self, r: &Record) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        self.state
            .store_private(RECORD_FILE, &json)
            .map_err(|e| e.to_string())
    }

    /// Checks a bundle and derives what the agent needs from it.
    fn prepare(&self, bundle: IstioBootstrapBundle) -> Result<Prepared, String> {
        bundle
            .check()
            .map_err(|e| format!("the bundle is invalid: {:?}", e.0))?;
        if !bundle.hostname.eq_ignore_ascii_case(&self.hostname) {
            return Err(format!(
                "the bundle is for {:?}, not this VPS ({:?})",
                bundle.hostname, self.hostname
            ));
        }
        let fp = cert::first_certificate_sha256(&bundle.files.root_cert_pem)
            .map_err(|e| format!("the bundle's root-cert.pem: {e}"))?;
        if fp != bundle.root_cert_sha256 {
            return Err(format!(
                "the bundle's root-cert.pem has SHA-256 {fp}, the bundle says {}; refusing it",
                bundle.root_cert_sha256
            ));
        }
        let env = ClusterEnv::parse(&bundle.files.cluster_env)?;
        let cert_dirs = env.cert_dirs(&self.settings.root)?;
        let hosts = hosts::check_entries(&bundle.files.hosts)?;
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

    async fn fetch(&self) -> Result<Prepared, String> {
        let key = self
            .state
            .load_key()
            .map_err(|e| e.to_string())?
            .ok_or("the agent has no key yet")?;
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
            Error::Conflict(m) => format!("sigma-api has no bundle for this VPS (409): {m}"),
            Error::Api {
                status: 503,
                message,
            } => {
                format!("the cluster cannot provide the bundle (503): {message}")
            }
            e => format!("fetching the bundle: {e}"),
        })?;
        self.prepare(bundle)
    }

    /// Makes sure pilot-agent and Envoy are installed, from the bundle's archive if needed.
    async fn ensure_proxy(&self, p: &Prepared, stop: &CancellationToken) -> Result<(), String> {
        let s = &self.settings;
        if is_executable(&s.agent_path) && is_executable(&s.envoy_path) {
            return Ok(());
        }
        let Some(a) = &p.bundle.istio_proxy else {
            return Err(format!(
                "pilot-agent or Envoy is missing ({}, {}) and the bundle names no proxy archive",
                s.agent_path.display(),
                s.envoy_path.display()
            ));
        };
        tracing::info!(url = %a.url, version = a.version.as_deref().unwrap_or("?"), "downloading Istio's sidecar archive");
        let dir = s
            .agent_path
            .parent()
            .ok_or("--istio-agent-path has no directory")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = install::temp_beside(&s.agent_path).map_err(|e| e.to_string())?;
        archive::download(&self.download_http, &a.url, &a.sha256, &tmp, stop).await?;
        let targets = archive::Targets {
            agent: s.agent_path.clone(),
            envoy: s.envoy_path.clone(),
            template: self.layout.bootstrap_template(),
        };
        let t = tmp.clone();
        let r = self
            .tracker
            .spawn_blocking(move || archive::unpack(&t, &targets))
            .await
            .map_err(|e| format!("unpacking: {e}"))
            .and_then(|r| r);
        let _ = std::fs::remove_file(&tmp);
        r?;
        tracing::info!(path = %s.agent_path.display(), "pilot-agent and Envoy installed");
        Ok(())
    }

    /// Writes the bundle's files and records them.
    async fn install(&self, p: &Prepared, record: &mut Option<Record>) -> Result<(), String> {
        let mut created = record
            .as_ref()
            .map(|r| r.created_dirs.clone())
            .unwrap_or_default();
        let (layout, pc, owner) = (self.layout.clone(), p.clone(), self.run_as.owner());
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
            .map_err(|e| format!("installing: {e}"))??;
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

    /// The environment `istio-start.sh` gives pilot-agent: cluster.env exported, then its
    /// defaults and the per-VM variables.
    fn proxy_env(&self, p: &Prepared) -> Vec<(String, String)> {
        let e = &p.env;
        let mut vars = e.vars().clone();
        let get = |k: &str| e.get(k).filter(|v| !v.is_empty());
        let ns = get("ISTIO_NAMESPACE").unwrap_or("default").to_string();
        let svc = get("ISTIO_SERVICE").unwrap_or("rawvm").to_string();
        let system_ns = get("ISTIO_SYSTEM_NAMESPACE").unwrap_or("istio-system");
        let custom_pilot = get("PILOT_ADDRESS")
            .map(str::to_string)
            .or_else(|| get("ISTIO_PILOT_PORT").map(|p| format!("istiod.{system_ns}.svc:{p}")));
        // istio-start.sh falls back to istiod.<ns>.svc:15012; the mesh config's discovery
        // address is the same host for a default install and the right one for a revision.
        let ca = get("CA_ADDR")
            .map(str::to_string)
            .or_else(|| custom_pilot.clone())
            .or_else(|| env::discovery_address(&p.bundle.files.mesh_yaml))
            .unwrap_or_else(|| format!("istiod.{system_ns}.svc:15012"));
        vars.insert("CA_ADDR".into(), ca);
        // Absolute under --root (the same paths when the root is /).
        for (key, dir) in [
            ("PROV_CERT", 0usize),
            ("OUTPUT_CERTS", p.cert_dirs.len() - 1),
        ] {
            vars.insert(key.into(), p.cert_dirs[dir].display().to_string());
        }
        let binary = format!("binaryPath: {}", self.settings.envoy_path.display());
        let proxy_config = match get("PROXY_CONFIG") {
            Some(pc) if pc.contains("binaryPath") || pc.trim_start().starts_with('{') => {
                pc.to_string()
            }
            Some(pc) => format!("{}\n{binary}\n", pc.trim_end()),
            None => {
                let mut pc = format!(
                    "serviceCluster: {svc}\ncontrolPlaneAuthPolicy: {}\n",
                    get("ISTIO_CP_AUTH").unwrap_or("MUTUAL_TLS")
                );
                if let Some(a) = &custom_pilot {
                    pc.push_str(&format!("discoveryAddress: {a}\n"));
                }
                pc.push_str(&binary);
                pc.push('\n');
                pc
            }
        };
        vars.insert("PROXY_CONFIG".into(), proxy_config);
        let instance_ip = get("ISTIO_SVC_IP")
            .map(str::to_string)
            .or_else(|| crate::host::addresses().first().map(|a| a.ip.clone()));
        if let Some(ip) = instance_ip {
            vars.insert("INSTANCE_IP".into(), ip);
        }
        vars.insert("POD_NAME".into(), p.bundle.workload_entry.clone());
        vars.insert("POD_NAMESPACE".into(), ns);
        vars.insert("PATH".into(), CHILD_PATH.into());
        match &self.run_as.user {
            Some((u, _)) => {
                vars.insert("HOME".into(), u.home.clone());
                vars.insert("USER".into(), u.name.clone());
                vars.insert("LOGNAME".into(), u.name.clone());
            }
            None => {
                vars.insert("HOME".into(), "/".into());
            }
        }
        vars.into_iter().collect()
    }

    fn credentials(&self, p: &Prepared) -> Option<Credentials> {
        let (u, groups) = self.run_as.user.as_ref()?;
        Some(Credentials {
            uid: u.uid,
            gid: u.gid,
            groups: groups.clone(),
            bind_low_ports: p.bundle.egress.iter().any(|e| e.port < 1024),
        })
    }

    fn proxy_spec(&self, p: &Prepared) -> LaunchSpec {
        let mut args = vec!["proxy".to_string()];
        if let Some(flags) = p.env.get("ISTIO_AGENT_FLAGS") {
            args.extend(
                flags
                    .split(' ')
                    .filter(|f| !f.is_empty())
                    .map(str::to_string),
            );
        }
        let creds = self.credentials(p);
        if creds.is_none() && !privs::is_root() && p.bundle.egress.iter().any(|e| e.port < 1024) {
            tracing::warn!(
                "an egress listener needs a port below 1024 but the agent is not root: Envoy can bind it only with CAP_NET_BIND_SERVICE on its binary"
            );
        }
        LaunchSpec {
            program: self.settings.agent_path.clone(),
            args,
            env: self.proxy_env(p),
            cwd: self.settings.root.clone(),
            creds,
        }
    }

    /// `pilot-agent istio-iptables`, as root: the cleanup, or the rules capturing only `cidrs`
    /// outbound and no inbound port.
    fn iptables_spec(&self, p: Option<&Prepared>, cidrs: Option<&[String]>) -> LaunchSpec {
        let mut args = vec!["istio-iptables".to_string()];
        match cidrs {
            None => args.push("--cleanup-only".into()),
            Some(c) => {
                for (flag, value) in [
                    ("-p", ENVOY_OUTBOUND_PORT.to_string()),
                    ("-z", ENVOY_INBOUND_PORT.to_string()),
                    ("-u", self.run_as.uid.to_string()),
                    ("-g", self.run_as.gid.to_string()),
                    ("-m", "REDIRECT".to_string()),
                    ("-i", c.join(",")),
                    ("-b", String::new()),
                ] {
                    args.push(flag.into());
                    args.push(value);
                }
                args.push("--redirect-dns=false".into());
            }
        }
        let env = match p {
            Some(p) => self.proxy_env(p),
            None => vec![("PATH".into(), CHILD_PATH.into())],
        };
        LaunchSpec {
            program: self.settings.agent_path.clone(),
            args,
            env,
            cwd: self.settings.root.clone(),
            creds: None,
        }
    }

    async fn run_once(&self, spec: LaunchSpec) -> Result<(), String> {
        let what = spec.args.join(" ");
        let mut child = spec
            .spawn()
            .map_err(|e| format!("pilot-agent {what}: cannot start: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let stop = CancellationToken::new();
        if let Some(o) = child.stdout.take() {
            supervisor::log_output(
                &self.tracker,
                o,
                "stdout",
                pid,
                "istio-iptables",
                stop.clone(),
            );
        }
        if let Some(e) = child.stderr.take() {
            supervisor::log_output(
                &self.tracker,
                e,
                "stderr",
                pid,
                "istio-iptables",
                stop.clone(),
            );
        }
        let st = match tokio::time::timeout(IPTABLES_TIMEOUT, child.wait()).await {
            Ok(s) => s.map_err(|e| e.to_string()),
            Err(_) => {
                supervisor::terminate(&mut child, Duration::from_secs(2)).await;
                Err(format!("did not finish within {IPTABLES_TIMEOUT:?}"))
            }
        };
        match st {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("pilot-agent {what} failed: {s}")),
            Err(e) => Err(format!("pilot-agent {what}: {e}")),
        }
    }

    /// Puts the interception the bundle asks for in place (iptables mode), or removes rules a
    /// previous bundle put there.
    async fn interception(&self, p: &Prepared, record: &mut Option<Record>) -> Result<(), String> {
        let applied = record.as_ref().is_some_and(|r| r.iptables_applied);
        match &p.cidrs {
            Some(c) => {
                // Like istio-start.sh: clean first, so a restart never stacks rules.
                if let Err(e) = self.run_once(self.iptables_spec(Some(p), None)).await {
                    tracing::warn!(error = %e, "cleaning old iptables rules failed");
                }
                self.run_once(self.iptables_spec(Some(p), Some(c))).await?;
                tracing::info!(cidrs = %c.join(","), "iptables capture in place (outbound to these CIDRs only)");
                self.set_iptables(record, true)
            }
            None if applied => {
                self.run_once(self.iptables_spec(Some(p), None)).await?;
                self.set_iptables(record, false)
            }
            None => Ok(()),
        }
    }

    fn set_iptables(&self, record: &mut Option<Record>, on: bool) -> Result<(), String> {
        if let Some(r) = record {
            r.iptables_applied = on;
            self.save_record(r)?;
        }
        Ok(())
    }

    /// Removes iptables rules the agent put in place, if any.
    async fn clean_iptables(&self, record: &mut Option<Record>) {
        if !record.as_ref().is_some_and(|r| r.iptables_applied) {
            return;
        }
        match self.run_once(self.iptables_spec(None, None)).await {
            Ok(()) => {
                tracing::info!("iptables rules removed");
                if let Err(e) = self.set_iptables(record, false) {
                    tracing::warn!(error = %e, "recording the iptables clean-up failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "removing the iptables rules failed"),
        }
    }

    /// Everything before pilot-agent can start with bundle `p`.
    async fn bring_up(
        &self,
        p: &Prepared,
        record: &mut Option<Record>,
        stop: &CancellationToken,
    ) -> Result<LaunchSpec, String> {
        self.ensure_proxy(p, stop).await?;
        self.install(p, record).await?;
        self.interception(p, record).await?;
        Ok(self.proxy_spec(p))
    }

    fn note_bundle(&self, p: &Prepared) {
        self.shared.update(|s| {
            s.bundle_version = Some(p.bundle.bundle_version.clone());
            s.token_expires_at = Some(p.bundle.token_expires_at);
        });
    }

    /// The workload certificate's expiry, from the first certificate directory holding one.
    fn cert_expiry(&self, p: &Prepared) -> Option<OffsetDateTime> {
        p.cert_dirs.iter().rev().find_map(|d| {
            let text = std::fs::read_to_string(d.join("cert-chain.pem")).ok()?;
            match cert::chain_not_after(&text) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "unreadable cert-chain.pem");
                    None
                }
            }
        })
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// The mesh worker: install, run, refresh, until `stop`.
async fn work(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut record = ctx.load_record();
    let mut backoff = Backoff::new(Duration::from_secs(1), ctx.settings.max_backoff);
    let ready_url = format!("http://127.0.0.1:{}/healthz/ready", ctx.settings.ready_port);
    let (mut current, sup) = loop {
        if stop.is_cancelled() {
            return;
        }
        let (p, note) = match ctx.fetch().await {
            Ok(p) => (p, None),
            Err(e) => match record.as_ref().map(|r| ctx.prepare(r.bundle.clone())) {
                Some(Ok(p)) => {
                    tracing::warn!(error = %e, "no fresh bundle; running on the installed one");
                    (p, Some(format!("{e}; running on the installed bundle")))
                }
                _ => {
                    tracing::warn!(error = %e, "no Istio bootstrap bundle yet");
                    ctx.shared.update(|s| s.stage = Stage::Installing(Some(e)));
                    if !sleep_or_stop(backoff.next_delay(), &stop).await {
                        return;
                    }
                    continue;
                }
            },
        };
        match ctx.bring_up(&p, &mut record, &stop).await {
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
                    ready_url.clone(),
                    &ctx.tracker,
                    stop.child_token(),
                );
                tracing::info!(bundle_version = %p.bundle.bundle_version, "mesh proxy installed");
                break (p, sup);
            }
            Err(e) => {
                tracing::error!(error = %e, "installing the mesh proxy failed");
                ctx.shared.update(|s| s.stage = Stage::Installing(Some(e)));
                if !sleep_or_stop(backoff.next_delay(), &stop).await {
                    return;
                }
            }
        }
    };

    let mut next_refresh = Instant::now()
        + refresh_delay(
            current.bundle.token_expires_at,
            OffsetDateTime::now_utc(),
            ctx.settings.max_backoff,
        );
    let mut refresh_backoff = Backoff::new(Duration::from_secs(1), ctx.settings.max_backoff);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    let mut dataplane_tick = tokio::time::interval(DATAPLANE_INTERVAL);
    let mut lapse_retry_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_refresh.into()) => {
                let r = match ctx.fetch().await {
                    Ok(p) => refresh(&ctx, &current, p, &mut record, &sup, &stop, false).await,
                    Err(e) => Err(format!("refreshing the bundle failed: {e}")),
                };
                match r {
                    Ok(p) => {
                        refresh_backoff.reset();
                        next_refresh = Instant::now() + refresh_delay(p.bundle.token_expires_at, OffsetDateTime::now_utc(), ctx.settings.max_backoff);
                        current = p;
                        ctx.shared.update(|s| s.problem = None);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the installed bundle");
                        next_refresh = Instant::now() + refresh_backoff.next_delay();
                        ctx.shared.update(|s| s.problem = Some(e));
                    }
                }
            }
            _ = dataplane_tick.tick() => {
                let d = dataplane::read(&ctx.admin, &ctx.layout.hosts(), &current.bundle.egress).await;
                ctx.shared.update(|s| s.dataplane = Some(d));
            }
            _ = housekeeping.tick() => {
                let expiry = ctx.cert_expiry(&current);
                ctx.shared.update(|s| s.cert_expires_at = expiry);
                let lapsed = expiry.is_some_and(|t| t <= OffsetDateTime::now_utc());
                if lapsed && Instant::now() >= lapse_retry_at {
                    tracing::warn!(expired = ?expiry, "the workload certificate has expired; recovering with a fresh bundle");
                    let r = match ctx.fetch().await {
                        Ok(p) => refresh(&ctx, &current, p, &mut record, &sup, &stop, true).await,
                        Err(e) => Err(format!("the workload certificate expired and no fresh bundle came: {e}")),
                    };
                    match r {
                        Ok(p) => {
                            next_refresh = Instant::now() + refresh_delay(p.bundle.token_expires_at, OffsetDateTime::now_utc(), ctx.settings.max_backoff);
                            current = p;
                            ctx.shared.update(|s| { s.problem = None; s.cert_expires_at = None; });
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "recovering from the expired certificate failed");
                            lapse_retry_at = Instant::now() + refresh_backoff.next_delay();
                            ctx.shared.update(|s| s.problem = Some(e));
                        }
                    }
                }
            }
        }
    }
    sup.stop().await;
    ctx.shared.update(|s| s.dataplane = None);
    ctx.clean_iptables(&mut record).await;
}

/// Applies a freshly fetched bundle: only the token when the version is unchanged, else
/// every file and a pilot-agent restart. `renew` forces the latter and first drops the
/// expired workload certificate, so pilot-agent enrolls again with the new token.
async fn refresh(
    ctx: &Ctx,
    current: &Prepared,
    p: Prepared,
    record: &mut Option<Record>,
    sup: &Supervisor,
    stop: &CancellationToken,
    renew: bool,
) -> Result<Prepared, String> {
    if !renew && p.bundle.bundle_version == current.bundle.bundle_version {
        let (layout, token, owner) = (
            ctx.layout.clone(),
            p.bundle.files.istio_token.clone(),
            ctx.run_as.owner(),
        );
        ctx.tracker
            .spawn_blocking(move || install::install_token(&layout, &token, owner))
            .await
            .map_err(|e| e.to_string())??;
        if let Some(r) = record {
            r.bundle = p.bundle.clone();
            ctx.save_record(r)?;
        }
        tracing::info!(expires = %p.bundle.token_expires_at, "istio-token refreshed");
        ctx.note_bundle(&p);
        return Ok(p);
    }
    if renew {
        for d in &current.cert_dirs {
            for f in ["cert-chain.pem", "key.pem"] {
                let _ = std::fs::remove_file(d.join(f));
            }
        }
    } else {
        tracing::info!(from = %current.bundle.bundle_version, to = %p.bundle.bundle_version, "bundle version changed; reinstalling and restarting pilot-agent");
    }
    let spec = ctx.bring_up(&p, record, stop).await?;
    ctx.note_bundle(&p);
    sup.restart(spec).await;
    Ok(p)
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
        let ctx = Ctx {
            layout: Layout {
                root: settings.root.clone(),
            },
            admin: dataplane::Admin::new(
                local_http.clone(),
                format!("http://127.0.0.1:{}", settings.admin_port),
            ),
            local_http,
            download_http,
            shared: Arc::new(Shared::new(metrics.clone())),
            settings,
            client,
            hostname,
            state,
            metrics,
            tracker,
            run_as,
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
        let handle = self
            .ctx
            .tracker
            .spawn(work(self.ctx.clone(), stop.clone()).instrument(tracing::info_span!("mesh")));
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
        let mut record = ctx.load_record();
        ctx.clean_iptables(&mut record).await;
        let layout = ctx.layout.clone();
        let rec = record.clone();
        let r = ctx
            .tracker
            .spawn_blocking(move || match rec {
                Some(r) => install::uninstall(&layout, &r.cert_dirs, &r.created_dirs),
                // Nothing recorded as installed: only the hosts block is recognisably ours.
                None => install::write_hosts(&layout, &[]),
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let reason = match r {
            Ok(()) => {
                if let Err(e) = ctx.state.remove_private(RECORD_FILE) {
                    tracing::warn!(error = %e, "removing {RECORD_FILE} failed");
                }
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
        if self.ctx.load_record().is_some() {
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

//! The proxy-process concern of mesh mode: whom pilot-agent runs as, making sure pilot-agent
//! and Envoy are installed, the command line and environment `istio-start.sh` would give
//! pilot-agent, the iptables capture it sets up, and the workload certificate it obtains.
//! Supervising the running process is [`super::supervisor`]'s.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bundle::Prepared;
use super::install::{self, Layout, Owner};
use super::privs::{self, Credentials, User};
use super::supervisor::{self, LaunchSpec};
use super::{MeshSettings, archive, cert, env};

/// Longest a `pilot-agent istio-iptables` run may take.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's outbound capture port and inbound capture port (Istio's defaults).
const ENVOY_OUTBOUND_PORT: &str = "15001";
const ENVOY_INBOUND_PORT: &str = "15006";
/// The PATH pilot-agent gets (it inherits nothing from the agent).
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whom pilot-agent runs as.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    /// The user switched to, when the agent is root and the user exists.
    user: Option<(User, Vec<u32>)>,
    uid: u32,
    gid: u32,
}

impl RunAs {
    pub(super) fn detect(name: &str) -> RunAs {
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

    /// Owner of the files pilot-agent reads.
    pub(super) fn owner(&self) -> Owner {
        self.user.as_ref().map(|(u, _)| (u.uid, u.gid))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// pilot-agent as a process: its binaries, its launch, its iptables runs.
pub(super) struct Proxy {
    pub(super) settings: MeshSettings,
    pub(super) layout: Layout,
    pub(super) run_as: RunAs,
    pub(super) download_http: reqwest::Client,
    pub(super) tracker: TaskTracker,
}

/// Why pilot-agent and Envoy could not be installed, or the interception not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The binaries are absent and nothing says where to get them.
    #[error(
        "pilot-agent or Envoy is missing ({}, {}) and the bundle names no proxy archive",
        agent.display(),
        envoy.display()
    )]
    NoBinaries {
        /// Where pilot-agent should be.
        agent: PathBuf,
        /// Where Envoy should be.
        envoy: PathBuf,
    },
    /// `--istio-agent-path` is a bare file name.
    #[error("--istio-agent-path has no directory")]
    NoAgentDir,
    /// The binaries' directory could not be prepared.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Downloading or unpacking Istio's sidecar archive.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The unpacking task did not finish (a panic).
    #[error("unpacking: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// `pilot-agent istio-iptables` could not be started.
    #[error("pilot-agent {args}: cannot start: {source}")]
    Spawn {
        /// Its arguments.
        args: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// `pilot-agent istio-iptables` could not be waited for.
    #[error("pilot-agent {args}: {source}")]
    Command {
        /// Its arguments.
        args: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// `pilot-agent istio-iptables` did not finish in time.
    #[error("pilot-agent {args}: did not finish within {IPTABLES_TIMEOUT:?}")]
    CommandTimeout {
        /// Its arguments.
        args: String,
    },
    /// `pilot-agent istio-iptables` failed.
    #[error("pilot-agent {args} failed: {status}")]
    CommandFailed {
        /// Its arguments.
        args: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

impl Proxy {
    /// Makes sure pilot-agent and Envoy are installed, from the bundle's archive if needed.
    pub(super) async fn ensure_installed(
        &self,
        p: &Prepared,
        stop: &CancellationToken,
    ) -> Result<(), ProxyError> {
        let s = &self.settings;
        if is_executable(&s.agent_path) && is_executable(&s.envoy_path) {
            return Ok(());
        }
        let Some(a) = &p.bundle.istio_proxy else {
            return Err(ProxyError::NoBinaries {
                agent: s.agent_path.clone(),
                envoy: s.envoy_path.clone(),
            });
        };
        tracing::info!(url = %a.url, version = a.version.as_deref().unwrap_or("?"), "downloading Istio's sidecar archive");
        let dir = s.agent_path.parent().ok_or(ProxyError::NoAgentDir)?;
        std::fs::create_dir_all(dir).map_err(|source| ProxyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tmp = install::temp_beside(&s.agent_path).map_err(|source| ProxyError::Io {
            path: s.agent_path.clone(),
            source,
        })?;
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
            .map_err(ProxyError::Task)
            .and_then(|r| r.map_err(ProxyError::from));
        let _ = std::fs::remove_file(&tmp);
        r?;
        tracing::info!(path = %s.agent_path.display(), "pilot-agent and Envoy installed");
        Ok(())
    }

    /// The environment `istio-start.sh` gives pilot-agent: cluster.env exported, then its
    /// defaults and the per-VM variables.
    fn env(&self, p: &Prepared) -> Vec<(String, String)> {
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

    fn credentials(&self) -> Option<Credentials> {
        let (u, groups) = self.run_as.user.as_ref()?;
        Some(Credentials {
            uid: u.uid,
            gid: u.gid,
            groups: groups.clone(),
        })
    }

    /// `pilot-agent proxy` for bundle `p`.
    pub(super) fn spec(&self, p: &Prepared) -> LaunchSpec {
        let mut args = vec!["proxy".to_string()];
        if let Some(flags) = p.env.get("ISTIO_AGENT_FLAGS") {
            args.extend(
                flags
                    .split(' ')
                    .filter(|f| !f.is_empty())
                    .map(str::to_string),
            );
        }
        let creds = self.credentials();
        if creds.is_none() && !privs::is_root() && p.bundle.egress.iter().any(|e| e.port < 1024) {
            tracing::warn!(
                "an egress listener needs a port below 1024 but the agent is not root: Envoy can bind it only with CAP_NET_BIND_SERVICE on its binary"
            );
        }
        LaunchSpec {
            program: self.settings.agent_path.clone(),
            args,
            env: self.env(p),
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
            Some(p) => self.env(p),
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

    async fn run_once(&self, spec: LaunchSpec) -> Result<(), ProxyError> {
        let what = spec.args.join(" ");
        let mut child = spec.spawn().map_err(|source| ProxyError::Spawn {
            args: what.clone(),
            source,
        })?;
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
        match tokio::time::timeout(IPTABLES_TIMEOUT, child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(status)) => Err(ProxyError::CommandFailed { args: what, status }),
            Ok(Err(source)) => Err(ProxyError::Command { args: what, source }),
            Err(_) => {
                supervisor::terminate(&mut child, Duration::from_secs(2)).await;
                Err(ProxyError::CommandTimeout { args: what })
            }
        }
    }

    /// Puts the interception the bundle asks for in place (iptables mode), or removes rules a
    /// previous bundle put there (`applied`). The new state when rules were put in place or
    /// removed, `None` when nothing was to be done.
    pub(super) async fn interception(
        &self,
        p: &Prepared,
        applied: bool,
    ) -> Result<Option<bool>, ProxyError> {
        match &p.cidrs {
            Some(c) => {
                // Like istio-start.sh: clean first, so a restart never stacks rules.
                if let Err(e) = self.run_once(self.iptables_spec(Some(p), None)).await {
                    tracing::warn!(error = %e, "cleaning old iptables rules failed");
                }
                self.run_once(self.iptables_spec(Some(p), Some(c))).await?;
                tracing::info!(cidrs = %c.join(","), "iptables capture in place (outbound to these CIDRs only)");
                Ok(Some(true))
            }
            None if applied => {
                self.run_once(self.iptables_spec(Some(p), None)).await?;
                Ok(Some(false))
            }
            None => Ok(None),
        }
    }

    /// Removes the iptables rules the agent put in place.
    pub(super) async fn remove_iptables(&self) -> Result<(), ProxyError> {
        self.run_once(self.iptables_spec(None, None)).await
    }

    /// The workload certificate's expiry, from the first certificate directory holding one.
    pub(super) fn cert_expiry(&self, p: &Prepared) -> Option<OffsetDateTime> {
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

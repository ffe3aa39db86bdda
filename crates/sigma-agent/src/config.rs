//! sigma-agent's configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

fn duration(s: &str) -> Result<Duration, String> {
    sigma_types::validate::duration(s)
}

fn hostname(s: &str) -> Result<String, String> {
    sigma_types::validate::hostname(s)
}

/// sigma-agent: registers this VPS with sigma-api, heartbeats, exposes metrics and manages the
/// local proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "sigma-agent", version, about)]
pub struct Cli {
    /// What to do (default: run the agent).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Agent settings.
    #[command(flatten)]
    pub config: Config,
}

/// Sub-commands besides running the agent.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Print an Envoy bootstrap that points Envoy's ADS at this agent's xDS server.
    EnvoyBootstrap {
        /// Envoy's node id (default: the hostname).
        #[arg(long)]
        node_id: Option<String>,
        /// Envoy's admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

/// The agent's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// sigma-api base URL.
    #[arg(long, env = "SIGMA_API_URL", default_value = "http://127.0.0.1:3000")]
    pub api_url: String,

    /// Enrollment token for the first contact (not needed once the agent has its key).
    #[arg(long, env = "SIGMA_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,

    /// File holding the enrollment token (takes precedence over --enrollment-token).
    #[arg(long, env = "SIGMA_ENROLLMENT_TOKEN_FILE")]
    pub enrollment_token_file: Option<PathBuf>,

    /// Directory of the agent's state: the issued agent key (mode 0600).
    #[arg(long, env = "AGENT_STATE_DIR", default_value = "/var/lib/sigma-agent")]
    pub state_dir: PathBuf,

    /// This VPS's hostname (default: detected).
    #[arg(long, env = "AGENT_HOSTNAME", value_parser = hostname)]
    pub hostname: Option<String>,

    /// Heartbeat interval.
    #[arg(long, env = "AGENT_INTERVAL", default_value = "30s", value_parser = duration)]
    pub interval: Duration,

    /// Timeout of each request to sigma-api.
    #[arg(long, env = "AGENT_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Longest wait between retries while sigma-api is unreachable.
    #[arg(long, env = "AGENT_MAX_BACKOFF", default_value = "60s", value_parser = duration)]
    pub max_backoff: Duration,

    /// Address of the metrics and health endpoint (`/metrics`, `/healthz`).
    #[arg(long, env = "AGENT_METRICS_LISTEN", default_value = "0.0.0.0:9102")]
    pub metrics_listen: SocketAddr,

    /// File holding a bearer token that `/metrics` requires (`/healthz` stays open).
    #[arg(long, env = "AGENT_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Address of the xDS server the local Envoy connects to (classic mode).
    #[arg(long, env = "AGENT_XDS_LISTEN", default_value = "127.0.0.1:18000")]
    pub xds_listen: SocketAddr,

    /// Mesh mode: install the Istio bootstrap bundle and run pilot-agent (istiod manages
    /// Envoy) instead of serving xDS.
    #[arg(long, env = "AGENT_ISTIO_ENABLED", default_value_t = false)]
    pub istio_enabled: bool,

    /// Address Envoy's route listeners bind (with each route's listen port).
    #[arg(long, env = "AGENT_ROUTE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub route_listen_address: std::net::IpAddr,

    /// Path of the pilot-agent binary (mesh mode). Installed from the sidecar archive the
    /// bundle names when missing.
    #[arg(
        long,
        env = "AGENT_ISTIO_AGENT_PATH",
        default_value = "/usr/local/bin/pilot-agent"
    )]
    pub istio_agent_path: PathBuf,

    /// Path of the Envoy binary pilot-agent runs (mesh mode; ProxyConfig `binaryPath`).
    #[arg(
        long,
        env = "AGENT_ISTIO_ENVOY_PATH",
        default_value = "/usr/local/bin/envoy"
    )]
    pub istio_envoy_path: PathBuf,

    /// User pilot-agent and Envoy run as when the agent is root and the user exists (mesh
    /// mode).
    #[arg(long, env = "AGENT_ISTIO_USER", default_value = "istio-proxy")]
    pub istio_user: String,

    /// Root under which mesh mode installs the bundle's files (`/etc/certs`,
    /// `/var/lib/istio/envoy`, `/etc/hosts`, …); pilot-agent runs with it as working directory.
    #[arg(long, env = "AGENT_ROOT", default_value = "/")]
    pub root: PathBuf,

    /// Port of Envoy's readiness endpoint `/healthz/ready` (mesh mode).
    #[arg(long, env = "AGENT_ENVOY_READY_PORT", default_value_t = 15021)]
    pub envoy_ready_port: u16,

    /// Port of Envoy's Prometheus endpoint `/stats/prometheus`, served again as
    /// `/metrics/envoy` on the metrics port (mesh mode).
    #[arg(long, env = "AGENT_ENVOY_STATS_PORT", default_value_t = 15090)]
    pub envoy_stats_port: u16,
}

/// Reads a secret from a `*_FILE` path, trimming the trailing newline editors add.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?
        .trim_end_matches(['\n', '\r'])
        .to_string())
}

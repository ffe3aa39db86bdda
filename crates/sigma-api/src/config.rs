//! sigma-api's configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

fn duration(s: &str) -> Result<Duration, String> {
    sigma_types::validate::duration(s)
}

/// sigma-api: the fleet inventory and mesh registrar of sigma.
#[derive(Debug, Clone, Parser)]
#[command(name = "sigma-api", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "SIGMA_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Database: `sqlite://PATH` (embedded, created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://sigma.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// File holding the database URL (takes precedence over --database-url).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Most database connections (PostgreSQL) or reader connections (SQLite).
    #[arg(long, env = "SIGMA_DATABASE_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// An admin key to install (at least 32 visible ASCII characters). Without it, the first
    /// run prints one generated admin key once.
    #[arg(long, env = "SIGMA_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// File holding the admin key (takes precedence over --admin-key).
    #[arg(long, env = "SIGMA_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// How often coalesced agent heartbeats are written to the database.
    #[arg(long, env = "SIGMA_HEARTBEAT_FLUSH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub heartbeat_flush_interval: Duration,

    /// How often changes made by other replicas (status, revoked keys) are picked up.
    #[arg(long, env = "SIGMA_CHANGE_POLL_INTERVAL", default_value = "2s", value_parser = duration)]
    pub change_poll_interval: Duration,

    /// Largest accepted request body in bytes.
    #[arg(long, env = "SIGMA_MAX_BODY_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// How long shutdown waits for in-flight requests before it stops waiting.
    #[arg(long, env = "SIGMA_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Mesh registry mode: `kubernetes` reconciles the Istio objects into the cluster, `export`
    /// only serves them at GET /api/mesh/manifests (never contacting Kubernetes), `off` does
    /// neither reconcile nor talk to Kubernetes. Default: `kubernetes` when a kubeconfig
    /// (--kubeconfig, KUBECONFIG, ~/.kube/config) or an in-cluster service account is found,
    /// else `off`.
    #[arg(long = "mesh", env = "SIGMA_MESH_MODE", value_enum)]
    pub mesh_mode: Option<MeshMode>,

    /// Where Prometheus scrapes a mesh VPS's Envoy stats: `direct` (Envoy's own
    /// `:15090/stats/prometheus`) or `agent` (the agent's metrics port, `/metrics/envoy`).
    #[arg(
        long,
        env = "SIGMA_PROMETHEUS_ENVOY_METRICS",
        value_enum,
        default_value = "direct"
    )]
    pub prometheus_envoy_metrics: EnvoyMetricsVia,

    /// Kubeconfig file for the mesh reconciler (default: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, env = "SIGMA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "SIGMA_KUBE_CONTEXT")]
    pub kube_context: Option<String>,

    /// Timeout of each Kubernetes API call.
    #[arg(long, env = "SIGMA_KUBE_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub kube_timeout: Duration,

    /// Namespace of every Istio object sigma generates (and of its leader Lease).
    #[arg(long, env = "SIGMA_MESH_NAMESPACE", default_value = "sigma")]
    pub mesh_namespace: String,

    /// Istio's root namespace; the mesh namespace must differ from it, because a Sidecar or
    /// DestinationRule there would apply to the whole mesh.
    #[arg(long, env = "SIGMA_ISTIO_NAMESPACE", default_value = "istio-system")]
    pub istio_namespace: String,

    /// DNS domain of the purposes' services (`<purpose>.<domain>`).
    #[arg(long, env = "SIGMA_MESH_SERVICE_DOMAIN", default_value = "sigma.mesh")]
    pub mesh_service_domain: String,

    /// Service account (mesh identity) of workloads whose purpose names none.
    #[arg(long, env = "SIGMA_MESH_SERVICE_ACCOUNT", default_value = "sigma-vm")]
    pub mesh_service_account: String,

    /// One Istio network for the whole fleet; without it each VPS is in `provider-<provider>`.
    #[arg(long, env = "SIGMA_MESH_NETWORK")]
    pub mesh_network: Option<String>,

    /// Full reconcile pass even without a change, repairing drift in the cluster.
    #[arg(long, env = "SIGMA_MESH_RESYNC_INTERVAL", default_value = "5m", value_parser = duration)]
    pub mesh_resync_interval: Duration,

    /// Average Kubernetes API calls per second the reconciler may make.
    #[arg(long, env = "SIGMA_MESH_API_QPS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mesh_api_qps: u32,

    /// Calls the reconciler may make at once above that average.
    #[arg(long, env = "SIGMA_MESH_API_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mesh_api_burst: u32,

    /// How replicas agree on the one that reconciles: `lease` (a Kubernetes Lease in the mesh
    /// namespace) or `none` (this replica always reconciles; only for a single replica).
    #[arg(
        long,
        env = "SIGMA_MESH_LEADER_ELECTION",
        value_enum,
        default_value = "lease"
    )]
    pub mesh_leader_election: LeaderElection,

    /// Name of the leader Lease.
    #[arg(long, env = "SIGMA_MESH_LEASE_NAME", default_value = "sigma-api-mesh")]
    pub mesh_lease_name: String,
}

/// What sigma-api does with the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshMode {
    /// No reconciler, no Kubernetes.
    Off,
    /// Reconcile into the cluster.
    Kubernetes,
    /// Serve manifests only.
    Export,
}

/// Where Prometheus scrapes Envoy on a mesh VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EnvoyMetricsVia {
    /// Envoy's own stats port, 15090.
    #[default]
    Direct,
    /// Through the agent's metrics port.
    Agent,
}

/// Leader election of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaderElection {
    /// A Kubernetes Lease.
    Lease,
    /// Always leader.
    None,
}

/// Reads a secret from a `*_FILE` path, trimming the trailing newline editors add.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?
        .trim_end_matches(['\n', '\r'])
        .to_string())
}

impl Config {
    /// The database URL, from its file if one is given.
    pub fn database_url(&self) -> anyhow::Result<String> {
        match &self.database_url_file {
            Some(p) => read_secret_file(p)
                .map_err(|e| anyhow::anyhow!("DATABASE_URL_FILE {}: {e}", p.display())),
            None => Ok(self.database_url.clone()),
        }
    }

    /// The mesh template from the flags, checked.
    pub fn mesh_template(&self) -> anyhow::Result<sigma_mesh::MeshTemplate> {
        let t = sigma_mesh::MeshTemplate {
            namespace: self.mesh_namespace.clone(),
            service_domain: self.mesh_service_domain.clone(),
            service_account: self.mesh_service_account.clone(),
            network: match self.mesh_network.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => sigma_mesh::NetworkMode::Fixed(n.to_string()),
                _ => sigma_mesh::NetworkMode::PerProvider,
            },
            ..sigma_mesh::MeshTemplate::default()
        };
        let mut problems: Vec<String> = Vec::new();
        if let Err(e) = t.validate() {
            let flag = |f: &str| match f {
                "namespace" => "--mesh-namespace",
                "service_domain" => "--mesh-service-domain",
                "service_account" => "--mesh-service-account",
                "network" => "--mesh-network",
                _ => "mesh template",
            };
            problems.extend(e.0.iter().map(|(k, v)| format!("{}: {v}", flag(k))));
        }
        if self.istio_namespace == self.mesh_namespace {
            problems.push(format!(
                "--mesh-namespace: {:?} is Istio's root namespace (--istio-namespace); objects there apply to the whole mesh",
                self.mesh_namespace
            ));
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(t)
    }

    /// The mesh mode: as given, else `kubernetes` when Kubernetes configuration is found.
    pub fn effective_mesh_mode(&self) -> MeshMode {
        self.mesh_mode.unwrap_or_else(|| {
            if self.kube_access().is_available() {
                MeshMode::Kubernetes
            } else {
                MeshMode::Off
            }
        })
    }

    /// Where the Kubernetes credentials come from.
    pub fn kube_access(&self) -> sigma_reconciler::KubeAccess {
        sigma_reconciler::KubeAccess {
            kubeconfig: self.kubeconfig.clone(),
            context: self.kube_context.clone(),
            timeout: self.kube_timeout,
        }
    }

    /// The admin key, from its file if one is given.
    pub fn admin_key(&self) -> anyhow::Result<Option<String>> {
        match &self.admin_key_file {
            Some(p) => read_secret_file(p)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("SIGMA_ADMIN_KEY_FILE {}: {e}", p.display())),
            None => Ok(self.admin_key.clone()),
        }
    }
}

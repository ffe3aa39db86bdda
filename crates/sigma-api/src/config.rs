//! sigma-api's configuration: flags, each with an environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

fn duration(s: &str) -> Result<Duration, String> {
    sigma_types::validate::duration(s)
}

/// A duration where zero (`0`, `0s`) means "off".
fn duration_or_zero(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "0s" | "0ms" | "0m" | "0h" => Ok(Duration::ZERO),
        t => duration(t),
    }
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

    /// How long a VPS's agent may be silent before the VPS stops receiving route traffic as a
    /// fleet target (a route to that VPS, or to a pool it belongs to). Longer than the agents'
    /// heartbeat interval plus the flush interval.
    #[arg(long, env = "SIGMA_ROUTE_TARGET_SILENCE", default_value = "90s", value_parser = duration)]
    pub route_target_silence: Duration,

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

    /// Full reconcile pass (a list of the mesh namespace) even without a change, repairing
    /// drift in the cluster; a pass for a change reads only the objects it writes.
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

    /// Revision of the Istio control plane VPS join (`istioctl install --revision <rev>`):
    /// bootstrap bundles then read ConfigMap `istio-<rev>` and point at `istiod-<rev>`.
    #[arg(long, env = "SIGMA_ISTIO_REVISION")]
    pub istio_revision: Option<String>,

    /// Cluster id the VPS's proxies report (`ISTIO_META_CLUSTER_ID`): Istio's
    /// `values.global.multiCluster.clusterName`.
    #[arg(long, env = "SIGMA_ISTIO_CLUSTER_ID", default_value = "Kubernetes")]
    pub istio_cluster_id: String,

    /// Lifetime of the `istio-token` in bootstrap bundles (10m to 24h). pilot-agent needs it
    /// for first contact only; the agent refreshes it before it expires.
    #[arg(long, env = "SIGMA_ISTIO_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub istio_token_ttl: Duration,

    /// Average TokenRequests per second bootstrap bundles may make toward the API server (one
    /// per bundle). Beyond it, after a wait of up to 2 s, a bundle request is answered 503
    /// `mesh_busy` with a Retry-After, and agents come back then. A fleet of N VPS refreshes
    /// about N / (0.6 x --istio-token-ttl) tokens per second: keep this well above that.
    #[arg(long, env = "SIGMA_ISTIO_TOKEN_QPS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub istio_token_qps: u32,

    /// TokenRequests bundles may make at once above that average.
    #[arg(long, env = "SIGMA_ISTIO_TOKEN_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub istio_token_burst: u32,

    /// Address of the east-west gateway VPS reach istiod through; without it, it is read from
    /// the gateway Service (--eastwest-service) at each bundle.
    #[arg(long, env = "SIGMA_EASTWEST_ADDRESS")]
    pub eastwest_address: Option<IpAddr>,

    /// Name of the east-west gateway Service in Istio's namespace.
    #[arg(
        long,
        env = "SIGMA_EASTWEST_SERVICE",
        default_value = "istio-eastwestgateway"
    )]
    pub eastwest_service: String,

    /// How long bootstrap bundles reuse the root certificate, mesh config and gateway address
    /// read from the cluster (`0`: read them for every bundle). Tokens are never reused.
    #[arg(long, env = "SIGMA_ISTIO_BOOTSTRAP_CACHE", default_value = "10s", value_parser = duration_or_zero)]
    pub istio_bootstrap_cache: Duration,

    /// URL of Istio's sidecar archive (pilot-agent and Envoy) that agents download when a VPS
    /// lacks the proxy; give --istio-proxy-sha256 with it.
    #[arg(long, env = "SIGMA_ISTIO_PROXY_URL")]
    pub istio_proxy_url: Option<String>,

    /// SHA-256 (hex) of the archive at --istio-proxy-url; agents refuse an archive that does
    /// not match.
    #[arg(long, env = "SIGMA_ISTIO_PROXY_SHA256")]
    pub istio_proxy_sha256: Option<String>,

    /// Istio version the archive holds, for agents' reports.
    #[arg(long, env = "SIGMA_ISTIO_PROXY_VERSION")]
    pub istio_proxy_version: Option<String>,

    /// Download URL of the sigma-agent binary that `GET /install.sh` writes into the installer
    /// as its default (used when the VPS gives no --binary).
    #[arg(long, env = "SIGMA_AGENT_BINARY_URL")]
    pub agent_binary_url: Option<String>,

    /// sigma-api's URL as VPS reach it, written into `GET /install.sh` as the default sigma-api
    /// URL; without it the request's Host header is used when it is a plain host[:port].
    #[arg(long, env = "SIGMA_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Kiali's base URL, linked from the web console's overview.
    #[arg(long, env = "SIGMA_KIALI_URL")]
    pub kiali_url: Option<String>,

    /// Grafana's base URL, linked from the web console's overview.
    #[arg(long, env = "SIGMA_GRAFANA_URL")]
    pub grafana_url: Option<String>,

    /// Believe `X-Forwarded-Proto` (only behind a proxy that sets it): the web console then
    /// marks its session cookie `Secure` and checks form origins as https.
    #[arg(long, env = "SIGMA_TRUST_FORWARDED_PROTO")]
    pub trust_forwarded_proto: bool,

    /// A web console session unused this long ends.
    #[arg(long, env = "SIGMA_CONSOLE_SESSION_IDLE", default_value = "30m", value_parser = duration)]
    pub console_session_idle: Duration,

    /// A web console session ends this long after sign-in, used or not.
    #[arg(long, env = "SIGMA_CONSOLE_SESSION_MAX", default_value = "12h", value_parser = duration)]
    pub console_session_max: Duration,
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

impl MeshMode {
    /// The flag's spelling (`off`, `kubernetes`, `export`).
    pub fn as_str(self) -> &'static str {
        match self {
            MeshMode::Off => "off",
            MeshMode::Kubernetes => "kubernetes",
            MeshMode::Export => "export",
        }
    }
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

/// The host of an http(s) URL fit to hand to a shell script and to curl: a scheme, a plain
/// host[:port], no whitespace, control characters or quotes, at most 2048 characters.
fn http_url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    let plain = url.len() <= 2048
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"' || c == '\\');
    (plain && crate::routes::install::is_host_port(host)).then_some(host)
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

    /// The defaults `GET /install.sh` writes into the agent installer, checked.
    pub fn installer_defaults(&self) -> anyhow::Result<crate::routes::install::InstallerDefaults> {
        let mut problems = Vec::new();
        let mut check = |flag: &str, v: &Option<String>| -> Option<String> {
            let v = v.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
            if http_url_host(v).is_some() {
                Some(v.to_string())
            } else {
                problems.push(format!(
                    "{flag}: must be an http(s) URL with a host, without spaces or quotes, at most 2048 characters"
                ));
                None
            }
        };
        let agent_binary_url = check("--agent-binary-url", &self.agent_binary_url);
        let public_url =
            check("--public-url", &self.public_url).map(|u| u.trim_end_matches('/').to_string());
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(crate::routes::install::InstallerDefaults {
            agent_binary_url,
            public_url,
        })
    }

    /// The proxy archive agents download, checked: URL and digest both or neither.
    pub fn istio_proxy(&self) -> anyhow::Result<Option<sigma_types::mesh::IstioProxyArchive>> {
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (url, sha) = match (
            nonempty(&self.istio_proxy_url),
            nonempty(&self.istio_proxy_sha256),
        ) {
            (None, None) => {
                if nonempty(&self.istio_proxy_version).is_some() {
                    anyhow::bail!("--istio-proxy-version: only with --istio-proxy-url");
                }
                return Ok(None);
            }
            (Some(_), None) => anyhow::bail!(
                "--istio-proxy-url needs --istio-proxy-sha256: agents install only an archive they can verify"
            ),
            (None, Some(_)) => anyhow::bail!("--istio-proxy-sha256 needs --istio-proxy-url"),
            (Some(u), Some(s)) => (u, s.to_ascii_lowercase()),
        };
        let mut problems = Vec::new();
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .unwrap_or("");
        if host.is_empty()
            || url.len() > 2048
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push("--istio-proxy-url: must be an http(s) URL with a host, without spaces, at most 2048 characters".to_string());
        }
        if !sigma_types::mesh::is_sha256_hex(&sha) {
            problems.push("--istio-proxy-sha256: must be 64 hex digits".to_string());
        }
        let version = nonempty(&self.istio_proxy_version);
        if let Some(v) = &version
            && (v.len() > 64 || v.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            problems
                .push("--istio-proxy-version: at most 64 characters, without spaces".to_string());
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(Some(sigma_types::mesh::IstioProxyArchive {
            url,
            sha256: sha,
            version,
        }))
    }

    /// How bootstrap bundles are built, checked (in every mode, so a bad flag stops the start
    /// instead of the first bundle).
    pub fn bundle_settings(
        &self,
        template: &sigma_mesh::MeshTemplate,
    ) -> anyhow::Result<sigma_reconciler::BundleSettings> {
        use sigma_reconciler::bundle::{MAX_TOKEN_TTL, MIN_TOKEN_TTL};
        let control_plane = sigma_mesh::bundle::ControlPlane {
            namespace: self.istio_namespace.clone(),
            revision: self
                .istio_revision
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            cluster_id: self.istio_cluster_id.trim().to_string(),
        };
        let mut problems: Vec<String> = Vec::new();
        if let Err(e) = control_plane.validate() {
            problems.extend(e.0.iter().map(|(k, v)| {
                let flag = match k.as_str() {
                    "namespace" => "--istio-namespace",
                    "revision" => "--istio-revision",
                    _ => "--istio-cluster-id",
                };
                format!("{flag}: {v}")
            }));
        }
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&self.istio_token_ttl) {
            problems.push(
                "--istio-token-ttl: must be 10m to 24h (Kubernetes grants no token shorter than 10 minutes)"
                    .into(),
            );
        }
        if !sigma_mesh::names::is_dns_label(&self.eastwest_service) {
            problems.push("--eastwest-service: must be a DNS-1123 label".into());
        }
        if let Some(a) = self.eastwest_address
            && (a.is_unspecified() || a.is_loopback() || a.is_multicast())
        {
            problems.push(format!(
                "--eastwest-address: {a} cannot be reached from a VPS"
            ));
        }
        let istio_proxy = match self.istio_proxy() {
            Ok(p) => p,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(sigma_reconciler::BundleSettings {
            mesh_namespace: template.namespace.clone(),
            control_plane,
            token_ttl: self.istio_token_ttl,
            eastwest_service: self.eastwest_service.clone(),
            eastwest_address: self.eastwest_address,
            timeout: self.kube_timeout,
            cache_ttl: self.istio_bootstrap_cache,
            istio_proxy,
            token_qps: f64::from(self.istio_token_qps),
            token_burst: self.istio_token_burst,
        })
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

    /// The web console's settings, checked.
    pub fn web_settings(
        &self,
        installer: &crate::routes::install::InstallerDefaults,
    ) -> anyhow::Result<sigma_web::WebSettings> {
        let mut problems = Vec::new();
        let mut url = |flag: &str, v: &Option<String>| {
            let v = v.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
            if http_url_host(v).is_none() {
                problems.push(format!("{flag}: must be an http(s) URL with a host"));
            }
            Some(v.to_string())
        };
        let kiali_url = url("--kiali-url", &self.kiali_url);
        let grafana_url = url("--grafana-url", &self.grafana_url);
        if self.console_session_max < self.console_session_idle {
            problems.push("--console-session-max: must be at least --console-session-idle".into());
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(sigma_web::WebSettings {
            kiali_url,
            grafana_url,
            public_url: installer.public_url.clone(),
            trust_forwarded_proto: self.trust_forwarded_proto,
            sessions: sigma_store::sessions::SessionLimits {
                idle: self.console_session_idle,
                absolute: self.console_session_max,
            },
            ..sigma_web::WebSettings::default()
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut all = vec!["sigma-api"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn installer_urls_are_checked_at_start() {
        let d = cfg(&[
            "--agent-binary-url",
            "https://dl.example.net/sigma-agent",
            "--public-url",
            "https://sigma.example.net:8443/",
        ])
        .installer_defaults()
        .unwrap();
        assert_eq!(
            d.agent_binary_url.as_deref(),
            Some("https://dl.example.net/sigma-agent")
        );
        assert_eq!(
            d.public_url.as_deref(),
            Some("https://sigma.example.net:8443")
        );
        assert_eq!(cfg(&[]).installer_defaults().unwrap(), Default::default());
        for bad in [
            "ftp://x",
            "https://",
            "https://a b",
            "https://x/'y",
            "https://x;y/",
        ] {
            let e = cfg(&["--public-url", bad])
                .installer_defaults()
                .unwrap_err()
                .to_string();
            assert!(e.contains("--public-url"), "{bad}: {e}");
        }
        let e = cfg(&["--agent-binary-url", "/local/path"])
            .installer_defaults()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--agent-binary-url"), "{e}");
    }
}

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

//! Populating a benchmark inventory: up to millions of enrolled VPS written straight into the
//! database, for the scale benchmarks (`sigma-loadgen --seed`).
//!
//! Enrolling a million agents through `POST /api/agent/register` takes hours on a 2-core
//! machine (one transaction, audit record and key per agent), so the benchmark fills the
//! inventory through this path instead and then measures the real API on it. It writes what an
//! enrollment leaves behind, with the store's own insert code: the VPS row (with its tags,
//! addresses, system info and a contract), an agent key bound to it and the `vps.enroll` audit
//! record; providers are created by the store's own call. The fleet is spread over purposes,
//! countries and providers like a real one, so filtered pages select a realistic share.
//!
//! Agent keys are derived from the VPS's index ([`agent_key`]), so a benchmark can heartbeat as
//! any seeded VPS without a file of a million secrets. That makes them guessable: this path is
//! for benchmark databases only, which is why it is compiled only with the `bulk` feature (and
//! for this crate's tests).

use sha2::{Digest, Sha256};
use sigma_types::{IpAddress, ProviderCreate, Role, SystemInfo, VpsContract, VpsCreate, VpsStatus};
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::secret;

/// Purposes of a seeded fleet with their weight out of 100: most of a fleet is proxy nodes.
const PURPOSES: [(&str, usize); 5] = [
    ("xrayr", 60),
    ("vpn-exit", 20),
    ("vpn-relay", 10),
    ("vpn-entry", 8),
    ("monitor", 2),
];

/// Countries a seeded fleet is spread over.
const COUNTRIES: [&str; 30] = [
    "DE", "NL", "FI", "FR", "GB", "US", "CA", "JP", "SG", "HK", "KR", "TW", "AU", "SE", "NO", "PL",
    "CZ", "AT", "CH", "IT", "ES", "PT", "RO", "BG", "TR", "AE", "IN", "BR", "MX", "ZA",
];

/// Providers a seeded fleet is rented from.
pub const PROVIDERS: usize = 40;

/// Hostname of the `i`-th seeded VPS.
pub fn hostname(i: usize) -> String {
    format!("vps-{i:07}.bench.sigma")
}

/// Public IPv4 address of the `i`-th seeded VPS (from 100.64.0.0/10, room for 4 million).
pub fn public_ip(i: usize) -> String {
    let n = 0x6440_0000u32 + (i as u32 & 0x003f_ffff);
    std::net::Ipv4Addr::from(n).to_string()
}

/// Purpose of the `i`-th seeded VPS.
pub fn purpose(i: usize) -> &'static str {
    let mut slot = i % 100;
    for (p, w) in PURPOSES {
        if slot < w {
            return p;
        }
        slot -= w;
    }
    PURPOSES[0].0
}

/// Country of the `i`-th seeded VPS.
pub fn country(i: usize) -> &'static str {
    // Skewed like a real fleet: the first countries hold most hosts.
    let r = (i.wrapping_mul(2_654_435_761)) % 1000;
    COUNTRIES[(r * r / 1000 * COUNTRIES.len() / 1000).min(COUNTRIES.len() - 1)]
}

/// Name of the `p`-th seeded provider.
pub fn provider_name(p: usize) -> String {
    format!("bench-provider-{p:02}")
}

/// The agent key of the `i`-th seeded VPS: sigma's key shape, with the index as its prefix so
/// prefixes never collide, and a secret derived from the index (benchmark databases only).
pub fn agent_key(i: usize) -> String {
    let digest = hex::encode(Sha256::digest(format!("sigma-bench-agent-{i}").as_bytes()));
    format!("{}_{:08x}_{}", secret::API_KEY_KIND, i, &digest[..48])
}

/// What an agent of the `i`-th seeded VPS reports.
pub fn addresses(i: usize) -> Vec<IpAddress> {
    vec![
        IpAddress {
            ip: public_ip(i),
            label: "public".into(),
        },
        IpAddress {
            ip: "10.0.0.2".into(),
            label: "private".into(),
        },
    ]
}

/// What an agent of a seeded VPS reports about its system, `n` heartbeats in.
pub fn system_info(n: u64) -> serde_json::Value {
    serde_json::json!({
        "cpu_cores": 2, "memory_total_bytes": 2_147_483_648u64,
        "memory_available_bytes": 1_073_741_824u64, "disk_total_bytes": 21_474_836_480u64,
        "disk_used_bytes": 5_368_709_120u64, "uptime_seconds": 1000 + n,
        "load_average": [0.1, 0.2, 0.3], "agent_version": "bench"
    })
}

fn contract(i: usize) -> Result<VpsContract> {
    let cycles = ["monthly", "quarterly", "yearly"];
    let day = time::OffsetDateTime::now_utc().date() + time::Duration::days((i % 400) as i64);
    serde_json::from_value(serde_json::json!({
        "cost": format!("{}.{:02}", 3 + i % 20, i % 100),
        "currency": if i.is_multiple_of(4) { "USD" } else { "EUR" },
        "billing_cycle": cycles[i % 3],
        "expires_on": day.to_string(),
        "cpu_cores": 1 + (i % 4) as i64,
        "ram_mb": 1024 * (1 + (i % 4) as i64),
        "disk_gb": 20 + (i % 5) as i64 * 10,
    }))
    .map_err(|e| Error::Corrupt(format!("bench contract: {e}")))
}

impl Store {
    /// Seeds VPS `from..to` of a benchmark fleet (see the module's documentation), in
    /// transactions of `batch` VPS, creating the seeded providers first when missing. The
    /// in-memory caches are not filled: a sigma-api started on the database warms them.
    pub async fn seed_bench_fleet(&self, from: usize, to: usize, batch: usize) -> Result<()> {
        let providers = self.seed_providers().await?;
        let system_info: SystemInfo = serde_json::from_value(system_info(0))
            .map_err(|e| Error::Corrupt(format!("bench system info: {e}")))?;
        let mut start = from;
        while start < to {
            let end = (start + batch.max(1)).min(to);
            let mut tx = self.pools.write.begin().await?;
            let now = now_ms();
            for i in start..end {
                let create = VpsCreate {
                    hostname: hostname(i),
                    alias: None,
                    provider: None,
                    ip_addresses: addresses(i),
                    country: Some(country(i).into()),
                    city: None,
                    purpose: purpose(i).into(),
                    status: Some(VpsStatus::Active),
                    tags: vec!["bench".into(), format!("rack-{:03}", i % 500)],
                    monitoring: true,
                    node_exporter_port: 9100,
                    mesh_opt_out: false,
                };
                let provider = providers[i % providers.len()].clone();
                let id = self
                    .insert_vps(
                        &mut tx,
                        &create,
                        Some(&system_info),
                        Some(now),
                        Some(provider),
                    )
                    .await?;
                crate::contracts::write_contract(&mut tx, id, &contract(i)?).await?;
                let key = agent_key(i);
                let actor = "enroll:sge_bench000";
                sqlx::query(
                    "INSERT INTO api_keys (id, prefix, key_hash, name, role, vps_id, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(secret::prefix_of(&key))
                .bind(secret::hash(&key))
                .bind(format!("agent {}", create.hostname))
                .bind(Role::Agent.as_str())
                .bind(id.to_string())
                .bind(actor)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                record(
                    &mut *tx,
                    Record {
                        actor,
                        action: "vps.enroll",
                        resource_type: "vps",
                        resource_id: id.to_string(),
                    },
                    None::<&()>,
                    Some(&create),
                )
                .await?;
            }
            tx.commit().await?;
            start = end;
        }
        if self.backend() == crate::Backend::Postgres {
            // What autovacuum does within a minute of a bulk load: without statistics the
            // planner would measure a table it believes empty.
            sqlx::query("ANALYZE").execute(&self.pools.write).await?;
        }
        Ok(())
    }

    /// How many VPS of a seeded fleet the database holds (live or not), so a benchmark can
    /// grow an existing fleet instead of seeding it anew.
    pub async fn seeded_bench_fleet(&self) -> Result<usize> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM vps WHERE hostname LIKE '%.bench.sigma'")
                .fetch_one(&self.pools.read)
                .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Bytes the database takes: the SQLite file's pages (after a checkpoint of its write-ahead
    /// log) or PostgreSQL's `pg_database_size`.
    pub async fn database_bytes(&self) -> Result<i64> {
        Ok(match self.backend() {
            crate::Backend::Sqlite => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&self.pools.write)
                    .await?;
                sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(&self.pools.read)
                .await?
            }
            crate::Backend::Postgres => {
                sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(&self.pools.read)
                    .await?
            }
        })
    }

    /// Ids of the seeded providers, created when missing.
    async fn seed_providers(&self) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(PROVIDERS);
        for p in 0..PROVIDERS {
            let name = provider_name(p);
            let existing: Option<String> =
                sqlx::query_scalar("SELECT id FROM providers WHERE name_key = $1")
                    .bind(name.to_lowercase())
                    .fetch_optional(&self.pools.read)
                    .await?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let c = ProviderCreate {
                        name,
                        country: Some(COUNTRIES[p % COUNTRIES.len()].into()),
                        website: None,
                        notes: None,
                    };
                    self.create_provider("bench", &c).await?.id.to_string()
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_sigmas_shape_and_distinct_prefixes() {
        let a = agent_key(0);
        let b = agent_key(1_000_000);
        assert_eq!(secret::prefix_of(&a), "sgm_00000000");
        assert_eq!(secret::prefix_of(&b), "sgm_000f4240");
        assert_ne!(a, agent_key(1));
    }

    #[test]
    fn fleet_is_spread_over_purposes_and_countries() {
        let n = 10_000;
        let xrayr = (0..n).filter(|&i| purpose(i) == "xrayr").count();
        assert_eq!(xrayr, 6000);
        let countries: std::collections::BTreeSet<_> = (0..n).map(country).collect();
        assert!(countries.len() >= 20, "{countries:?}");
        let de = (0..n).filter(|&i| country(i) == "DE").count();
        assert!(
            de > n / 30,
            "the first country holds more than an even share: {de}"
        );
        assert_eq!(public_ip(0), "100.64.0.0");
        assert_eq!(public_ip(70_000), "100.65.17.112");
    }
}

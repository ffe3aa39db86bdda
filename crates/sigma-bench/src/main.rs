//! `sigma-loadgen`: loads a sigma-api with a simulated fleet and prints what it measured.
//!
//! It can start the sigma-api it measures (`--spawn PATH --database-url URL`), so one command
//! gives a figure for a backend and a fleet size:
//!
//! ```text
//! sigma-loadgen --spawn target/release/sigma-api --database-url sqlite:///tmp/b.db --vps 10000
//! ```
//!
//! The fleet is enrolled through the API (`POST /api/agent/register`), or with `--seed` written
//! straight into the database by sigma-store's benchmark path (a million VPS in minutes; only
//! the VPS the database lacks are added, so one database grows from 1k to 1M across runs).
//! Every measured request goes through the real API.
//!
//! Modes: `heartbeats` (the default) drives heartbeats from every agent; `targets` fetches the
//! Prometheus service-discovery document back to back; `scale` measures a whole set at one fleet
//! size (start-up and memory, heartbeats, filtered pages, targets, a full retire of 1,000 VPS and
//! the database's size), see [`scale`].

mod http;
mod scale;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use sigma_store::bulk;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::http::Conn;

fn duration(s: &str) -> Result<Duration, String> {
    sigma_types::validate::duration(s)
}

/// Load generator for sigma-api.
#[derive(Debug, Parser)]
#[command(name = "sigma-loadgen", version)]
struct Args {
    /// sigma-api to load (ignored with --spawn).
    #[arg(long, env = "SIGMA_API_URL", default_value = "http://127.0.0.1:3000")]
    api_url: String,
    /// An admin key of that sigma-api (with --spawn one is generated and installed).
    #[arg(long, env = "SIGMA_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Start this sigma-api binary on a free port for the run, and stop it afterwards.
    #[arg(long)]
    spawn: Option<String>,
    /// Database of the spawned sigma-api.
    #[arg(long, default_value = "sqlite:///tmp/sigma-loadgen.db")]
    database_url: String,
    /// Simulated agents (VPS) of the fleet.
    #[arg(long, default_value_t = 1000)]
    vps: usize,
    /// Write the fleet straight into the database (sigma-store's benchmark path) instead of
    /// enrolling it through the API; only the VPS the database lacks are added. Needs --spawn.
    #[arg(long)]
    seed: bool,
    /// Concurrent connections (each sends requests back to back).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the measured heartbeat phase.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Reuse the agent keys saved here by an earlier run against the same database (and save
    /// them here after enrolling), to skip enrollment when repeating a large run.
    #[arg(long)]
    keys_file: Option<std::path::PathBuf>,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// What to measure once the fleet is enrolled.
    #[arg(long, value_enum, default_value_t = Mode::Heartbeats)]
    mode: Mode,
    /// Requests of the targets measurement, sent one after another.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Requests per filtered page of the scale measurement.
    #[arg(long, default_value_t = 50)]
    page_requests: usize,
    /// VPS retired (and brought back) by the scale measurement.
    #[arg(long, default_value_t = 1000)]
    retire: usize,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Heartbeats from every agent, `--concurrency` connections for `--duration`.
    Heartbeats,
    /// `GET /api/prometheus/targets` for the whole fleet, one request at a time.
    Targets,
    /// Everything at one fleet size: start-up, memory, heartbeats, pages, targets, retire, size.
    Scale,
}

fn host_of(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    Ok(rest.trim_end_matches('/').to_string())
}

fn heartbeat_body(i: usize, n: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "hostname": bulk::hostname(i),
            "ip_addresses": bulk::addresses(i),
            "system_info": bulk::system_info(n),
        })
        .to_string(),
    )
}

async fn enroll(
    addr: &str,
    admin: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let mut c = Conn::open(addr).await?;
    let (st, body) = c
        .post(
            "/api/enrollment-tokens",
            admin,
            Bytes::from(serde_json::json!({"purpose": "xrayr", "max_uses": sigma_types::MAX_TOKEN_USES, "ttl_seconds": 86400}).to_string()),
        )
        .await?;
    if st != 201 {
        bail!(
            "creating an enrollment token: {st} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = Arc::new(v["token"].as_str().context("token")?.to_string());
    let next = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(std::sync::Mutex::new(vec![String::new(); n]));
    let mut tasks = vec![];
    for _ in 0..concurrency.min(n.max(1)) {
        let (addr, token, next, keys) =
            (addr.to_string(), token.clone(), next.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                // Addresses as a real agent reports them, so service discovery has one to list.
                let body = serde_json::json!({
                    "hostname": bulk::hostname(i),
                    "ip_addresses": bulk::addresses(i),
                })
                .to_string();
                let (st, body) = c
                    .post("/api/agent/register", &token, Bytes::from(body))
                    .await?;
                if st != 200 {
                    bail!("register {i}: {st} {}", String::from_utf8_lossy(&body));
                }
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                let key = v["agent_key"].as_str().context("agent_key")?.to_string();
                keys.lock().unwrap()[i] = key;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let keys = std::mem::take(&mut *keys.lock().unwrap());
    Ok(keys)
}

/// Latencies and failures of one measured phase.
pub(crate) struct Phase {
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
}

async fn drive(
    addr: &str,
    keys: Arc<Vec<String>>,
    concurrency: usize,
    length: Duration,
    record: bool,
) -> anyhow::Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (addr, keys, next, errors) =
            (addr.to_string(), keys.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await?;
            let mut lat = Vec::with_capacity(if record { 200_000 } else { 0 });
            let mut n = 0u64;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % keys.len();
                n += 1;
                let body = heartbeat_body(i, n);
                let t0 = Instant::now();
                let (st, _) = c.post("/api/agent/heartbeat", &keys[i], body).await?;
                if st != 200 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if record {
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(Phase {
        latencies_us: all,
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// The `p` quantile of sorted microseconds, in milliseconds.
pub(crate) fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

/// A sigma-api this run started.
pub(crate) struct Server {
    child: tokio::process::Child,
    /// From the start of the process to its "listening" line (migrations and cache warming).
    pub startup: Duration,
}

impl Server {
    /// Resident and peak resident memory of the process, in bytes (from /proc).
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time the process has used so far (user + system), from /proc (clock ticks of
    /// 1/100 s, Linux's `USER_HZ`).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()?)).ok()?;
        // Fields after the command name (which may hold spaces) start after its `)`.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }

    /// Stops it with SIGTERM, so it does its final flush like in production.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

async fn spawn_server(bin: &str, db: &str, admin: &str) -> anyhow::Result<(Server, String)> {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", db)
        .env("SIGMA_ADMIN_KEY", admin)
        .env("SIGMA_LOG", "warn")
        .env("SIGMA_MESH_MODE", "off")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("sigma-api listening on ") {
            let url = url.to_string();
            let startup = t0.elapsed();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((Server { child, startup }, url));
        }
    }
    bail!("{bin} exited before listening")
}

/// Opens the database the way sigma-api does (migrating it), for seeding and measuring size.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<sigma_store::Store> {
    sigma_store::Store::open(
        &sigma_store::ConnectSettings {
            url: url.to_string(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(60),
        },
        sigma_store::StoreSettings::default(),
    )
    .await
    .with_context(|| format!("opening {url}"))
}

/// Adds the seeded VPS the database lacks to reach `n`.
async fn seed(url: &str, n: usize) -> anyhow::Result<()> {
    let store = open_store(url).await?;
    let have = store.seeded_bench_fleet().await?;
    if have > n {
        bail!("the database holds {have} seeded VPS, more than --vps {n}");
    }
    if have < n {
        let t0 = Instant::now();
        store.seed_bench_fleet(have, n, 5000).await?;
        let took = t0.elapsed().as_secs_f64();
        println!(
            "seed: added {} VPS ({have} → {n}) in {took:.1}s ({:.0} VPS/s)",
            n - have,
            (n - have) as f64 / took
        );
    } else {
        println!("seed: the database already holds {n} seeded VPS");
    }
    store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.seed {
        if args.spawn.is_none() {
            bail!("--seed writes the database of the sigma-api it starts: give --spawn");
        }
        seed(&args.database_url, args.vps).await?;
    }
    let (mut server, url, admin) = match &args.spawn {
        Some(bin) => {
            let admin = format!("sgm_10adc0de_{}", "b".repeat(48));
            let (server, url) = spawn_server(bin, &args.database_url, &admin).await?;
            (Some(server), url, admin)
        }
        None => (
            None,
            args.api_url.clone(),
            args.admin_key
                .clone()
                .context("--admin-key or SIGMA_ADMIN_KEY")?,
        ),
    };
    let addr = host_of(&url)?;
    let keys = if args.seed {
        Arc::new((0..args.vps).map(bulk::agent_key).collect::<Vec<_>>())
    } else {
        keys_by_enrolling(&args, &addr, &admin).await?
    };
    let result = match args.mode {
        Mode::Targets => scale::targets(&addr, &admin, args.vps, args.requests)
            .await
            .map(|_| ()),
        Mode::Heartbeats => heartbeats(&args, &addr, keys, server.as_ref())
            .await
            .map(|_| ()),
        Mode::Scale => {
            let server = server
                .as_ref()
                .context("--mode scale measures the sigma-api it starts: give --spawn")?;
            scale::run(&args, server, &addr, &admin, keys).await
        }
    };
    if let Some(s) = server.as_mut() {
        s.stop().await;
    }
    result?;
    if args.mode == Mode::Scale {
        let store = open_store(&args.database_url).await?;
        let bytes = store.database_bytes().await?;
        println!(
            "database: vps={} bytes={bytes} ({:.0} bytes/VPS)",
            args.vps,
            bytes as f64 / args.vps.max(1) as f64
        );
        store.close().await;
    }
    Ok(())
}

async fn keys_by_enrolling(
    args: &Args,
    addr: &str,
    admin: &str,
) -> anyhow::Result<Arc<Vec<String>>> {
    let saved: Option<Vec<String>> = args
        .keys_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.lines().map(String::from).collect())
        .filter(|k: &Vec<String>| k.len() == args.vps);
    if let Some(k) = saved {
        println!("reusing {} agent keys", k.len());
        return Ok(Arc::new(k));
    }
    let t0 = Instant::now();
    let keys = enroll(addr, admin, args.vps, args.concurrency.min(32)).await?;
    let enroll_time = t0.elapsed();
    println!(
        "enrolled {} VPS in {:.1}s ({:.0} registers/s)",
        args.vps,
        enroll_time.as_secs_f64(),
        args.vps as f64 / enroll_time.as_secs_f64()
    );
    if let Some(p) = &args.keys_file {
        std::fs::write(p, keys.join("\n"))?;
    }
    Ok(Arc::new(keys))
}

/// The heartbeat phase: a warm-up, then `--duration` measured; prints the rate and latency,
/// and with a spawned sigma-api the CPU it used per 1,000 heartbeats (the load generator shares
/// the machine, so that figure says what the server alone would carry).
async fn heartbeats(
    args: &Args,
    addr: &str,
    keys: Arc<Vec<String>>,
    server: Option<&Server>,
) -> anyhow::Result<f64> {
    drive(addr, keys.clone(), args.concurrency, args.warmup, false).await?;
    let cpu_before = server.and_then(Server::cpu_seconds);
    let phase = drive(addr, keys, args.concurrency, args.duration, true).await?;
    let cpu = cpu_before
        .zip(server.and_then(Server::cpu_seconds))
        .map(|(a, b)| b - a);
    let mut lat = phase.latencies_us;
    lat.sort_unstable();
    let n = lat.len();
    let rate = n as f64 / phase.elapsed.as_secs_f64();
    println!(
        "heartbeats: vps={} concurrency={} requests={} errors={} duration={:.1}s rate={rate:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        args.vps,
        args.concurrency,
        n,
        phase.errors,
        phase.elapsed.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    if let Some(cpu) = cpu {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        println!(
            "heartbeats: vps={} server_cpu={cpu:.1}s per_1000={:.1}ms server_cores_busy={:.2} of {cores} (the rest: the load generator) => {:.0}/s with the server alone on {cores} cores",
            args.vps,
            cpu * 1000.0 / n as f64 * 1000.0,
            cpu / phase.elapsed.as_secs_f64(),
            n as f64 / cpu * cores,
        );
    }
    if phase.errors > 0 {
        bail!("{} heartbeats failed", phase.errors);
    }
    Ok(rate)
}

//! `sigma-loadgen`: enrolls N simulated agents in a sigma-api and drives their heartbeats,
//! printing requests/s and latency percentiles.
//!
//! It can start the sigma-api it measures (`--spawn PATH --database-url URL`), so one command
//! gives a figure for a backend and a fleet size:
//!
//! ```text
//! sigma-loadgen --spawn target/release/sigma-api --database-url sqlite:///tmp/b.db --vps 10000
//! ```
//!
//! `--mode targets` measures the Prometheus service-discovery endpoint instead: after enrolling
//! the fleet it fetches `GET /api/prometheus/targets` back to back and prints its latency.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

fn duration(s: &str) -> Result<Duration, String> {
    sigma_types::validate::duration(s)
}

/// Heartbeat load generator for sigma-api.
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
    /// Simulated agents (VPS) to enroll before the heartbeat phase.
    #[arg(long, default_value_t = 1000)]
    vps: usize,
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
    /// Requests of the targets measurement (`--mode targets`), sent one after another.
    #[arg(long, default_value_t = 200)]
    requests: usize,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Heartbeats from every agent, `--concurrency` connections for `--duration`.
    Heartbeats,
    /// `GET /api/prometheus/targets` for the whole fleet, one request at a time.
    Targets,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    async fn get(&mut self, path: &str, key: &str) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn post(&mut self, path: &str, key: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::post(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn host_of(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    Ok(rest.trim_end_matches('/').to_string())
}

fn hostname(i: usize) -> String {
    format!("vps-{i:07}.bench.sigma")
}

fn heartbeat_body(i: usize, n: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "hostname": hostname(i),
            "ip_addresses": [
                {"ip": format!("198.18.{}.{}", (i >> 8) & 255, i & 255), "label": "public"},
                {"ip": "10.0.0.2", "label": "private"}
            ],
            "system_info": {
                "cpu_cores": 2, "memory_total_bytes": 2147483648u64, "memory_available_bytes": 1073741824u64,
                "disk_total_bytes": 21474836480u64, "disk_used_bytes": 5368709120u64,
                "uptime_seconds": 1000 + n, "load_average": [0.1, 0.2, 0.3], "agent_version": "bench"
            }
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
                    "hostname": hostname(i),
                    "ip_addresses": [
                        {"ip": format!("198.18.{}.{}", (i >> 8) & 255, i & 255), "label": "public"},
                        {"ip": "10.0.0.2", "label": "private"}
                    ]
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

struct Phase {
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

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

async fn spawn_server(
    bin: &str,
    db: &str,
    admin: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
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
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
    }
    bail!("{bin} exited before listening")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut server, url, admin) = match &args.spawn {
        Some(bin) => {
            let admin = format!("sgm_10adc0de_{}", "b".repeat(48));
            let (child, url) = spawn_server(bin, &args.database_url, &admin).await?;
            (Some(child), url, admin)
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
    let saved: Option<Vec<String>> = args
        .keys_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.lines().map(String::from).collect())
        .filter(|k: &Vec<String>| k.len() == args.vps);
    let keys = match saved {
        Some(k) => {
            println!("reusing {} agent keys", k.len());
            Arc::new(k)
        }
        None => {
            let t0 = Instant::now();
            let keys = enroll(&addr, &admin, args.vps, args.concurrency.min(32)).await?;
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
            Arc::new(keys)
        }
    };
    if args.mode == Mode::Targets {
        let result = measure_targets(&addr, &admin, args.vps, args.requests).await;
        stop(server.as_mut()).await;
        return result;
    }
    drive(&addr, keys.clone(), args.concurrency, args.warmup, false).await?;
    let phase = drive(&addr, keys, args.concurrency, args.duration, true).await?;
    let mut lat = phase.latencies_us;
    lat.sort_unstable();
    let n = lat.len();
    println!(
        "heartbeats: vps={} concurrency={} requests={} errors={} duration={:.1}s rate={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        args.vps,
        args.concurrency,
        n,
        phase.errors,
        phase.elapsed.as_secs_f64(),
        n as f64 / phase.elapsed.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    stop(server.as_mut()).await;
    if phase.errors > 0 {
        bail!("{} heartbeats failed", phase.errors);
    }
    Ok(())
}

async fn stop(server: Option<&mut tokio::process::Child>) {
    if let Some(child) = server {
        if let Some(pid) = child.id() {
            // SIGTERM so the server does its final flush like in production.
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
}

/// Fetches the service-discovery document `requests` times on one connection (Prometheus
/// refreshes it from one client) and prints latency percentiles and the document's size.
async fn measure_targets(
    addr: &str,
    admin: &str,
    vps: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let mut c = Conn::open(addr).await?;
    let (st, body) = c.get("/api/prometheus/targets", admin).await?;
    if st != 200 {
        bail!("targets: {st} {}", String::from_utf8_lossy(&body));
    }
    let groups: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    let agents = groups
        .iter()
        .filter(|g| g["labels"]["sigma_target_kind"] == "agent")
        .count();
    if agents < vps {
        bail!("targets lists {agents} agent targets for {vps} enrolled VPS");
    }
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t0 = Instant::now();
        let (st, _) = c.get("/api/prometheus/targets", admin).await?;
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if st != 200 {
            bail!("targets: {st}");
        }
    }
    lat.sort_unstable();
    println!(
        "targets: vps={vps} groups={} bytes={} requests={requests} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        groups.len(),
        body.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    Ok(())
}

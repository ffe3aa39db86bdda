//! The scale measurement (`--mode scale`): at one fleet size, what an operator deciding whether
//! sigma carries their fleet asks, each through the real API and printed as one line:
//!
//! - `startup`: seconds from starting sigma-api to listening (migrations and loading every key
//!   and VPS into memory), and its resident memory then;
//! - `heartbeats`: the steady rate from every agent in turn, p50/p99, and memory after;
//! - `page`: `GET /api/vps` with the filters operators use, p50/p99 and the answer's size;
//! - `targets`: the Prometheus service-discovery document, its first build and cached answers;
//! - `retire`: a full retire of `--retire` VPS (the operator's request, then each agent's
//!   acknowledging heartbeat) and bringing them back (re-commission, heartbeat), so the same
//!   database can be measured again at a larger size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use sigma_store::bulk;

use crate::http::Conn;
use crate::{Args, Server, pct};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn memory_line(server: &Server) -> String {
    match server.memory() {
        Some((rss, hwm)) => format!("rss={:.0}MiB peak={:.0}MiB", mib(rss), mib(hwm)),
        None => "rss=unknown".into(),
    }
}

/// Runs every measurement of the scale mode against `server`.
pub(crate) async fn run(
    args: &Args,
    server: &Server,
    addr: &str,
    admin: &str,
    keys: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    println!(
        "startup: vps={} seconds={:.2} {}",
        args.vps,
        server.startup.as_secs_f64(),
        memory_line(server)
    );
    crate::heartbeats(args, addr, keys.clone(), Some(server)).await?;
    println!(
        "memory after heartbeats: vps={} {}",
        args.vps,
        memory_line(server)
    );
    pages(addr, admin, args.vps, args.page_requests).await?;
    targets(addr, admin, args.vps, args.requests.min(20)).await?;
    retire(addr, admin, &keys, args.retire.min(args.vps)).await?;
    println!(
        "memory at the end: vps={} {}",
        args.vps,
        memory_line(server)
    );
    Ok(())
}

/// Filtered pages of `GET /api/vps`, as the console and sigmactl ask for them.
async fn pages(addr: &str, admin: &str, vps: usize, requests: usize) -> anyhow::Result<()> {
    let last = vps.saturating_sub(100);
    let probe = vps / 2;
    let cases: Vec<(&str, String)> = vec![
        ("first", "/api/vps?limit=100".into()),
        (
            "purpose+country",
            "/api/vps?purpose=vpn-exit&country=NL&limit=100".into(),
        ),
        (
            "status+provider",
            "/api/vps?status=active&provider=bench-provider-07&limit=100".into(),
        ),
        ("tag", "/api/vps?tag=rack-042&limit=100".into()),
        (
            "hostname",
            format!("/api/vps?hostname={}", bulk::hostname(probe)),
        ),
        (
            "search",
            format!("/api/vps?q={}&limit=100", &bulk::hostname(probe)[..11]),
        ),
        ("last", format!("/api/vps?limit=100&offset={last}")),
    ];
    let mut c = Conn::open(addr).await?;
    for (name, path) in cases {
        let mut lat = Vec::with_capacity(requests);
        let mut body = Bytes::new();
        for _ in 0..requests.max(1) {
            let t0 = Instant::now();
            let (st, b) = c.get(&path, admin).await?;
            lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if st != 200 {
                bail!("{path}: {st} {}", String::from_utf8_lossy(&b));
            }
            body = b;
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let (items, total) = (
            v["items"].as_array().map_or(0, Vec::len),
            v["total"].as_i64().unwrap_or(-1),
        );
        if items == 0 {
            bail!("{path} found nothing: the benchmark's query misses the seeded fleet");
        }
        lat.sort_unstable();
        println!(
            "page: vps={vps} case={name} items={items} total={total} bytes={} requests={} p50={:.2}ms p99={:.2}ms",
            body.len(),
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    Ok(())
}

/// How many times `needle` occurs in `hay` (counting targets without parsing a document of
/// hundreds of megabytes).
fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Fetches the service-discovery document `requests` times on one connection (Prometheus
/// refreshes it from one client) and prints the first answer (rendered from the inventory) and
/// the cached answers' latency and the document's size. Fleets over 100,000 VPS are asked for
/// in shards of about 100,000 (`?shards=&shard=0`), as several Prometheus would share them.
pub(crate) async fn targets(
    addr: &str,
    admin: &str,
    vps: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let shards = vps.div_ceil(100_000).max(1);
    let path = if shards == 1 {
        "/api/prometheus/targets".to_string()
    } else {
        format!("/api/prometheus/targets?shards={shards}&shard=0")
    };
    let mut c = Conn::open(addr).await?;
    let t0 = Instant::now();
    let (st, body) = c.get(&path, admin).await?;
    let first = t0.elapsed();
    if st != 200 {
        bail!("targets: {st} {}", String::from_utf8_lossy(&body));
    }
    let groups = occurrences(&body, b"\"sigma_target_kind\"");
    let agents = occurrences(&body, b"\"sigma_target_kind\":\"agent\"");
    // A shard holds about its share; far fewer means VPS are missing.
    if agents * shards * 10 < vps * 9 {
        bail!("targets lists {agents} agent targets in 1 of {shards} shards for {vps} VPS");
    }
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t0 = Instant::now();
        let (st, _) = c.get(&path, admin).await?;
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if st != 200 {
            bail!("targets: {st}");
        }
    }
    lat.sort_unstable();
    println!(
        "targets: vps={vps} shards={shards} groups={groups} bytes={} first={:.2}ms requests={requests} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        body.len(),
        first.as_secs_f64() * 1000.0,
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    Ok(())
}

fn json(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// What one agent's heartbeat answered: its VPS, status and desired version.
async fn beat(
    c: &mut Conn,
    key: &str,
    i: usize,
    applied: Option<i64>,
) -> anyhow::Result<(String, String, i64)> {
    let mut body = serde_json::json!({"hostname": bulk::hostname(i)});
    if let Some(a) = applied {
        body["applied_version"] = a.into();
    }
    let (st, b) = c.post("/api/agent/heartbeat", key, json(body)).await?;
    if st != 200 {
        bail!(
            "heartbeat of {}: {st} {}",
            bulk::hostname(i),
            String::from_utf8_lossy(&b)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&b)?;
    Ok((
        v["vps_id"].as_str().context("vps_id")?.to_string(),
        v["status"].as_str().context("status")?.to_string(),
        v["desired_version"].as_i64().context("desired_version")?,
    ))
}

/// A full retire of the fleet's last `n` VPS from 8 connections: the operator's retire, then
/// the agent's heartbeat acknowledging it (which makes the VPS `retired`); then each is
/// re-commissioned (`provisioning`) and heartbeats back to `active`.
async fn retire(addr: &str, admin: &str, keys: &Arc<Vec<String>>, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let fleet = keys.len();
    let lanes = 8.min(n);
    // Ids first (one heartbeat each, not measured).
    let mut c = Conn::open(addr).await?;
    let mut ids = Vec::with_capacity(n);
    for i in fleet - n..fleet {
        ids.push((i, beat(&mut c, &keys[i], i, None).await?.0));
    }
    let ids = Arc::new(ids);
    let run = |back: bool| {
        let ids = ids.clone();
        let keys = keys.clone();
        let (addr, admin) = (addr.to_string(), admin.to_string());
        async move {
            let t0 = Instant::now();
            let mut tasks = vec![];
            for lane in 0..lanes {
                let (ids, keys, addr, admin) =
                    (ids.clone(), keys.clone(), addr.clone(), admin.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(&addr).await?;
                    let mut op = vec![];
                    let mut ack = vec![];
                    for (i, id) in ids.iter().skip(lane).step_by(lanes) {
                        let t = Instant::now();
                        let (st, b) = if back {
                            c.patch(
                                &format!("/api/vps/{id}"),
                                &admin,
                                json(serde_json::json!({"status": "provisioning"})),
                            )
                            .await?
                        } else {
                            c.post(&format!("/api/vps/{id}/retire"), &admin, Bytes::new())
                                .await?
                        };
                        op.push(t.elapsed().as_micros() as u32);
                        if st != 200 {
                            bail!(
                                "{} {id}: {st} {}",
                                if back { "re-commission" } else { "retire" },
                                String::from_utf8_lossy(&b)
                            );
                        }
                        let v: serde_json::Value = serde_json::from_slice(&b)?;
                        let desired = v["desired_version"].as_i64().context("desired_version")?;
                        let t = Instant::now();
                        let (_, status, _) = beat(&mut c, &keys[*i], *i, Some(desired)).await?;
                        ack.push(t.elapsed().as_micros() as u32);
                        let want = if back { "active" } else { "retired" };
                        if status != want {
                            bail!("{id} is {status} after its agent's heartbeat, not {want}");
                        }
                    }
                    anyhow::Ok((op, ack))
                }));
            }
            let (mut op, mut ack) = (vec![], vec![]);
            for t in tasks {
                let (o, a) = t.await??;
                op.extend(o);
                ack.extend(a);
            }
            op.sort_unstable();
            ack.sort_unstable();
            anyhow::Ok((t0.elapsed(), op, ack))
        }
    };
    let (took, op, ack) = run(false).await?;
    println!(
        "retire: vps={fleet} retired={n} connections={lanes} seconds={:.2} request_p50={:.2}ms request_p99={:.2}ms ack_p50={:.2}ms ack_p99={:.2}ms",
        took.as_secs_f64(),
        pct(&op, 0.5),
        pct(&op, 0.99),
        pct(&ack, 0.5),
        pct(&ack, 0.99)
    );
    let (took, op, ack) = run(true).await?;
    println!(
        "recommission: vps={fleet} count={n} connections={lanes} seconds={:.2} request_p50={:.2}ms request_p99={:.2}ms heartbeat_p50={:.2}ms heartbeat_p99={:.2}ms",
        took.as_secs_f64(),
        pct(&op, 0.5),
        pct(&op, 0.99),
        pct(&ack, 0.5),
        pct(&ack, 0.99)
    );
    // Give the flusher a moment so the next run starts from a written state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

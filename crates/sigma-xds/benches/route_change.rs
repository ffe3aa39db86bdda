//! Route change latency against a real Envoy: from `publish` to the new listener accepting a
//! connection (50 changes, each a new route on a new port replacing the last one), and from
//! `publish` to the first reply from a new backend (50 backend switches of one route).
//! Also the RSS of this process while it runs only the idle xDS server.
//!
//! `cargo bench -p sigma-xds --bench route_change`, Envoy from `SIGMA_ENVOY_BIN` or PATH.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;

const CHANGES: usize = 50;
const DEADLINE: Duration = Duration::from_secs(10);

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "{what}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        ms.len(),
        at(0.50),
        at(0.99),
        ms[ms.len() - 1]
    );
}

/// Milliseconds from `start` until 127.0.0.1:`port` accepts, polled every millisecond.
async fn until_accepts(port: u16, start: Instant) -> f64 {
    loop {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return start.elapsed().as_secs_f64() * 1e3;
        }
        assert!(start.elapsed() < DEADLINE, "port {port} never accepted");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Milliseconds from `start` until a roundtrip through `port` is answered by `tag`.
async fn until_reply(port: u16, tag: &[u8], start: Instant) -> f64 {
    loop {
        if let Ok((reply, _)) = roundtrip(port, b"x").await
            && reply.starts_with(tag)
        {
            return start.elapsed().as_secs_f64() * 1e3;
        }
        assert!(start.elapsed() < DEADLINE, "port {port} never answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("xDS server idle after startup: VmRSS {} KiB", vm_rss_kib());
        let Some(bin) = envoy_bin() else {
            println!("no Envoy: route change latency not measured");
            return;
        };
        let envoy = Envoy::start(&bin, xds.addr);
        let (a, b) = (Echo::start("A:").await, Echo::start("B:").await);
        let h = &xds.handle;
        let mut version = 1;
        let port = free_port();
        h.publish(version, vec![route("r0", port, a.addr)]);
        until_accepts(port, Instant::now()).await;

        let mut listener_ms = Vec::new();
        let mut ack_ms = Vec::new();
        for i in 1..=CHANGES {
            version += 1;
            let port = free_port();
            let start = Instant::now();
            h.publish(version, vec![route(&format!("r{i}"), port, a.addr)]);
            listener_ms.push(until_accepts(port, start).await);
            while h.accepted_version() != Some(version) {
                assert!(start.elapsed() < DEADLINE, "version {version} never ACKed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ack_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }

        let mut backend_ms = Vec::new();
        let port = free_port();
        version += 1;
        h.publish(version, vec![route("switch", port, a.addr)]);
        until_reply(port, b"A:", Instant::now()).await;
        for i in 0..CHANGES {
            version += 1;
            let (to, tag) = if i % 2 == 0 {
                (b.addr, b"B:")
            } else {
                (a.addr, b"A:")
            };
            let start = Instant::now();
            h.publish(version, vec![route("switch", port, to)]);
            backend_ms.push(until_reply(port, tag, start).await);
        }

        report("publish -> new listener accepts", listener_ms);
        report("publish -> Envoy ACKed CDS+LDS", ack_ms);
        report("publish -> new backend answers", backend_ms);
        let s = h.stats();
        println!(
            "pushes={} acks={} nacks={} stale={}; VmRSS now {} KiB (server with one Envoy)",
            s.pushes,
            s.acks,
            s.nacks,
            s.stale,
            vm_rss_kib()
        );
        assert_eq!(s.nacks, 0, "Envoy log:\n{}", envoy.log());
        drop(envoy);
        xds.stop().await;
    });
}

//! Bundle issuance latency: `GET /api/agent/istio-bootstrap` through the real sigma-api
//! binary (SQLite) in `--mesh kubernetes` mode, with the Kubernetes API server in the path —
//! here the stand-in of `sigma_testkit::fake_kube` over real HTTP on loopback, with a
//! configurable delay per API call to stand for a real API server's. The figure against a real
//! kube-apiserver comes from the end-to-end harness.
//!
//! ```sh
//! cargo bench -p sigma-api --bench bootstrap
//! BOOTSTRAP_BENCH_REQUESTS=5000 BOOTSTRAP_BENCH_CONCURRENCY=32 cargo bench -p sigma-api --bench bootstrap
//! ```
//!
//! Each scenario enrolls agents, then every agent fetches its own bundle repeatedly from
//! `concurrency` tasks; it prints the rate, p50/p90/p99/max latency and the API server calls
//! per bundle (showing what the cache of the root certificate, mesh config and gateway address
//! saves: with it, one TokenRequest per bundle).

use std::time::{Duration, Instant};

use serde_json::json;
use sigma_testkit::fake_kube::{Cluster, FakeKube};
use sigma_testkit::{ADMIN_KEY, Backend, SigmaApi, TestDb};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn scenario(
    name: &str,
    api_latency: Duration,
    cache: &str,
    agents: usize,
    requests: usize,
    concurrency: usize,
) {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let kube = FakeKube::start(&db.dir, Cluster::default().discarding_writes()).await;
    let mut s = SigmaApi::builder()
        .store(&db)
        .mesh(kube.mesh())
        .env("SIGMA_ISTIO_BOOTSTRAP_CACHE", cache)
        .env("SIGMA_LOG", "error")
        .start();
    let (st, v) = s
        .patch(
            "/api/purposes/xrayr",
            ADMIN_KEY,
            json!({"mesh": {"enabled": true,
                "ports": [{"name": "vless", "number": 443, "protocol": "TCP"}],
                "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let token = s
        .token(json!({"purpose": "xrayr", "max_uses": agents}))
        .await;
    let mut keys = Vec::with_capacity(agents);
    for i in 0..agents {
        let host = format!("edge-{i}.bench.example.com");
        let ip = format!("203.0.{}.{}", 113 + i / 250, 1 + i % 250);
        let (st, v) = s
            .request(
                "POST",
                "/api/agent/register",
                Some(&token),
                Some(json!({"hostname": host, "ip_addresses": [{"ip": ip, "label": "public"}]})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        keys.push((host, v["agent_key"].as_str().unwrap().to_string()));
    }
    // Warm-up (connections, caches), then the measured run.
    for (host, key) in keys.iter().take(4) {
        let (st, v) = s
            .get(&format!("/api/agent/istio-bootstrap?hostname={host}"), key)
            .await;
        assert_eq!(st, 200, "{v}");
    }
    kube.edit(|c| {
        c.latency = api_latency;
        c.calls.clear();
    });

    let keys = std::sync::Arc::new(keys);
    let client = s.http.clone();
    let base = s.url.clone();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let keys = keys.clone();
        let client = client.clone();
        let base = base.clone();
        let n = requests / concurrency + usize::from(t < requests % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let (host, key) = &keys[(t + i * concurrency) % keys.len()];
                let at = Instant::now();
                let resp = client
                    .get(format!("{base}/api/agent/istio-bootstrap?hostname={host}"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                lat.push(at.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    // Only the bundle's calls (core API); the reconciler's Istio calls run alongside.
    let calls = kube
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/api/v1/"))
        .count();
    println!(
        "{name:<44} {:>6} bundles {:>8.0}/s  p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}  API calls/bundle {:.2}",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.90)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap()),
        calls as f64 / all.len() as f64,
    );
    s.stop();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --benches` runs benches with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let requests = env_or("BOOTSTRAP_BENCH_REQUESTS", if quick { 40 } else { 2000 });
    let concurrency = env_or("BOOTSTRAP_BENCH_CONCURRENCY", if quick { 4 } else { 16 }).max(1);
    let agents = env_or("BOOTSTRAP_BENCH_AGENTS", if quick { 8 } else { 100 }).max(1);
    println!(
        "bundle issuance through sigma-api (SQLite) and a stand-in API server on loopback; {agents} agents, {concurrency} concurrent clients"
    );
    for (name, latency, cache) in [
        ("API 0 ms/call, cache 10s (default)", 0, "10s"),
        ("API 0 ms/call, no cache (4 calls/bundle)", 0, "0"),
        ("API 2 ms/call, cache 10s (default)", 2, "10s"),
        ("API 2 ms/call, no cache (4 calls/bundle)", 2, "0"),
    ] {
        scenario(
            name,
            Duration::from_millis(latency),
            cache,
            agents,
            requests,
            concurrency,
        )
        .await;
    }
}

//! Convergence benchmark of the mesh reconciler against an in-memory API server that answers
//! every call after a fixed latency. Prints figures; asserts nothing about time.
//!
//! ```sh
//! cargo bench -p sigma-reconciler --bench converge
//! SIGMA_BENCH_LATENCY_MS=10 SIGMA_BENCH_QPS=50 cargo bench -p sigma-reconciler --bench converge
//! ```
//!
//! 1. 1,000 VPS registered one after another while the reconciler runs: time until every
//!    WorkloadEntry is applied (from the first registration), and the calls made.
//! 2. A full first pass over 10,000 VPS (`SIGMA_BENCH_VPS`) into an empty cluster: objects
//!    written by kind (a WorkloadGroup and a WorkloadEntry per VPS, plus the purpose's
//!    objects) and its time; then a resync of the unchanged fleet: calls by verb (no writes
//!    expected) and its time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sigma_reconciler::{Cluster, ClusterSettings, Reconciler, ReconcilerSettings};
use sigma_store::Store;
use sigma_testkit::TestDb;
use sigma_testkit::db::open_store;
use sigma_testkit::fake_kube::{self, FakeKube};
use sigma_types::{Normalize, PurposePatch, VpsCreate};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn store() -> Store {
    let store = open_store(&TestDb::sqlite().await).await;
    let mesh = json!({
        "enabled": true,
        "ports": [{"name": "vless", "number": 443, "protocol": "TCP"},
                  {"name": "metrics", "number": 9100, "protocol": "HTTP"}],
        "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]
    });
    store
        .update_purpose(
            "bench",
            "xrayr",
            &PurposePatch {
                display_name: None,
                mesh: Some(Some(mesh)),
            },
        )
        .await
        .unwrap();
    store
}

fn vps(i: usize) -> VpsCreate {
    let country = ["DE", "FR", "US", "NO"][i % 4];
    let c: VpsCreate = serde_json::from_value(json!({
        "hostname": format!("edge-{i}.example.net"),
        "purpose": "xrayr",
        "status": "active",
        "country": country,
        "ip_addresses": [{"ip": format!("100.{}.{}.{}", 128 + (i >> 16) % 64, (i >> 8) % 256, i % 256), "label": "public"},
                          {"ip": format!("203.0.{}.{}", (i >> 8) % 256, i % 256), "label": "public"}],
    }))
    .unwrap();
    c.normalize().unwrap()
}

fn reconciler(store: &Store, fake: &FakeKube, qps: f64, burst: u32) -> Reconciler {
    let cluster = Arc::new(Cluster::new(
        fake.client(),
        ClusterSettings {
            qps,
            burst,
            ..ClusterSettings::default()
        },
    ));
    Reconciler::new(
        store.clone(),
        cluster,
        ReconcilerSettings {
            resync: Duration::from_secs(3600),
            ..ReconcilerSettings::default()
        },
    )
}

async fn converge_new(latency: Duration, qps: u64, burst: u32) {
    const N: usize = 1_000;
    let store = store().await;
    let fake = FakeKube::new(fake_kube::Cluster::default().with_latency(latency));
    let rec = reconciler(&store, &fake, qps as f64, burst);
    let (_tx, leader) = tokio::sync::watch::channel(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rec.run(leader, stop.clone()));
    // Start from a converged, empty fleet (the purpose's Sidecar is in the cluster).
    while fake.count("sidecars") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fake.clear_calls();

    let started = Instant::now();
    for i in 0..N {
        store.create_vps("bench", &vps(i)).await.unwrap();
    }
    let registered = started.elapsed();
    while fake.count("workloadentries") < N {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let converged = started.elapsed();
    let (get, patch, delete) = fake.counts();
    println!(
        "converge: {N} VPS registered in {:.2} s; every WorkloadEntry applied {:.2} s after the first registration \
         (latency {} ms/call, qps {qps}, burst {burst}); calls: GET {get}, PATCH {patch}, DELETE {delete}",
        registered.as_secs_f64(),
        converged.as_secs_f64(),
        latency.as_millis(),
    );
    stop.cancel();
    task.await.unwrap();
}

async fn resync_unchanged(latency: Duration, n: usize) {
    let store = store().await;
    let started = Instant::now();
    for i in 0..n {
        store.create_vps("bench", &vps(i)).await.unwrap();
    }
    println!(
        "resync: {n} VPS stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let fake = FakeKube::new(fake_kube::Cluster::default().with_latency(latency));
    // Fill the cluster without rate limit (the first pass), then measure one pass over the
    // unchanged fleet.
    let rec = reconciler(&store, &fake, 1e6, 1_000_000);
    let started = Instant::now();
    let fill = rec.pass().await.unwrap();
    let first = started.elapsed();
    // A group and an entry per VPS, and the purpose's ServiceEntry, Sidecar and rule.
    assert_eq!(fill.applied, 2 * n + 3, "{fill:?}");
    println!(
        "first pass: {n} VPS, {} objects written (WorkloadGroup {}, WorkloadEntry {}, others {}) in {:.1} s \
         (latency {} ms/call, no rate limit, concurrency {})",
        fill.applied,
        fake.count("workloadgroups"),
        fake.count("workloadentries"),
        fill.applied - fake.count("workloadgroups") - fake.count("workloadentries"),
        first.as_secs_f64(),
        latency.as_millis(),
        ReconcilerSettings::default().concurrency,
    );
    let rec = reconciler(&store, &fake, 50.0, 100);
    fake.clear_calls();
    let started = Instant::now();
    let report = rec.pass().await.unwrap();
    let elapsed = started.elapsed();
    let (get, patch, delete) = fake.counts();
    println!(
        "resync: {n} unchanged VPS ({} objects) in {:.0} ms (latency {} ms/call); calls by verb: GET {get} (list pages), \
         PATCH {patch}, DELETE {delete}; applied {}, deleted {}, statuses written {}",
        report.desired,
        elapsed.as_secs_f64() * 1000.0,
        latency.as_millis(),
        report.applied,
        report.deleted,
        report.statuses_written,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: run either way.
    let latency = Duration::from_millis(env("SIGMA_BENCH_LATENCY_MS", 5));
    let qps = env("SIGMA_BENCH_QPS", 50);
    let burst = env("SIGMA_BENCH_BURST", 100) as u32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        converge_new(latency, qps, burst).await;
        converge_new(latency, 500, 500).await;
        resync_unchanged(latency, env("SIGMA_BENCH_VPS", 10_000) as usize).await;
    });
}

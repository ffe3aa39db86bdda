//! Server time and size of the console's VPS list and VPS detail pages with a large fleet in
//! SQLite, measured in-process through the console's router (no network, no browser: the
//! figure is what sigma-api spends per page).
//!
//! ```sh
//! cargo bench -p sigma-web --bench pages                      # 100,000 VPS
//! WEB_BENCH_VPS=10000 WEB_BENCH_REQUESTS=200 cargo bench -p sigma-web --bench pages
//! ```
//!
//! Prints p50/p99/max server time and bytes per page for: the first list page, a deep page
//! (offset near the end), a filtered list (country + tag), a text search, deep pages sorted by
//! last heartbeat (descending) and by status, the first page sorted by country, the mesh-state
//! filter (an empty match), a VPS detail and the overview.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use sigma_store::sessions::SessionLimits;
use sigma_testkit::db::open_store;
use sigma_testkit::{ADMIN_KEY, TestDb};
use sigma_types::{IpAddress, VpsCreate};
use tower::ServiceExt;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("WEB_BENCH_VPS", 100_000);
    let requests = env_or("WEB_BENCH_REQUESTS", 300);
    let db = TestDb::sqlite().await;
    let store = open_store(&db).await;

    let started = Instant::now();
    let countries = ["DE", "FI", "NL", "US", "FR", "SE", "PL", "JP"];
    let mut some_id = None;
    for i in 0..n {
        let v = store
            .create_vps(
                "bench",
                &VpsCreate {
                    hostname: format!("node-{i:06}.fleet.example.net"),
                    alias: None,
                    provider: None,
                    ip_addresses: vec![IpAddress {
                        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                        label: "public".into(),
                    }],
                    country: Some(countries[i % countries.len()].into()),
                    city: None,
                    purpose: "xrayr".into(),
                    status: None,
                    tags: if i % 10 == 0 {
                        vec!["edge".into()]
                    } else {
                        vec![]
                    },
                    monitoring: true,
                    node_exporter_port: 9100,
                    mesh_opt_out: false,
                },
            )
            .await
            .expect("create VPS");
        if i == n / 2 {
            some_id = Some(v.id);
        }
    }
    println!(
        "inserted {n} VPS in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let session = store
        .create_session(ADMIN_KEY, SessionLimits::default())
        .await
        .expect("session");
    let cookie = format!("sigma_session={}", session.id);
    let app = sigma_web::router(store.clone(), sigma_web::WebSettings::default());
    let deep = (n.saturating_sub(50) / 50) + 1;
    let detail = format!("/vps/{}", some_id.expect("a VPS id"));
    let pages = [
        ("list, first page", "/vps".to_string()),
        ("list, last page", format!("/vps?page={deep}")),
        ("list, country+tag", "/vps?country=DE&tag=edge".to_string()),
        ("list, search", "/vps?q=node-0421".to_string()),
        (
            "list, by heartbeat",
            format!("/vps?sort=heartbeat&dir=desc&page={deep}"),
        ),
        ("list, by country", "/vps?sort=country&dir=asc".to_string()),
        ("list, by status", format!("/vps?sort=status&page={deep}")),
        ("list, mesh=error", "/vps?mesh=error".to_string()),
        ("detail", detail),
        ("overview", "/".to_string()),
    ];
    println!("{requests} requests per page, one at a time; server time in ms");
    for (name, path) in pages {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let req = Request::get(&path)
                .header("cookie", &cookie)
                .header("host", "bench.local")
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            times.push(t.elapsed());
            assert!(status.is_success(), "{path}: {status}");
            bytes = body.len();
        }
        times.sort();
        println!(
            "{name:<20} p50 {:>7.2}  p99 {:>7.2}  max {:>7.2}  bytes {bytes}",
            pct(&times, 0.5),
            pct(&times, 0.99),
            pct(&times, 1.0),
        );
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&db.dir);
}

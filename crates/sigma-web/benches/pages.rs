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
//! filter (an empty match), a two-character search (below the trigram index: a scan), the
//! mesh attention filters (empty until the heartbeats below), a VPS detail and the overview.
//!
//! Then the heartbeat write cost: one heartbeat from every VPS (addresses unchanged, system
//! info and a mesh-mode agent state) queued and written by one `Store::flush`, twice: the first
//! flush writes new mesh facts, the second the same ones again (the steady state).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use sigma_store::Principal;
use sigma_store::sessions::SessionLimits;
use sigma_testkit::db::open_store;
use sigma_testkit::{ADMIN_KEY, TestDb};
use sigma_types::{HeartbeatRequest, IpAddress, Role, VpsCreate};
use tower::ServiceExt;
use uuid::Uuid;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A mesh-mode heartbeat: one VPS in 50 has a proxy that is not ready, certificates expire
/// spread over a day from `now` (the same for every round: an agent's expiry times change only
/// when it renews).
fn beat(
    i: usize,
    hostname: &str,
    ips: &[IpAddress],
    now: time::OffsetDateTime,
) -> HeartbeatRequest {
    serde_json::from_value(serde_json::json!({
        "hostname": hostname,
        "ip_addresses": ips,
        "system_info": {"agent_version": "bench", "uptime_seconds": 1000},
        "agent_state": {
            "mode": "mesh",
            "mesh_state": {
                "state": if i.is_multiple_of(50) { "degraded" } else { "ready" },
                "token_expires_at": (now + time::Duration::hours(24 * 7))
                    .format(&time::format_description::well_known::Rfc3339).unwrap(),
                "cert_expires_at": (now + time::Duration::minutes((i % 1440) as i64))
                    .format(&time::format_description::well_known::Rfc3339).unwrap(),
                "restarts": 0
            }
        }
    }))
    .expect("heartbeat body")
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
    let mut ids = Vec::with_capacity(n);
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
        ids.push((v.id, v.hostname.clone(), v.ip_addresses.clone()));
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
        ("list, search 2 chars", "/vps?q=42".to_string()),
        ("list, cert expiring", "/vps?attention=cert".to_string()),
        ("list, proxy not ready", "/vps?attention=proxy".to_string()),
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
    let now = time::OffsetDateTime::now_utc();
    for round in ["first", "steady"] {
        let queued = Instant::now();
        for (i, (id, hostname, ips)) in ids.iter().enumerate() {
            let p = Principal {
                key_id: Uuid::nil(),
                prefix: "bench".into(),
                role: Role::Agent,
                vps_id: Some(*id),
            };
            store
                .heartbeat(&p, &beat(i, hostname, ips, now))
                .await
                .expect("heartbeat");
        }
        let queued = queued.elapsed();
        let t = Instant::now();
        let written = store.flush().await.expect("flush");
        println!(
            "heartbeat flush ({round}): {written} heartbeats written in {:.0} ms (queued in {:.0} ms)",
            t.elapsed().as_secs_f64() * 1000.0,
            queued.as_secs_f64() * 1000.0,
        );
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&db.dir);
}

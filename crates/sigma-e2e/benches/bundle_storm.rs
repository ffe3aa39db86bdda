//! A bundle storm: 10,000 VPS fetching their Istio bootstrap bundles at the same moment (a
//! fleet's agents restarted together, or all coming back after sigma-api was away), against the
//! real kube-apiserver and etcd of the end-to-end harness.
//!
//! Each simulated agent follows the agent's own schedule: it asks at once, and after a refusal
//! waits `sigma_agent::mesh::retry_delay` (the agent's jittered backoff, 1 s doubling to 60 s,
//! never sooner than sigma-api's Retry-After) — the function the agent's mesh worker calls.
//! sigma-api limits the TokenRequests bundles make (`--istio-token-qps`, `--istio-token-burst`);
//! the API server's own request counter (`apiserver_request_total` for POST
//! serviceaccounts/token) is read every second, so the rate it saw is measured where it lands.
//!
//! ```text
//! cargo bench -p sigma-e2e --bench bundle_storm            # STORM_VPS=10000 STORM_QPS=100
//! ```
//!
//! Shortcut: no istiod (the API server alone); the root-certificate ConfigMap istiod would
//! write is made from the harness's CA certificate, and the gateway address is given.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use sigma_e2e::cluster::repo_root;
use sigma_e2e::{ControlPlane, wait_for, work_dir};
use sigma_store::bulk;
use sigma_testkit::{ADMIN_KEY, SigmaApi};
use sigma_types::backoff::Backoff;

fn env_or(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// TokenRequests the API server has answered so far (its own counter).
async fn token_requests(admin: &kube::Client) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin.request_text(req).await.expect("API server metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"serviceaccounts\"")
                && l.contains("subresource=\"token\"")
                && l.contains("verb=\"POST\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What one simulated agent went through.
struct Outcome {
    /// Seconds from the storm's start of each request it sent, and its status.
    attempts: Vec<(f64, u16)>,
    /// When it had its bundle.
    done: Option<f64>,
}

async fn agent(
    http: reqwest::Client,
    url: String,
    key: String,
    start: Instant,
    deadline: Instant,
) -> Outcome {
    // The agent's mesh worker: one backoff, reset on success, jittered.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut attempts = Vec::new();
    loop {
        let sent = start.elapsed().as_secs_f64();
        let r = http.get(&url).bearer_auth(&key).send().await;
        let (status, retry_after) = match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Read the body, as the agent does.
                let _ = resp.bytes().await;
                (status, retry_after)
            }
            Err(_) => (0, None),
        };
        attempts.push((sent, status));
        if status == 200 {
            return Outcome {
                attempts,
                done: Some(start.elapsed().as_secs_f64()),
            };
        }
        let wait = sigma_agent::mesh::retry_delay(&mut backoff, retry_after);
        if Instant::now() + wait > deadline {
            return Outcome {
                attempts,
                done: None,
            };
        }
        tokio::time::sleep(wait).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("STORM_VPS", 10_000) as usize;
    let qps = env_or("STORM_QPS", 100);
    let burst = env_or("STORM_BURST", 200);
    let dir = work_dir("bench-bundle-storm");
    let cp = ControlPlane::up(&dir.join("cp"), &[("E2E_ISTIOD", "0")]).await;
    for f in [
        "k8s/base/rbac.yaml",
        "k8s/base/rbac-bootstrap.yaml",
        "k8s/base/serviceaccount-vm.yaml",
    ] {
        cp.apply(&repo_root().join(f));
    }
    // What istiod would write: the mesh's root certificate for workloads in `sigma`.
    let ca = std::fs::read_to_string(cp.dir.join("pki/ca.crt")).expect("harness CA");
    let cms: Api<ConfigMap> = Api::namespaced(cp.admin.clone(), "sigma");
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "sigma"},
        "data": {"root-cert.pem": ca}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("root cert ConfigMap");
    let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;

    // The fleet, written by the benchmark seeding path into the sigma-api's database.
    let db_dir = dir.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", db_dir.join("sigma.db").display());
    {
        let store = sigma_store::Store::open(
            &sigma_store::ConnectSettings {
                url: url.clone(),
                max_connections: 4,
                acquire_timeout: Duration::from_secs(60),
            },
            sigma_store::StoreSettings::default(),
        )
        .await
        .expect("open the database");
        let t = Instant::now();
        store.seed_bench_fleet(0, n, 5000).await.expect("seed");
        println!("seeded {n} VPS in {:.1}s", t.elapsed().as_secs_f64());
        store.close().await;
    }
    let api = SigmaApi::builder()
        .database(url, db_dir.clone())
        .env("SIGMA_MESH_MODE", "kubernetes")
        .env("SIGMA_KUBECONFIG", kubeconfig.to_str().unwrap())
        .env("SIGMA_MESH_LEADER_ELECTION", "none")
        .env("SIGMA_EASTWEST_ADDRESS", "192.0.2.1")
        // The reconciler's own calls are limited apart; here it converges quickly first.
        .env("SIGMA_MESH_API_QPS", "2000")
        .env("SIGMA_MESH_API_BURST", "2000")
        .env("SIGMA_ISTIO_TOKEN_QPS", qps.to_string())
        .env("SIGMA_ISTIO_TOKEN_BURST", burst.to_string())
        .env("SIGMA_LOG", "warn")
        .start();
    for purpose in ["xrayr", "vpn-exit", "vpn-relay", "vpn-entry", "monitor"] {
        let (st, v) = api
            .patch(
                &format!("/api/purposes/{purpose}"),
                ADMIN_KEY,
                json!({"mesh": {"enabled": true}}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    // One bundle first: the cluster pieces are in place and the caches warm.
    let probe = format!(
        "{}/api/agent/istio-bootstrap?hostname={}",
        api.url,
        bulk::hostname(0)
    );
    wait_for("a first bundle", Duration::from_secs(120), || async {
        let r = api
            .http
            .get(&probe)
            .bearer_auth(bulk::agent_key(0))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // Let the token bucket fill again after the probe.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The API server's counter, every second, while the storm runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, admin) = (sampling.clone(), cp.admin.clone());
        tokio::spawn(async move {
            let mut samples = vec![(0.0, token_requests(&admin).await)];
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                samples.push((start.elapsed().as_secs_f64(), token_requests(&admin).await));
            }
            samples
        })
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(env_or("STORM_DEADLINE_SECONDS", 1200));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = format!(
                "{}/api/agent/istio-bootstrap?hostname={}",
                api.url,
                bulk::hostname(i)
            );
            tokio::spawn(agent(
                http.clone(),
                url,
                bulk::agent_key(i),
                start,
                deadline,
            ))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let total = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    // The arrival curve (the agents' own schedule) and what the API server saw, per 5 s.
    let mut buckets: BTreeMap<u64, (usize, usize, usize, usize)> = BTreeMap::new();
    for o in &outcomes {
        for &(t, status) in &o.attempts {
            let b = buckets.entry(t as u64 / 5).or_default();
            b.0 += 1;
            match status {
                200 => b.1 += 1,
                503 => b.2 += 1,
                _ => b.3 += 1,
            }
        }
    }
    let per_second: Vec<(f64, u64)> = samples
        .windows(2)
        .map(|w| (w[1].0, w[1].1.saturating_sub(w[0].1)))
        .collect();
    println!("bundle storm: vps={n} token_qps={qps} token_burst={burst}");
    println!("  t(s)   requests   bundles   busy(503)   other   token_requests_at_apiserver");
    for (b, (req, ok, busy, other)) in &buckets {
        let from = (*b * 5) as f64;
        let tokens: u64 = per_second
            .iter()
            .filter(|(t, _)| *t > from && *t <= from + 5.0)
            .map(|(_, d)| d)
            .sum();
        println!(
            "  {:>4}   {req:>8}   {ok:>7}   {busy:>9}   {other:>5}   {tokens:>8}",
            b * 5
        );
    }
    // The limit over every window of 10 s or more between samples: at most the burst plus the
    // rate times the window's length, plus a second's worth for the API server's own latency
    // (it counts a TokenRequest when it answers, and answers bunch up when it slows down). The
    // sampler's ticks are not exactly a second apart on a busy machine, so single intervals
    // are not compared.
    let mut worst = (0.0_f64, 0u64, 0.0_f64);
    for (i, a) in samples.iter().enumerate() {
        if let Some(b) = samples[i..].iter().find(|b| b.0 - a.0 >= 10.0) {
            let (len, count) = (b.0 - a.0, b.1 - a.1);
            let allowed = burst as f64 + qps as f64 * (len + 1.0);
            if count as f64 / allowed > worst.2 {
                worst = (len, count, count as f64 / allowed);
            }
        }
    }
    let attempts: Vec<usize> = outcomes.iter().map(|o| o.attempts.len()).collect();
    let served = outcomes.iter().filter(|o| o.done.is_some()).count();
    let mut done: Vec<f64> = outcomes.iter().filter_map(|o| o.done).collect();
    done.sort_by(f64::total_cmp);
    let at = |p: f64| done[((done.len() as f64 - 1.0) * p).round() as usize];
    let requests: usize = attempts.iter().sum();
    let tokens_total = samples.last().unwrap().1 - samples[0].1;
    println!(
        "bundle storm: vps={n} served={served} gave_up={} seconds={total:.1} bundle_p50={:.1}s bundle_p99={:.1}s bundle_max={:.1}s requests={requests} max_attempts_per_agent={} token_requests={tokens_total} average_token_requests_per_second={:.1} busiest_window={:.1}s:{} of {:.0} allowed (limit {qps}/s, burst {burst})",
        n - served,
        at(0.5),
        at(0.99),
        at(1.0),
        attempts.iter().max().unwrap(),
        tokens_total as f64 / total,
        worst.0,
        worst.1,
        burst as f64 + qps as f64 * (worst.0 + 1.0),
    );
    assert!(
        worst.2 <= 1.0,
        "the API server saw more TokenRequests than the limit allows"
    );
    assert_eq!(served, n, "every agent got its bundle");
}

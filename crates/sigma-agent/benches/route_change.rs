//! Route change in sigma-api → new listener accepting connections in Envoy, through the whole
//! classic-mode chain (sigma-api long poll → sigma-agent → xDS → Envoy), over 50 changes.
//! Prints p50/p99/max. Needs `SIGMA_ENVOY_BIN`; builds and runs the release binaries.
//!
//! ```text
//! SIGMA_ENVOY_BIN=… cargo bench -p sigma-agent --bench route_change
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use sigma_testkit::classic::ClassicRelay;
use sigma_testkit::{SigmaApi, free_port};

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

#[tokio::main]
async fn main() {
    let Ok(envoy) = std::env::var("SIGMA_ENVOY_BIN") else {
        eprintln!("SIGMA_ENVOY_BIN unset; nothing measured");
        return;
    };
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "vpn-relay"})).await;
    let agent_bin = sigma_testkit::bin("sigma-agent");
    let _relay = ClassicRelay::start(&agent_bin, &envoy, &api.url, &token, "bench-relay", "30s");
    let vps = SigmaApi::eventually(Duration::from_secs(30), || async {
        api.vps("bench-relay")
            .await
            .filter(|v| v["status"] == "active")
    })
    .await
    .expect("agent registered");
    let id = vps["id"].as_str().unwrap().to_string();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();

    let mut samples = Vec::new();
    for i in 0..50 {
        let port = free_port();
        let t0 = Instant::now();
        let body = json!({"prune": true, "routes": [{"name": format!("r{i}"), "listen_port": port, "backend_host": "127.0.0.1", "backend_port": backend_port}]});
        let (st, _) = api
            .call("PUT", &format!("/api/vps/{id}/envoy-routes"), Some(body))
            .await;
        assert_eq!(st, 200);
        while !accepts(port) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "listener {port} never came up"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "route change in sigma-api -> Envoy listener accepting: n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        samples.len(),
        ms(p(0.5)),
        ms(p(0.99)),
        ms(samples[samples.len() - 1])
    );
}

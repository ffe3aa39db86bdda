//! Real Prometheus end-to-end: Prometheus discovers the fleet through sigma-api's
//! `http_sd_configs` endpoint and scrapes sigma-agents running on simulated VPS hosts (network
//! namespaces), and a retired VPS's targets go away.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_e2e::{Netns, Proc, Prometheus, wait_for, work_dir};
use sigma_testkit::{ADMIN_KEY, ApiOptions, SigmaApi};

fn target_of<'a>(targets: &'a [Value], hostname: &str, kind: &str) -> Option<&'a Value> {
    targets
        .iter()
        .find(|t| t["labels"]["hostname"] == hostname && t["labels"]["job"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_and_scrapes_the_fleet_through_sigma_api() {
    if !sigma_e2e::can_run(&["ip", "prometheus", "promtool"]) {
        return;
    }
    let dir = work_dir("prometheus");
    let api = SigmaApi::start_with(ApiOptions::default().listen_ip("0.0.0.0"));
    let (st, v) = api
        .call("POST", "/api/providers", Some(json!({"name": "hetzner"})))
        .await;
    assert_eq!(st, 201, "{v}");
    let token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 10, "ttl_seconds": 3600}))
        .await;

    let hosts: Vec<(Netns, String)> = (1..=2)
        .map(|i| (Netns::create(i), format!("vps-{i}.e2e.sigma")))
        .collect();
    let mut agents = Vec::new();
    for (ns, hostname) in &hosts {
        let state = dir.join(hostname);
        std::fs::create_dir_all(&state).unwrap();
        let mut cmd = ns.command(sigma_testkit::bin("sigma-agent"));
        cmd.env(
            "SIGMA_API_URL",
            format!("http://{}:{}", ns.host_ip, api.port),
        )
        .env("SIGMA_ENROLLMENT_TOKEN", &token)
        .env("AGENT_STATE_DIR", &state)
        .env("AGENT_HOSTNAME", hostname)
        .env("AGENT_INTERVAL", "1s")
        .env("AGENT_METRICS_LISTEN", format!("{}:9102", ns.ip))
        .env("AGENT_XDS_LISTEN", "127.0.0.1:18000")
        .env("SIGMA_LOG", "info");
        agents.push(Proc::spawn(&format!("agent-{hostname}"), cmd, &dir));
    }
    // Registered and reporting the namespace's address (its only one, so the one listed).
    for (ns, hostname) in &hosts {
        wait_for(
            "the VPS registered with its address",
            Duration::from_secs(30),
            || async {
                api.vps(hostname).await.filter(|v| {
                    v["ip_addresses"]
                        .to_string()
                        .contains(&format!("\"{}\"", ns.ip))
                })
            },
        )
        .await;
    }

    let prom = Prometheus::start(
        &dir,
        &format!("{}/api/prometheus/targets", api.url),
        ADMIN_KEY,
    )
    .await;

    // Discovered with sigma's labels, and scraped: `up == 1` for each agent target.
    for (ns, hostname) in &hosts {
        let deadline = Instant::now() + Duration::from_secs(60);
        let t = loop {
            let all = prom.active_targets().await;
            if let Some(t) = target_of(&all, hostname, "agent").filter(|t| t["health"] == "up") {
                break t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no up agent target for {hostname}; Prometheus has {all:#?}\n{}",
                prom.proc.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            t["scrapeUrl"],
            format!("http://{}:9102/metrics", ns.ip),
            "{t}"
        );
        let l = &t["labels"];
        assert_eq!(l["provider"], "hetzner", "{t}");
        assert_eq!(l["country"], "DE", "{t}");
        assert_eq!(l["purpose"], "xrayr", "{t}");
        assert!(l["vps_id"].as_str().is_some_and(|s| s.len() == 36), "{t}");
        assert_eq!(l["instance"], format!("{}:9102", ns.ip), "{t}");
    }
    let up = wait_for(
        "up == 1 for both agents",
        Duration::from_secs(30),
        || async {
            let r = prom.query("up{job=\"agent\"} == 1").await;
            (r.len() == 2).then_some(r)
        },
    )
    .await;
    assert!(
        up.iter()
            .all(|s| s["metric"]["hostname"].as_str().is_some()),
        "{up:?}"
    );
    // The agents' own series arrive with the discovery labels attached.
    let series = wait_for(
        "agent metrics in Prometheus",
        Duration::from_secs(30),
        || async {
            let r = prom
                .query("count by (hostname) ({job=\"agent\", __name__=~\"sigma_agent_.+\"})")
                .await;
            (r.len() == 2).then_some(r)
        },
    )
    .await;
    assert_eq!(series.len(), 2);

    // Retiring a VPS removes its targets from Prometheus.
    let (_, gone) = &hosts[0];
    let v = api.vps(gone).await.unwrap();
    let (st, body) = api
        .call(
            "POST",
            &format!("/api/vps/{}/retire?force=true", v["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    wait_for(
        "the retired VPS's targets to go",
        Duration::from_secs(30),
        || async {
            let all = prom.active_targets().await;
            (target_of(&all, gone, "agent").is_none()
                && target_of(&all, &hosts[1].1, "agent").is_some())
            .then_some(())
        },
    )
    .await;

    for a in &mut agents {
        a.stop();
    }
    // Namespaces go with `hosts`; nothing of them may remain.
    let names: Vec<String> = hosts.iter().map(|(n, _)| n.name.clone()).collect();
    drop(hosts);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind");
    }
}

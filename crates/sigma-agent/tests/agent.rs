//! The real sigma-agent binary against a real sigma-api.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_testkit::{SigmaApi, free_port, temp_dir};

struct Agent {
    child: Option<Child>,
    metrics: String,
    log: PathBuf,
}

struct AgentOpts<'a> {
    api: &'a str,
    state: &'a Path,
    hostname: &'a str,
    token: Option<&'a str>,
    env: Vec<(&'a str, String)>,
}

impl Agent {
    fn start(o: AgentOpts<'_>) -> Agent {
        let metrics_port = free_port();
        let log = o.state.with_extension("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigma-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SIGMA_API_URL", o.api)
            .env("AGENT_STATE_DIR", o.state)
            .env("AGENT_HOSTNAME", o.hostname)
            .env("AGENT_INTERVAL", "300ms")
            .env("AGENT_MAX_BACKOFF", "1s")
            .env("AGENT_REQUEST_TIMEOUT", "2s")
            .env("AGENT_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("AGENT_XDS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("SIGMA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(t) = o.token {
            cmd.env("SIGMA_ENROLLMENT_TOKEN", t);
        }
        for (k, v) in o.env {
            cmd.env(k, v);
        }
        Agent {
            child: Some(cmd.spawn().expect("start sigma-agent")),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns the exit status and how long the exit took.
    fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return (s, t.elapsed());
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "agent ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn active_vps(api: &SigmaApi, host: &str) -> Value {
    wait_for("an active VPS with system info", || async {
        api.vps(host)
            .await
            .filter(|v| v["status"] == "active" && v["system_info"]["cpu_cores"].as_u64().is_some())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_heartbeats_restarts_with_its_key() {
    let api = SigmaApi::start();
    let token = api
        .token(json!({"purpose": "vpn-relay", "country": "NL"}))
        .await;
    let state = temp_dir("agent-state");
    let opts = |token| AgentOpts {
        api: &api.url,
        state: &state,
        hostname: "relay-7.example.net",
        token,
        env: vec![],
    };
    let mut agent = Agent::start(opts(Some(&token)));
    let vps = active_vps(&api, "relay-7.example.net").await;
    assert_eq!(vps["country"], "NL");
    assert!(!vps["ip_addresses"].as_array().unwrap().is_empty() || cfg!(not(target_os = "linux")));
    let key_file = state.join("agent.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is private");
    let hb = wait_for("heartbeats in metrics", || async {
        agent
            .metric("sigma_agent_heartbeats_total{result=\"ok\"}")
            .await
            .filter(|n| *n >= 2.0)
    })
    .await;
    assert!(hb >= 2.0);
    assert_eq!(agent.metric("sigma_agent_registered").await, Some(1.0));
    let health = reqwest::get(format!("{}/healthz", agent.metrics))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, took) = agent.stop();
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");

    // Restarted without the token: it uses its stored key; no second key is issued.
    let before = api.vps("relay-7.example.net").await.unwrap()["last_heartbeat_at"].clone();
    let mut agent = Agent::start(opts(None));
    wait_for("a newer heartbeat", || async {
        api.vps("relay-7.example.net")
            .await
            .filter(|v| v["last_heartbeat_at"] != before)
    })
    .await;
    let (_, keys) = api.call("GET", "/api/api-keys?limit=1000", None).await;
    let agent_keys = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == "agent")
        .count();
    assert_eq!(agent_keys, 1, "{keys}");
    assert!(agent.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigma_api_outages() {
    let mut api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let state = temp_dir("agent-outage");
    let mut agent = Agent::start(AgentOpts {
        api: &api.url,
        state: &state,
        hostname: "x-1",
        token: Some(&token),
        env: vec![],
    });
    active_vps(&api, "x-1").await;
    api.stop();
    let failed = wait_for("failed heartbeats while sigma-api is down", || async {
        agent
            .metric("sigma_agent_heartbeats_total{result=\"unreachable\"}")
            .await
            .filter(|n| *n >= 2.0)
    })
    .await;
    assert!(failed >= 2.0);
    assert!(
        agent.alive(),
        "the agent must not exit while sigma-api is down"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.restart();
    let before = api.vps("x-1").await.unwrap()["last_heartbeat_at"].clone();
    wait_for("heartbeats after sigma-api came back", || async {
        api.vps("x-1")
            .await
            .filter(|v| v["last_heartbeat_at"] != before)
    })
    .await;
    assert!(agent.alive());
    assert!(
        state.join("agent.key").exists(),
        "the key survived the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_reported_and_retire_is_applied() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr", "max_uses": 2})).await;
    let state = temp_dir("agent-revoke");
    let mut agent = Agent::start(AgentOpts {
        api: &api.url,
        state: &state,
        hostname: "x-2",
        token: Some(&token),
        env: vec![],
    });
    let vps = active_vps(&api, "x-2").await;
    let id = vps["id"].as_str().unwrap().to_string();

    // Retire: the agent learns it on the next heartbeat, applies it, and the VPS is retired.
    let (st, _) = api
        .call("POST", &format!("/api/vps/{id}/retire"), None)
        .await;
    assert_eq!(st, 200);
    wait_for("retired after the agent applied it", || async {
        api.vps("x-2").await.filter(|v| v["status"] == "retired")
    })
    .await;
    assert!(agent.alive(), "a retired VPS's agent keeps reporting");
    let (_, log) = api
        .call(
            "GET",
            &format!("/api/audit?resource_id={id}&action=vps.retired"),
            None,
        )
        .await;
    assert_eq!(log["items"][0]["actor"], "agent:x-2", "{log}");

    // Revoked: reported in the log and the metrics; the agent stays up.
    let (_, keys) = api.call("GET", "/api/api-keys?limit=1000", None).await;
    let key_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "agent")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = api
        .call("POST", &format!("/api/api-keys/{key_id}/revoke"), None)
        .await;
    assert_eq!(st, 200);
    wait_for("key_rejected metric", || async {
        agent
            .metric("sigma_agent_key_rejected")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert!(
        agent.log().contains("rejects the agent key"),
        "{}",
        agent.log()
    );
    assert!(agent.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protects_metrics_and_refuses_bad_settings() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let state = temp_dir("agent-metrics");
    let token_file = state.with_extension("metrics-token");
    std::fs::write(&token_file, "scrape-secret\n").unwrap();
    let agent = Agent::start(AgentOpts {
        api: &api.url,
        state: &state,
        hostname: "x-3",
        token: Some(&token),
        env: vec![("AGENT_METRICS_TOKEN_FILE", token_file.display().to_string())],
    });
    active_vps(&api, "x-3").await;
    let c = reqwest::Client::new();
    let url = format!("{}/metrics", agent.metrics);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = c
        .get(&url)
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("sigma_agent_heartbeats_total")
    );
    assert_eq!(
        c.get(format!("{}/healthz", agent.metrics))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // No key and no token: a clear error, not a silent loop.
    let empty = temp_dir("agent-empty");
    let out = Command::new(env!("CARGO_BIN_EXE_sigma-agent"))
        .env_clear()
        .env("SIGMA_API_URL", &api.url)
        .env("AGENT_STATE_DIR", &empty)
        .env("AGENT_HOSTNAME", "x-4")
        .env("AGENT_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no enrollment token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, v) in [
        ("AGENT_INTERVAL", "soon"),
        ("AGENT_HOSTNAME", "bad_host"),
        ("SIGMA_API_URL", "ftp://x"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sigma-agent"))
            .env_clear()
            .env("AGENT_STATE_DIR", &empty)
            .env("SIGMA_ENROLLMENT_TOKEN", "sge_x")
            .env("AGENT_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env(k, v)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{k}={v} accepted");
        assert_ne!(out.status.code(), Some(0));
    }
}

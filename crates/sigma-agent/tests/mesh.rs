//! Mesh mode of the real sigma-agent binary against a real sigma-api, with the Istio bootstrap
//! bundle served by a small front server in the test (it passes every other request on to
//! sigma-api) and a stand-in pilot-agent (`examples/fake-pilot-agent.rs`) that records how it
//! was started, serves Envoy's readiness and stats ports, and crashes when told to.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sigma_testkit::{SigmaApi, free_port, temp_dir};
use sigma_types::mesh::{
    BundleEgress, HOSTS_BEGIN, HOSTS_END, InterceptionMode, IstioBootstrapBundle,
    IstioBootstrapFiles, IstioProxyArchive,
};

/// ISRG Root X2 (a public CA certificate): SHA-256 and notAfter below.
const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICGzCCAaGgAwIBAgIQQdKd0XLq7qeAwSxs6S+HUjAKBggqhkjOPQQDAzBPMQsw
CQYDVQQGEwJVUzEpMCcGA1UEChMgSW50ZXJuZXQgU2VjdXJpdHkgUmVzZWFyY2gg
R3JvdXAxFTATBgNVBAMTDElTUkcgUm9vdCBYMjAeFw0yMDA5MDQwMDAwMDBaFw00
MDA5MTcxNjAwMDBaME8xCzAJBgNVBAYTAlVTMSkwJwYDVQQKEyBJbnRlcm5ldCBT
ZWN1cml0eSBSZXNlYXJjaCBHcm91cDEVMBMGA1UEAxMMSVNSRyBSb290IFgyMHYw
EAYHKoZIzj0CAQYFK4EEACIDYgAEzZvVn4CDCuwJSvMWSj5cz3es3mcFDR0HttwW
+1qLFNvicWDEukWVEYmO6gbf9yoWHKS5xcUy4APgHoIYOIvXRdgKam7mAHf7AlF9
ItgKbppbd9/w+kHsOdx1ymgHDB/qo0IwQDAOBgNVHQ8BAf8EBAMCAQYwDwYDVR0T
AQH/BAUwAwEB/zAdBgNVHQ4EFgQUfEKWrt5LSDv6kviejM9ti6lyN5UwCgYIKoZI
zj0EAwMDaAAwZQIwe3lORlCEwkSHRhtFcP9Ymd70/aTSVaYgLXTWNLxBo1BfASdW
tL4ndQavEi51mI38AjEAi/V3bNTIZargCyzuFJ0nN6T5U6VR5CmD1/iQMVtCnwr1
/q4AaOeMSQ+2b1tbFfLn
-----END CERTIFICATE-----
";
const ROOT_SHA256: &str = "69729b8e15a86efc177a57afb7171dfc64add28c2fca8cf1507e34453ccb1470";
const ROOT_NOT_AFTER: f64 = 2_231_510_400.0;

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The stand-in pilot-agent, built if this test run did not build examples.
fn fake_pilot_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let p = profile.join("examples/fake-pilot-agent");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "sigma-agent",
            "--example",
            "fake-pilot-agent",
        ])
        .arg("--target-dir")
        .arg(profile.parent().unwrap());
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building fake-pilot-agent");
    }
    p
}

/// What the front server serves as the bundle.
struct BundleSpec {
    version: String,
    token_ttl: Duration,
    cluster_env: String,
    mesh_yaml: String,
    hosts: String,
    interception: InterceptionMode,
    egress: Vec<BundleEgress>,
    proxy: Option<IstioProxyArchive>,
}

struct FrontState {
    api: String,
    http: reqwest::Client,
    spec: BundleSpec,
    hostname: String,
    fetches: u32,
    archive: Vec<u8>,
    /// Answer 503 to everything (sigma-api away).
    down: bool,
}

type Front = Arc<Mutex<FrontState>>;

fn cluster_env(extra: &str) -> String {
    format!(
        "CANONICAL_REVISION='latest'\nCANONICAL_SERVICE='xrayr'\nISTIO_INBOUND_PORTS=''\n\
         ISTIO_META_INTERCEPTION_MODE='NONE'\nISTIO_META_WORKLOAD_NAME='vps-mesh'\n\
         ISTIO_METAJSON_LABELS='{{\"app\":\"xrayr\"}}'\nISTIO_NAMESPACE='sigma'\n\
         ISTIO_SERVICE='xrayr.sigma'\nISTIO_SVC_IP='203.0.113.7'\n\
         OUTPUT_CERTS='/var/lib/istio/certs'\nPROV_CERT='/var/lib/istio/certs'\n\
         SERVICE_ACCOUNT='xrayr'\n{extra}"
    )
}

fn default_spec() -> BundleSpec {
    BundleSpec {
        version: "v1".into(),
        token_ttl: Duration::from_secs(3600),
        cluster_env: cluster_env(""),
        mesh_yaml: "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n".into(),
        hosts: "198.51.100.4 istiod.istio-system.svc\n".into(),
        interception: InterceptionMode::None,
        egress: vec![],
        proxy: None,
    }
}

fn workload(hostname: &str) -> String {
    format!("vps-{}", hostname.replace('.', "-"))
}

async fn bootstrap(State(st): State<Front>) -> Response {
    let mut s = st.lock().unwrap();
    if s.down {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    s.fetches += 1;
    let b = IstioBootstrapBundle {
        vps_id: uuid::Uuid::nil(),
        hostname: s.hostname.clone(),
        workload_entry: workload(&s.hostname),
        files: IstioBootstrapFiles {
            root_cert_pem: ROOT_PEM.into(),
            istio_token: format!("token-{}", s.fetches),
            mesh_yaml: s.spec.mesh_yaml.clone(),
            cluster_env: s.spec.cluster_env.clone(),
            hosts: s.spec.hosts.clone(),
        },
        token_expires_at: time::OffsetDateTime::now_utc() + s.spec.token_ttl,
        root_cert_sha256: ROOT_SHA256.into(),
        bundle_version: s.spec.version.clone(),
        interception: s.spec.interception,
        egress: s.spec.egress.clone(),
        istio_proxy: s.spec.proxy.clone(),
    };
    axum::Json(b).into_response()
}

async fn archive(State(st): State<Front>) -> Response {
    st.lock().unwrap().archive.clone().into_response()
}

/// Everything else goes to the real sigma-api.
async fn forward(State(st): State<Front>, req: Request) -> Response {
    let (api, http, down) = {
        let s = st.lock().unwrap();
        (s.api.clone(), s.http.clone(), s.down)
    };
    if down {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut r = http
        .request(parts.method.clone(), format!("{api}{pq}"))
        .body(body);
    for h in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(v) = parts.headers.get(&h) {
            r = r.header(h, v.clone());
        }
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            if let Some(ct) = ct {
                out.headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(_) => (axum::http::StatusCode::BAD_GATEWAY, "sigma-api away").into_response(),
    }
}

async fn start_front(api: &str, hostname: &str, spec: BundleSpec) -> (Front, String) {
    let st: Front = Arc::new(Mutex::new(FrontState {
        api: api.to_string(),
        http: reqwest::Client::new(),
        spec,
        hostname: hostname.to_string(),
        fetches: 0,
        archive: Vec::new(),
        down: false,
    }));
    let app = axum::Router::new()
        .route("/api/agent/istio-bootstrap", axum::routing::get(bootstrap))
        .route("/archive/istio-sidecar.tar.gz", axum::routing::get(archive))
        .fallback(forward)
        .with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (st, url)
}

/// A VPS's world: install root, record directory, ports, the pilot-agent wrapper.
struct World {
    root: PathBuf,
    records: PathBuf,
    state: PathBuf,
    agent_path: PathBuf,
    envoy_path: PathBuf,
    ready_port: u16,
    stats_port: u16,
}

fn wrapper_script(records: &Path, ready: u16, stats: u16) -> String {
    format!(
        "#!/bin/sh\nexport FAKE_RECORD_DIR='{}'\nexport FAKE_READY_PORT={ready}\nexport FAKE_STATS_PORT={stats}\nexec '{}' \"$@\"\n",
        records.display(),
        fake_pilot_agent().display()
    )
}

impl World {
    fn new(tag: &str, install_binaries: bool) -> World {
        let base = temp_dir(tag);
        let w = World {
            root: base.join("root"),
            records: base.join("records"),
            state: base.join("state"),
            agent_path: base.join("bin/pilot-agent"),
            envoy_path: base.join("bin/envoy"),
            ready_port: free_port(),
            stats_port: free_port(),
        };
        for d in [
            &w.root.join("etc"),
            &w.records,
            &w.agent_path.parent().unwrap().to_path_buf(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        // The stand-in may run as another user: it must be able to write its records.
        std::fs::set_permissions(&w.records, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        if install_binaries {
            write_exec(
                &w.agent_path,
                &wrapper_script(&w.records, w.ready_port, w.stats_port),
            );
            write_exec(&w.envoy_path, "#!/bin/sh\nexit 0\n");
        }
        w
    }

    fn proxy_records(&self) -> Vec<Value> {
        let mut v: Vec<Value> = std::fs::read_dir(&self.records)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let n = p.file_name()?.to_str()?.to_string();
                (n.starts_with("proxy-") && n.ends_with(".json"))
                    .then(|| serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok())?
            })
            .collect();
        v.sort_by_key(|r| {
            std::fs::metadata(self.records.join(format!("proxy-{}.json", r["pid"])))
                .and_then(|m| m.modified())
                .ok()
        });
        v
    }

    fn iptables_calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.records.join("iptables.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(v["args"].clone()).unwrap()
            })
            .collect()
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn write_exec(p: &Path, body: &str) {
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn alive(pid: u64) -> bool {
    // A zombie is gone for our purposes; /proc tells the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

struct Agent {
    child: Option<Child>,
    metrics: String,
    log: PathBuf,
}

impl Agent {
    fn start(
        w: &World,
        api: &str,
        hostname: &str,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> Agent {
        let port = free_port();
        let log = w.state.with_extension(format!("log-{port}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigma-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SIGMA_API_URL", api)
            .env("AGENT_STATE_DIR", &w.state)
            .env("AGENT_HOSTNAME", hostname)
            .env("AGENT_INTERVAL", "300ms")
            .env("AGENT_MAX_BACKOFF", "1s")
            .env("AGENT_REQUEST_TIMEOUT", "2s")
            .env("AGENT_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("AGENT_ISTIO_ENABLED", "true")
            .env("AGENT_ROOT", &w.root)
            .env("AGENT_ISTIO_AGENT_PATH", &w.agent_path)
            .env("AGENT_ISTIO_ENVOY_PATH", &w.envoy_path)
            .env("AGENT_ENVOY_READY_PORT", w.ready_port.to_string())
            .env("AGENT_ENVOY_STATS_PORT", w.stats_port.to_string())
            .env("SIGMA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(t) = token {
            cmd.env("SIGMA_ENROLLMENT_TOKEN", t);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Agent {
            child: Some(cmd.spawn().expect("start sigma-agent")),
            metrics: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "agent ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("{}{path}", self.metrics)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
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

async fn wait_for<T, F, Fut>(what: &str, log: &dyn Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mesh_state(api: &SigmaApi, host: &str) -> Value {
    api.vps(host)
        .await
        .map(|v| v["agent_state"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_runs_refreshes_restarts_and_retires() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let host = "mesh-1.example.net";
    let mut spec = default_spec();
    // Short-lived tokens: the agent refreshes every 2 to 3 seconds.
    spec.token_ttl = Duration::from_secs(4);
    let (front, front_url) = start_front(&api.url, host, spec).await;
    let w = World::new("mesh-main", true);
    let hosts_before = "127.0.0.1 localhost\n10.9.9.9 db.internal # not sigma's";
    std::fs::write(w.at("etc/hosts"), hosts_before).unwrap();
    std::fs::set_permissions(w.at("etc/hosts"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut agent = Agent::start(&w, &front_url, host, Some(&token), &[]);
    let log = || agent.log();

    // pilot-agent started the way istio-start.sh starts it.
    let first = wait_for("pilot-agent started", &log, || async {
        w.proxy_records().into_iter().next()
    })
    .await;
    let pid1 = first["pid"].as_u64().unwrap();
    assert_eq!(first["args"], json!(["proxy"]));
    assert_eq!(first["cwd"], json!(w.root.display().to_string()));
    let env: BTreeMap<String, String> = serde_json::from_value(first["env"].clone()).unwrap();
    assert_eq!(env["POD_NAME"], workload(host));
    assert_eq!(env["POD_NAMESPACE"], "sigma");
    assert_eq!(env["INSTANCE_IP"], "203.0.113.7");
    assert_eq!(env["CA_ADDR"], "istiod.istio-system.svc:15012");
    assert_eq!(env["CANONICAL_SERVICE"], "xrayr");
    assert_eq!(env["ISTIO_METAJSON_LABELS"], "{\"app\":\"xrayr\"}");
    let certs = w.at("var/lib/istio/certs");
    assert_eq!(env["PROV_CERT"], certs.display().to_string());
    assert_eq!(env["OUTPUT_CERTS"], certs.display().to_string());
    let pc = &env["PROXY_CONFIG"];
    assert!(pc.contains("serviceCluster: xrayr.sigma"), "{pc}");
    assert!(
        pc.contains(&format!("binaryPath: {}", w.envoy_path.display())),
        "{pc}"
    );
    assert!(
        !env.contains_key("SIGMA_ENROLLMENT_TOKEN"),
        "the agent's secrets stay with it"
    );

    // File layout and modes.
    let token_file = w.at("var/run/secrets/tokens/istio-token");
    assert_eq!(mode(&token_file), 0o600);
    assert!(
        std::fs::read_to_string(&token_file)
            .unwrap()
            .starts_with("token-")
    );
    assert_eq!(
        std::fs::read_to_string(w.at("etc/certs/root-cert.pem")).unwrap(),
        ROOT_PEM
    );
    assert_eq!(mode(&w.at("etc/certs/root-cert.pem")), 0o644);
    assert!(
        std::fs::read_to_string(w.at("var/lib/istio/envoy/cluster.env"))
            .unwrap()
            .contains("CANONICAL_SERVICE='xrayr'")
    );
    assert!(
        std::fs::read_to_string(w.at("etc/istio/config/mesh"))
            .unwrap()
            .contains("discoveryAddress")
    );
    assert_eq!(mode(&certs), 0o700);
    assert!(w.at("etc/istio/proxy").is_dir());
    let hosts = std::fs::read_to_string(w.at("etc/hosts")).unwrap();
    assert_eq!(
        hosts,
        format!(
            "{hosts_before}\n{HOSTS_BEGIN}\n198.51.100.4 istiod.istio-system.svc\n{HOSTS_END}\n"
        )
    );
    assert_eq!(mode(&w.at("etc/hosts")), 0o644);
    let record = w.state.join("mesh-bundle.json");
    assert_eq!(mode(&record), 0o600, "the kept bundle holds the token");

    // Ready: heartbeat, metrics, health, Envoy's stats through the agent.
    let st = wait_for("mesh_state ready in a heartbeat", &log, || async {
        let s = mesh_state(&api, host).await;
        (s["mesh_state"]["state"] == "ready").then_some(s)
    })
    .await;
    assert_eq!(st["mode"], "mesh");
    assert_eq!(st["mesh_state"]["bundle_version"], "v1");
    assert!(st["mesh_state"]["token_expires_at"].is_string(), "{st}");
    assert_eq!(
        agent
            .metric("sigma_agent_mesh_phase{phase=\"ready\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        agent.metric("sigma_agent_mesh_envoy_ready").await,
        Some(1.0)
    );
    assert!(
        agent
            .metric("sigma_agent_mesh_token_expiry_timestamp_seconds")
            .await
            .unwrap()
            > 1e9
    );
    assert_eq!(agent.get("/healthz").await.0, 200);
    let (code, stats) = agent.get("/metrics/envoy").await;
    assert_eq!(code, 200);
    assert!(
        stats.contains(&format!("fake_pilot_agent_pid {pid1}")),
        "{stats}"
    );
    assert!(
        agent.log().contains("fake-pilot-agent: proxy started"),
        "pilot-agent's output is logged"
    );

    // Token refresh without restart.
    let token_a = std::fs::read_to_string(&token_file).unwrap();
    wait_for("a refreshed token", &log, || async {
        let t = std::fs::read_to_string(&token_file).ok()?;
        (t != token_a).then_some(())
    })
    .await;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(w.proxy_records().len(), 1, "no restart for a token refresh");
    assert!(alive(pid1));
    assert_eq!(
        std::fs::read_to_string(w.at("etc/hosts")).unwrap(),
        hosts,
        "hosts file unchanged by refreshes"
    );

    // The workload certificate's expiry is read from the cert directory.
    std::fs::write(certs.join("cert-chain.pem"), ROOT_PEM).unwrap();
    wait_for("cert expiry in the metrics", &log, || async {
        (agent
            .metric("sigma_agent_mesh_cert_expiry_timestamp_seconds")
            .await?
            == ROOT_NOT_AFTER)
            .then_some(())
    })
    .await;

    // Crash: restarted after the backoff, counted.
    std::fs::write(w.records.join("crash"), "").unwrap();
    let second = wait_for("pilot-agent restarted after a crash", &log, || async {
        w.proxy_records()
            .into_iter()
            .find(|r| r["pid"].as_u64() != Some(pid1))
    })
    .await;
    let pid2 = second["pid"].as_u64().unwrap();
    assert!(
        agent.log().contains("exited with code 3"),
        "{}",
        agent.log()
    );
    wait_for("restart counted", &log, || async {
        let s = mesh_state(&api, host).await;
        (s["mesh_state"]["restarts"].as_u64()? >= 1 && s["mesh_state"]["state"] == "ready")
            .then_some(())
    })
    .await;
    assert!(
        agent
            .metric("sigma_agent_mesh_restarts_total")
            .await
            .unwrap()
            >= 1.0
    );

    // A new bundle version (seen at the next refresh): files rewritten, pilot-agent restarted.
    {
        let mut f = front.lock().unwrap();
        f.spec.version = "v2".into();
        f.spec.mesh_yaml =
            "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  concurrency: 2\n"
                .into();
        f.spec.hosts =
            "198.51.100.4 istiod.istio-system.svc\n127.0.0.2 xboard.sigma.svc.cluster.local\n"
                .into();
    }
    let third = wait_for("pilot-agent restarted for bundle v2", &log, || async {
        w.proxy_records().into_iter().find(|r| {
            let p = r["pid"].as_u64();
            p != Some(pid1) && p != Some(pid2)
        })
    })
    .await;
    let pid3 = third["pid"].as_u64().unwrap();
    assert!(
        std::fs::read_to_string(w.at("etc/istio/config/mesh"))
            .unwrap()
            .contains("concurrency: 2")
    );
    let hosts_v2 = std::fs::read_to_string(w.at("etc/hosts")).unwrap();
    assert!(
        hosts_v2.starts_with(&format!("{hosts_before}\n{HOSTS_BEGIN}\n")),
        "{hosts_v2}"
    );
    assert!(hosts_v2.contains("127.0.0.2 xboard.sigma.svc.cluster.local\n"));
    wait_for("v2 reported", &log, || async {
        (mesh_state(&api, host).await["mesh_state"]["bundle_version"] == "v2").then_some(())
    })
    .await;
    front.lock().unwrap().spec.token_ttl = Duration::from_secs(3600);
    assert!(
        w.iptables_calls().is_empty(),
        "default mode never touches iptables"
    );

    // Retire: stopped, files and hosts block gone, other lines kept.
    let id = api.vps(host).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = api
        .call("POST", &format!("/api/vps/{id}/retire"), None)
        .await;
    assert_eq!(code, 200);
    wait_for("VPS retired", &log, || async {
        api.vps(host).await.filter(|v| v["status"] == "retired")
    })
    .await;
    wait_for("mesh stopped", &log, || async {
        (mesh_state(&api, host).await["mesh_state"]["state"] == "stopped").then_some(())
    })
    .await;
    assert!(!alive(pid3), "pilot-agent stopped");
    for gone in [
        "var/run/secrets/tokens/istio-token",
        "etc/certs/root-cert.pem",
        "var/lib/istio/envoy/cluster.env",
        "etc/istio/config/mesh",
        "var/lib/istio/certs",
        "etc/istio/proxy",
    ] {
        assert!(!w.at(gone).exists(), "{gone} left after retire");
    }
    assert_eq!(
        std::fs::read_to_string(w.at("etc/hosts")).unwrap(),
        format!("{hosts_before}\n")
    );
    assert!(!record.exists());
    assert!(w.agent_path.exists(), "the proxy installation stays");
    assert_eq!(agent.get("/metrics/envoy").await.0, 503);
    assert_eq!(agent.get("/healthz").await.0, 503);
    assert_eq!(
        agent
            .metric("sigma_agent_mesh_phase{phase=\"stopped\"}")
            .await,
        Some(1.0)
    );
    agent.stop();
}

fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, *body).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_the_proxy_and_refuses_a_bad_checksum() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let host = "mesh-2.example.net";
    let w = World::new("mesh-download", false);
    let wrapper = wrapper_script(&w.records, w.ready_port, w.stats_port);
    let archive = targz(&[
        ("./usr/local/bin/pilot-agent", wrapper.as_bytes()),
        ("./usr/local/bin/envoy", b"#!/bin/sh\nexit 0\n"),
        ("./var/lib/istio/envoy/envoy_bootstrap_tmpl.json", b"{}"),
        ("./lib/systemd/system/istio.service", b"[Unit]\n"),
    ]);
    let good = sha256_hex(&archive);
    let (front, front_url) = start_front(&api.url, host, default_spec()).await;
    {
        let mut f = front.lock().unwrap();
        f.archive = archive;
        f.spec.proxy = Some(IstioProxyArchive {
            url: format!("{front_url}/archive/istio-sidecar.tar.gz"),
            sha256: "0".repeat(64),
            version: Some("1.27.0".into()),
        });
    }
    let agent = Agent::start(&w, &front_url, host, Some(&token), &[]);
    let log = || agent.log();

    // A wrong checksum: refused, reported, nothing installed.
    let st = wait_for(
        "a degraded mesh_state naming the checksum",
        &log,
        || async {
            let s = mesh_state(&api, host).await;
            (s["mesh_state"]["state"] == "degraded").then_some(s)
        },
    )
    .await;
    let reason = st["mesh_state"]["reason"].as_str().unwrap();
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert_eq!(
        agent
            .metric("sigma_agent_mesh_phase{phase=\"degraded\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        agent.get("/healthz").await.0,
        503,
        "not ready while the proxy is missing"
    );
    assert!(!w.agent_path.exists() && !w.envoy_path.exists());
    assert!(w.proxy_records().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(w.agent_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "a refused download is deleted: {leftovers:?}"
    );

    // The operator fixes the checksum: installed and started.
    front.lock().unwrap().spec.proxy.as_mut().unwrap().sha256 = good;
    wait_for("pilot-agent from the archive started", &log, || async {
        w.proxy_records().into_iter().next()
    })
    .await;
    assert_eq!(mode(&w.agent_path), 0o755);
    assert_eq!(mode(&w.envoy_path), 0o755);
    assert_eq!(
        std::fs::read_to_string(w.at("var/lib/istio/envoy/envoy_bootstrap_tmpl.json")).unwrap(),
        "{}"
    );
    assert!(
        !w.at("lib/systemd").exists(),
        "only the proxy's parts are unpacked"
    );
    wait_for("ready", &log, || async {
        (mesh_state(&api, host).await["mesh_state"]["state"] == "ready").then_some(())
    })
    .await;
    assert_eq!(agent.get("/healthz").await.0, 200);

    // A lapsed workload certificate (a VPS offline for long): a fresh bundle, the expired key
    // and certificate dropped, pilot-agent restarted to enroll again.
    let pid1 = w.proxy_records()[0]["pid"].as_u64().unwrap();
    let certs = w.at("var/lib/istio/certs");
    std::fs::write(certs.join("cert-chain.pem"), expired_cert_pem()).unwrap();
    std::fs::write(certs.join("key.pem"), "old key").unwrap();
    let fetches = front.lock().unwrap().fetches;
    wait_for(
        "pilot-agent restarted with a fresh bundle",
        &log,
        || async {
            w.proxy_records()
                .into_iter()
                .find(|r| r["pid"].as_u64() != Some(pid1))
        },
    )
    .await;
    assert!(front.lock().unwrap().fetches > fetches);
    assert!(!certs.join("cert-chain.pem").exists() && !certs.join("key.pem").exists());
    assert!(agent.log().contains("workload certificate has expired"));
}

/// A minimal DER certificate whose validity ended on 2020-01-02 (enough for the agent, which
/// reads only `notAfter`).
fn expired_cert_pem() -> String {
    let mut validity = vec![0x30, 0x1e, 0x17, 0x0d];
    validity.extend_from_slice(b"200101000000Z");
    validity.extend_from_slice(&[0x17, 0x0d]);
    validity.extend_from_slice(b"200102000000Z");
    let mut tbs = vec![
        0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00,
    ];
    tbs.extend_from_slice(&validity);
    let mut der = vec![0x30, (tbs.len() + 2) as u8, 0x30, tbs.len() as u8];
    der.extend_from_slice(&tbs);
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                b64.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_user_switch_shutdown_and_running_without_sigma_api() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let host = "mesh-3.example.net";
    let mut spec = default_spec();
    spec.interception = InterceptionMode::Iptables;
    spec.cluster_env = cluster_env("ISTIO_SERVICE_CIDR='10.96.0.0/12'\n");
    spec.egress = vec![BundleEgress {
        host: "xboard.sigma.svc.cluster.local".into(),
        port: 80,
        bind: "127.0.0.2".into(),
    }];
    let (front, front_url) = start_front(&api.url, host, spec).await;
    let w = World::new("mesh-iptables", true);
    std::fs::write(w.at("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    // As root with an existing unprivileged user, pilot-agent runs as that user with
    // CAP_NET_BIND_SERVICE (always: route listeners may bind low ports at any time);
    // otherwise as the agent's own user.
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2)?.parse::<u32>().ok());
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let switch = is_root && nobody.is_some();
    let user = if switch {
        "nobody"
    } else {
        "istio-proxy-absent"
    };
    let env = [("AGENT_ISTIO_USER", user)];
    let mut agent = Agent::start(&w, &front_url, host, Some(&token), &env);
    let log = || agent.log();

    let first = wait_for("pilot-agent started", &log, || async {
        w.proxy_records().into_iter().next()
    })
    .await;
    let pid1 = first["pid"].as_u64().unwrap();
    // Narrowed capture, cleaned first; run before pilot-agent.
    let calls = w.iptables_calls();
    assert_eq!(
        calls[0],
        vec!["istio-iptables", "--cleanup-only"],
        "{calls:?}"
    );
    let setup = &calls[1];
    let flag = |f: &str| {
        setup
            .iter()
            .position(|a| a == f)
            .map(|i| setup[i + 1].as_str())
    };
    assert_eq!(flag("-i"), Some("10.96.0.0/12"), "{setup:?}");
    assert_eq!(flag("-b"), Some(""), "no inbound capture");
    assert_eq!(flag("-m"), Some("REDIRECT"));
    assert!(!setup.iter().any(|a| a == "*"));
    let token_file = w.at("var/run/secrets/tokens/istio-token");
    if switch {
        let uid = nobody.unwrap();
        assert_eq!(
            flag("-u"),
            Some(uid.to_string().as_str()),
            "Envoy's own traffic is not captured"
        );
        assert_eq!(first["uid"], json!(uid.to_string()));
        let amb = u64::from_str_radix(first["cap_amb"].as_str().unwrap(), 16).unwrap();
        assert_eq!(amb, 1 << 10, "only CAP_NET_BIND_SERVICE, ambient");
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().uid(),
            uid,
            "files owned by the proxy user"
        );
        assert_eq!(
            std::fs::metadata(w.at("var/lib/istio/certs"))
                .unwrap()
                .uid(),
            uid
        );
        assert_eq!(
            std::fs::metadata(w.at("etc/hosts")).unwrap().uid(),
            0,
            "/etc/hosts keeps its owner"
        );
    }
    wait_for("ready", &log, || async {
        (mesh_state(&api, host).await["mesh_state"]["state"] == "ready").then_some(())
    })
    .await;

    // Agent shutdown: pilot-agent stopped, iptables cleaned, files kept.
    agent.stop();
    assert!(!alive(pid1), "pilot-agent stopped with the agent");
    let calls = w.iptables_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[2], vec!["istio-iptables", "--cleanup-only"]);
    assert!(token_file.exists(), "a shutdown is not a retire");

    // sigma-api away: the restarted agent runs the proxy on the installed bundle.
    front.lock().unwrap().down = true;
    let agent = Agent::start(&w, &front_url, host, None, &env);
    let log = || agent.log();
    let second = wait_for("pilot-agent resumed without sigma-api", &log, || async {
        w.proxy_records()
            .into_iter()
            .find(|r| r["pid"].as_u64() != Some(pid1))
    })
    .await;
    let pid2 = second["pid"].as_u64().unwrap();
    assert_eq!(w.iptables_calls().len(), 5, "capture put back on resume");
    wait_for("Envoy ready while sigma-api is away", &log, || async {
        (agent.metric("sigma_agent_mesh_envoy_ready").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(agent.get("/healthz").await.0, 200);
    let (_, m) = agent.get("/metrics").await;
    assert!(
        m.contains("sigma_agent_mesh_phase{phase=\"degraded\"} 1"),
        "{m}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(pid2));
    assert_eq!(
        w.proxy_records().len(),
        2,
        "no restarts while sigma-api is away"
    );
    assert!(
        agent.log().contains("running on the installed one"),
        "{}",
        agent.log()
    );
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The agent's own memory in mesh mode (pilot-agent and Envoy are other processes). Run with
/// `cargo test --release -p sigma-agent --test mesh -- --ignored --nocapture agent_rss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run on demand"]
async fn agent_rss_in_mesh_mode() {
    let api = SigmaApi::start();
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let host = "mesh-rss.example.net";
    let mut spec = default_spec();
    spec.token_ttl = Duration::from_secs(4);
    let (_front, front_url) = start_front(&api.url, host, spec).await;
    let w = World::new("mesh-rss", true);
    std::fs::write(w.at("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let agent = Agent::start(&w, &front_url, host, Some(&token), &[("SIGMA_LOG", "warn")]);
    let log = || agent.log();
    wait_for("ready", &log, || async {
        (mesh_state(&api, host).await["mesh_state"]["state"] == "ready").then_some(())
    })
    .await;
    let pid = agent.child.as_ref().unwrap().id();
    let (rss, _) = rss_kib(pid);
    println!("agent RSS at ready: {rss} KiB");
    // A minute of heartbeats every 300 ms, token refreshes every 2-3 s, readiness polls and
    // scrapes of /metrics and /metrics/envoy.
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        agent.get("/metrics").await;
        agent.get("/metrics/envoy").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss, hwm) = rss_kib(pid);
    println!("agent RSS after 60 s: {rss} KiB (peak {hwm} KiB)");
    assert_eq!(w.proxy_records().len(), 1);
}

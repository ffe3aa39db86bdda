//! Test support shared by sigma's crates: locate the workspace's binaries (building them when a
//! test of another package needs them) and run a real sigma-api on loopback.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin key every test sigma-api is started with.
pub const ADMIN_KEY: &str = "sgm_0000aaaa_testkit-admin-key-0123456789abcdef0123456789";

/// The target directory of the running test (`…/target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // …/target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The workspace package that builds the binary `name` (binary names and package names
/// differ for sigmactl and sigma-loadgen).
fn package_of(name: &str) -> &str {
    match name {
        "sigmactl" => "sigma-ctl",
        "sigma-loadgen" => "sigma-bench",
        other => other,
    }
}

/// Path of a workspace binary, brought up to date by `cargo build` once per test process
/// (a no-op of about a second when fresh). Building only when the file is missing would let a
/// test of another package (`cargo test -p sigma-e2e`) run a binary older than the source.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = profile_dir();
    let path = dir.join(name);
    // Held while building, so parallel tests of one process build each binary once.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = dir.parent().expect("target dir");
        // cargo runs tests with the test's package as cwd, where `--bin` alone only looks at
        // that package's targets; naming the package and the workspace manifest builds the
        // binary from any package's tests.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", package_of(name), "--bin", name])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    path
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sigma-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How a test sigma-api is started beyond the defaults.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Address to bind (default `127.0.0.1`; the end-to-end tests bind `0.0.0.0` so agents in
    /// network namespaces reach it through their veth link).
    pub listen_ip: String,
    /// Extra environment, applied after the defaults (so it can override `SIGMA_MESH_MODE`).
    pub env: Vec<(String, String)>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            listen_ip: "127.0.0.1".into(),
            env: Vec::new(),
        }
    }
}

impl ApiOptions {
    /// Adds one environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Binds this address.
    pub fn listen_ip(mut self, ip: impl Into<String>) -> Self {
        self.listen_ip = ip.into();
        self
    }
}

/// A running sigma-api on SQLite.
pub struct SigmaApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its port (kept across restarts).
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    child: Option<Child>,
    /// HTTP client for the test.
    pub http: reqwest::Client,
    options: ApiOptions,
}

impl SigmaApi {
    /// Starts sigma-api on a free port with a fresh SQLite database.
    pub fn start() -> SigmaApi {
        SigmaApi::start_with(ApiOptions::default())
    }

    /// Starts sigma-api on a free port with a fresh SQLite database and these options.
    pub fn start_with(options: ApiOptions) -> SigmaApi {
        let mut s = SigmaApi {
            url: String::new(),
            port: free_port(),
            dir: temp_dir("api"),
            child: None,
            http: reqwest::Client::new(),
            options,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let mut child = Command::new(bin("sigma-api"))
            .args([
                "--listen",
                &format!("{}:{}", self.options.listen_ip, self.port),
            ])
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", self.dir.join("sigma.db").display()),
            )
            .env("SIGMA_ADMIN_KEY", ADMIN_KEY)
            .env("SIGMA_LOG", "warn")
            .env("SIGMA_HEARTBEAT_FLUSH_INTERVAL", "200ms")
            .env("SIGMA_MESH_MODE", "off")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sigma-api");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("sigma-api listening on ") => {
                    // The test itself always talks to it over loopback.
                    self.url = l["sigma-api listening on ".len()..].replace("0.0.0.0", "127.0.0.1");
                    break;
                }
                Some(Ok(_)) => {}
                _ => panic!("sigma-api exited before listening"),
            }
            assert!(Instant::now() < deadline, "sigma-api did not start");
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// Stops it (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    /// Kills it without a graceful shutdown (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// A request as admin; returns status and JSON (or `Null`).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An enrollment token with these presets.
    pub async fn token(&self, presets: Value) -> String {
        let (s, v) = self
            .call("POST", "/api/enrollment-tokens", Some(presets))
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// The VPS of a hostname, if any.
    pub async fn vps(&self, hostname: &str) -> Option<Value> {
        let (_, v) = self
            .call("GET", &format!("/api/vps?hostname={hostname}"), None)
            .await;
        v["items"].get(0).cloned()
    }

    /// Polls `f` until it returns `Some` or the deadline passes.
    pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SigmaApi {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

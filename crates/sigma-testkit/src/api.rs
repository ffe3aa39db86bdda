//! The real sigma-api binary on loopback, one builder for every crate's tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{ADMIN_KEY, TempDir, bin};

/// The mesh registry mode a test sigma-api runs in.
#[derive(Debug, Clone, Default)]
pub enum Mesh {
    /// `off`: never talks to Kubernetes (the default, so no test reconciles into whatever
    /// cluster the developer's kubeconfig names).
    #[default]
    Off,
    /// `export`: serves the manifests only.
    Export,
    /// `kubernetes` against this kubeconfig (usually a [`crate::fake_kube`] server's), without
    /// a Lease, reading the cluster for every bundle, with short API timeouts.
    Kubernetes(PathBuf),
}

impl Mesh {
    fn env(&self) -> Vec<(String, String)> {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        match self {
            Mesh::Off => vec![pair("SIGMA_MESH_MODE", "off")],
            Mesh::Export => vec![pair("SIGMA_MESH_MODE", "export")],
            Mesh::Kubernetes(kubeconfig) => vec![
                pair("SIGMA_MESH_MODE", "kubernetes"),
                pair("SIGMA_KUBECONFIG", &kubeconfig.display().to_string()),
                pair("SIGMA_MESH_LEADER_ELECTION", "none"),
                pair("SIGMA_ISTIO_BOOTSTRAP_CACHE", "0"),
                pair("SIGMA_KUBE_TIMEOUT", "3s"),
            ],
        }
    }
}

/// How a test sigma-api is started; [`SigmaApiBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct SigmaApiBuilder {
    listen_ip: String,
    database: Option<(String, PathBuf)>,
    admin_key: Option<String>,
    mesh: Mesh,
    env: Vec<(String, String)>,
}

/// The builder under its former name (the end-to-end harness starts servers with it).
pub type ApiOptions = SigmaApiBuilder;

impl Default for SigmaApiBuilder {
    fn default() -> Self {
        SigmaApiBuilder {
            listen_ip: "127.0.0.1".into(),
            database: None,
            admin_key: Some(ADMIN_KEY.into()),
            mesh: Mesh::Off,
            env: Vec::new(),
        }
    }
}

impl SigmaApiBuilder {
    /// Adds one environment variable, applied after every default (so it overrides them).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Adds environment variables, as [`SigmaApiBuilder::env`].
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// Binds this address (default `127.0.0.1`; the end-to-end tests bind `0.0.0.0` so agents
    /// in network namespaces reach it through their veth link). The port is always 0.
    pub fn listen_ip(mut self, ip: impl Into<String>) -> Self {
        self.listen_ip = ip.into();
        self
    }

    /// Uses this database (`DATABASE_URL`) and directory (its working directory) instead of a
    /// fresh SQLite file in a directory of its own.
    pub fn database(mut self, url: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.database = Some((url.into(), dir.into()));
        self
    }

    /// Uses a test database, SQLite or PostgreSQL.
    #[cfg(feature = "db")]
    pub fn store(self, db: &crate::TestDb) -> Self {
        self.database(db.url.clone(), db.dir.clone())
    }

    /// Starts it with this admin key, or with none (`SIGMA_ADMIN_KEY` unset: it creates one
    /// and prints it). Default: [`ADMIN_KEY`].
    pub fn admin_key(mut self, key: Option<&str>) -> Self {
        self.admin_key = key.map(String::from);
        self
    }

    /// The mesh registry mode (default [`Mesh::Off`]).
    pub fn mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = mesh;
        self
    }

    /// Starts sigma-api and waits until it listens.
    pub fn start(self) -> SigmaApi {
        let (own_dir, dir, database_url) = match &self.database {
            Some((url, dir)) => (None, dir.clone(), url.clone()),
            None => {
                let d = TempDir::new("api");
                let url = format!("sqlite://{}", d.path().join("sigma.db").display());
                let p = d.path().to_path_buf();
                (Some(d), p, url)
            }
        };
        let mut s = SigmaApi {
            url: String::new(),
            port: 0,
            dir,
            database_url,
            stdout_lines: Vec::new(),
            http: reqwest::Client::new(),
            child: None,
            options: self,
            _own_dir: own_dir,
        };
        s.launch();
        s
    }
}

/// A running sigma-api, killed when dropped.
pub struct SigmaApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its port (kept across restarts).
    pub port: u16,
    /// Its data directory (and working directory; the home of [`SigmaApi::ctl`]'s runs).
    pub dir: PathBuf,
    /// Its `DATABASE_URL`.
    pub database_url: String,
    /// What it printed before it listened (the generated admin key, when it had none).
    pub stdout_lines: Vec<String>,
    /// HTTP client for the test.
    pub http: reqwest::Client,
    child: Option<Child>,
    options: SigmaApiBuilder,
    _own_dir: Option<TempDir>,
}

impl SigmaApi {
    /// How to start one; see [`SigmaApiBuilder`].
    pub fn builder() -> SigmaApiBuilder {
        SigmaApiBuilder::default()
    }

    /// Starts one with the defaults: a fresh SQLite database, [`ADMIN_KEY`], mesh off.
    pub fn start() -> SigmaApi {
        SigmaApi::builder().start()
    }

    /// Starts one as `options` say.
    pub fn start_with(options: SigmaApiBuilder) -> SigmaApi {
        options.start()
    }

    fn launch(&mut self) {
        let o = &self.options;
        let mut cmd = Command::new(bin("sigma-api"));
        cmd.args(["--listen", &format!("{}:{}", o.listen_ip, self.port)])
            .env("DATABASE_URL", &self.database_url)
            .env_remove("DATABASE_URL_FILE")
            .env_remove("SIGMA_ADMIN_KEY")
            .env_remove("SIGMA_ADMIN_KEY_FILE")
            .env("SIGMA_LOG", "warn")
            .env("SIGMA_HEARTBEAT_FLUSH_INTERVAL", "200ms")
            .envs(o.mesh.env())
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(k) = &o.admin_key {
            cmd.env("SIGMA_ADMIN_KEY", k);
        }
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start sigma-api");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait().unwrap();
                panic!("sigma-api exited before listening ({status}); stdout: {lines:?}");
            }
            let line = line.trim_end().to_string();
            if let Some(addr) = line.strip_prefix("sigma-api listening on ") {
                break addr.to_string();
            }
            lines.push(line);
            assert!(Instant::now() < deadline, "sigma-api did not start in time");
        };
        // The test itself always talks to it over loopback.
        self.url = addr.replace("0.0.0.0", "127.0.0.1");
        self.port = self
            .url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("a port in the listening line");
        self.stdout_lines = lines;
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        self.child = Some(child);
    }

    /// Stops it with SIGTERM and returns how it exited; fails the test unless it exits within
    /// 20 s.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("sigma-api is running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("sigma-api did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id while it runs (for benchmarks reading its memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it without a graceful shutdown (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and database (stopping it first if it runs).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    /// `url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A request with `key` (or none); returns the status and the body as JSON (`Null` when
    /// empty, a JSON string when it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("request")).await
    }

    /// A request as admin.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, Some(ADMIN_KEY), body).await
    }

    /// Sends raw bytes with a content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(m, self.url(path))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        answer(resp).await
    }

    /// `GET` with `key`.
    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.request("GET", path, Some(key), None).await
    }

    /// `POST` with `key`.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(key), Some(body)).await
    }

    /// `PATCH` with `key`.
    pub async fn patch(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.request("PATCH", path, Some(key), Some(body)).await
    }

    /// `DELETE` with `key`.
    pub async fn delete(&self, path: &str, key: &str) -> (u16, Value) {
        self.request("DELETE", path, Some(key), None).await
    }

    /// Creates an API key of `role` and returns its secret.
    pub async fn key(&self, role: &str) -> String {
        let (s, v) = self
            .post(
                "/api/api-keys",
                ADMIN_KEY,
                serde_json::json!({"name": format!("{role} test"), "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_string()
    }

    /// Creates an enrollment token with these presets and returns its secret.
    pub async fn token(&self, presets: Value) -> String {
        let (s, v) = self
            .post("/api/enrollment-tokens", ADMIN_KEY, presets)
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Registers `hostname` with enrollment `token` and one public address, as an agent
    /// does; returns the new VPS's `(id, agent key)`.
    pub async fn register(&self, token: &str, hostname: &str, ip: &str) -> (String, String) {
        let (st, r) = self
            .post(
                "/api/agent/register",
                token,
                serde_json::json!({"hostname": hostname, "ip_addresses": [{"ip": ip, "label": "public"}]}),
            )
            .await;
        assert_eq!(st, 200, "registering {hostname}: {r}");
        (
            r["vps"]["id"].as_str().unwrap().to_string(),
            r["agent_key"].as_str().unwrap().to_string(),
        )
    }

    /// The VPS of a hostname, if any.
    pub async fn vps(&self, hostname: &str) -> Option<Value> {
        let (_, v) = self
            .call("GET", &format!("/api/vps?hostname={hostname}"), None)
            .await;
        v["items"].get(0).cloned()
    }

    /// Polls `f` until it returns `Some` or the deadline passes (see [`crate::eventually`]).
    pub async fn eventually<T, F, Fut>(timeout: Duration, f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        crate::eventually(timeout, f).await
    }
}

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

impl Drop for SigmaApi {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A VPS creation body (`POST /api/vps`), purpose `xrayr` unless set.
pub struct VpsBuilder(Value);

impl VpsBuilder {
    /// A VPS named `hostname`.
    pub fn new(hostname: &str) -> Self {
        VpsBuilder(serde_json::json!({"hostname": hostname, "purpose": "xrayr"}))
    }

    /// Sets one field.
    pub fn set(mut self, k: &str, v: Value) -> Self {
        self.0[k] = v;
        self
    }

    /// Its one public address.
    pub fn public_ip(self, ip: &str) -> Self {
        self.set(
            "ip_addresses",
            serde_json::json!([{"ip": ip, "label": "public"}]),
        )
    }

    /// The body.
    pub fn build(self) -> Value {
        self.0
    }
}

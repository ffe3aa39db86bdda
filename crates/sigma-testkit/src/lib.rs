//! sigma's one test kit, shared by every crate's integration tests and benchmarks (in the
//! spirit of linkerd2-proxy's single integration-test crate):
//!
//! * [`SigmaApi`]: the real sigma-api binary on loopback, started through
//!   [`SigmaApi::builder`] (database, environment, admin key, mesh mode against a
//!   [`fake_kube`] server) and called as admin or with any key;
//! * [`ctl`]: the real `sigmactl` in a private environment, and checks of its tables;
//! * [`db`] (feature `db`): a fresh SQLite or PostgreSQL database per test, honouring
//!   `SIGMA_TEST_POSTGRES_URL` / `SIGMA_TEST_REQUIRE_POSTGRES`, and `both_backends!`;
//! * [`fake_kube`] (feature `kube`): a stand-in Kubernetes API server, reached in-process
//!   through a `kube::Client` or over HTTP through a kubeconfig;
//! * [`metrics`]: the checked-in list of the metric families a binary exports;
//! * [`bin`], [`TempDir`], [`eventually`]: the workspace's binaries, scratch directories and
//!   polling.
//!
//! Every server is started with the same admin key, [`ADMIN_KEY`].

pub mod api;
pub mod classic;
pub mod ctl;
#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "kube")]
pub mod fake_kube;
pub mod metrics;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use api::{ApiOptions, Mesh, SigmaApi, SigmaApiBuilder, VpsBuilder};
#[cfg(feature = "db")]
pub use db::{Backend, TestDb};

/// The admin key every test sigma-api (and every test store) is started with.
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
/// The binaries of the package under test are skipped: cargo built them for its integration
/// tests just before (it sets `CARGO_PKG_NAME` for the tests it runs).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = profile_dir();
    let path = dir.join(name);
    // Held while building, so parallel tests of one process build each binary once.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let own = std::env::var("CARGO_PKG_NAME").is_ok_and(|p| p == package_of(name));
    if !own && !built.iter().any(|b| b == name) {
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
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed: {status}");
        built.push(name.to_string());
    }
    assert!(path.exists(), "{name} is not built at {path:?}");
    path
}

/// A free loopback port (bound and released; for programs that cannot be told port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test of this machine uses: `tag`, the process id, a counter and the clock
/// (PostgreSQL databases outlive the process that made them).
pub fn unique(tag: &str) -> String {
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

/// A fresh temporary directory, kept after the test (the end-to-end tests leave logs there).
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sigma-{}", unique(tag)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file (creating directories) with a mode.
    pub fn write(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
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

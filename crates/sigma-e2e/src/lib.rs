//! End-to-end harness for sigma: simulated VPS hosts as network namespaces, processes whose
//! output is kept in log files, and a real Prometheus.
//!
//! The tests in `tests/` need root (namespaces, veth links) and the binaries the test command
//! installs: `scripts/test` runs them with the rest of the workspace's tests, with
//! `SIGMA_TEST_REQUIRE_E2E=1` so that they cannot skip; elsewhere they skip with a notice.

pub mod cluster;
pub mod eastwest;
pub mod mesh;
pub mod netns;
pub mod proc;
pub mod prometheus;

pub use cluster::ControlPlane;
pub use netns::Netns;
pub use proc::Proc;
pub use prometheus::Prometheus;

/// Whether an end-to-end test can run here: root (for namespaces) and the named programs on
/// `PATH`. When it cannot, the test is skipped with a notice, unless `SIGMA_TEST_REQUIRE_E2E=1`
/// (set by the test command, which installs everything), where a missing piece fails the test.
pub fn can_run(programs: &[&str]) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!("missing {}", missing.join(", "))
    } else {
        "not root".to_string()
    };
    assert!(
        std::env::var("SIGMA_TEST_REQUIRE_E2E").as_deref() != Ok("1"),
        "end-to-end test cannot run: {why}"
    );
    eprintln!("skipping end-to-end test: {why} (scripts/test runs it)");
    false
}

/// Directory for one test's files (logs, configs, state), kept after the test for reading.
pub fn work_dir(tag: &str) -> std::path::PathBuf {
    sigma_testkit::temp_dir(&format!("e2e-{tag}"))
}

/// Polls `f` every 250 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The inventory the mesh tests start from: provider `hetzner` and purpose `xrayr` in the mesh,
/// serving `http-api` on 8080 and calling Xboard (`xboard.sigma.svc.cluster.local`) on
/// `xboard_port` over HTTP.
pub async fn mesh_fleet_setup(api: &sigma_testkit::SigmaApi, xboard_port: u16) {
    let (st, v) = api
        .call(
            "POST",
            "/api/providers",
            Some(serde_json::json!({"name": "hetzner"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = api
        .call(
            "PATCH",
            "/api/purposes/xrayr",
            Some(serde_json::json!({"mesh": {
                "enabled": true,
                "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP"}],
                "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": xboard_port, "protocol": "HTTP"}]
            }})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

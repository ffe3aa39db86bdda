//! A classic-mode relay on loopback: a real sigma-agent serving xDS to a real Envoy started
//! from `sigma-agent envoy-bootstrap`, as the agent's classic tests and its route-change
//! benchmark run it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{free_port, temp_dir};

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running classic relay; both processes stop when it is dropped.
#[derive(Debug)]
pub struct ClassicRelay {
    /// sigma-agent (classic mode, route listeners on 127.0.0.1).
    pub agent: Kill,
    /// Envoy, configured by the agent's xDS.
    pub envoy: Kill,
    /// Envoy's admin port on 127.0.0.1.
    pub admin_port: u16,
}

impl ClassicRelay {
    /// Starts `agent_bin` enrolling as `hostname` with `token` against sigma-api at `api_url`
    /// (heartbeat `interval`, e.g. `300ms`), and `envoy_bin` on the bootstrap it prints. Panics
    /// when the bootstrap cannot be made.
    pub fn start(
        agent_bin: &Path,
        envoy_bin: &str,
        api_url: &str,
        token: &str,
        hostname: &str,
        interval: &str,
    ) -> ClassicRelay {
        let state = temp_dir(&format!("classic-{hostname}"));
        let xds_port = free_port();
        let admin_port = free_port();
        let env = |c: &mut Command| {
            c.env_clear()
                .env("SIGMA_API_URL", api_url)
                .env("SIGMA_ENROLLMENT_TOKEN", token)
                .env("AGENT_STATE_DIR", &state)
                .env("AGENT_HOSTNAME", hostname)
                .env("AGENT_INTERVAL", interval)
                .env("AGENT_MAX_BACKOFF", "1s")
                .env("AGENT_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
                .env("AGENT_XDS_LISTEN", format!("127.0.0.1:{xds_port}"))
                .env("AGENT_ROUTE_LISTEN_ADDRESS", "127.0.0.1");
        };
        let mut boot = Command::new(agent_bin);
        env(&mut boot);
        let out = boot
            .args([
                "envoy-bootstrap",
                "--admin",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .output()
            .expect("run sigma-agent envoy-bootstrap");
        assert!(
            out.status.success(),
            "envoy-bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = state.join("envoy.json");
        std::fs::write(&bootstrap, &out.stdout).unwrap();
        let mut cmd = Command::new(agent_bin);
        env(&mut cmd);
        let agent = Kill(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sigma-agent"),
        );
        let envoy = Kill(
            Command::new(envoy_bin)
                .arg("-c")
                .arg(&bootstrap)
                .args(["--use-dynamic-base-id", "--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start Envoy"),
        );
        ClassicRelay {
            agent,
            envoy,
            admin_port,
        }
    }
}

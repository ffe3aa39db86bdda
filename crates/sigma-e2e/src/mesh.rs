//! The mesh scenario's cluster side, shared by the end-to-end tests that enroll VPS into the
//! mesh: the control plane with sigma-api's shipped RBAC, a real east-west gateway and a
//! stand-in Xboard (see [`crate::eastwest`]), and sigma-api in mesh mode `kubernetes`
//! authenticated as its service account.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sigma_testkit::{ApiOptions, SigmaApi};

use crate::cluster::repo_root;
use crate::eastwest::{self, ClusterProxy, IstiodAddress, Xboard};
use crate::{ControlPlane, Netns, Proc};

pub use crate::eastwest::GATEWAY_IP;

/// A path the test command exports (Envoy, pilot-agent); a clear failure when it is missing.
pub fn env_path(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: run the test command (scripts/test)"))
}

/// The `Healthy` condition of a WorkloadEntry (what istiod's health checks write and Kiali
/// reads), if it has one.
pub fn healthy(entry: &Value) -> Option<bool> {
    entry["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Healthy")
        .map(|c| c["status"] == "True")
}

/// The cluster side of a mesh scenario, torn down in reverse order on drop (fields drop in
/// declaration order).
pub struct MeshCluster {
    /// sigma-api in mesh mode `kubernetes`, with the fleet of [`crate::mesh_fleet_setup`].
    pub api: SigmaApi,
    /// The stand-in Xboard with its sidecar.
    pub xboard: Xboard,
    /// The east-west gateway.
    pub gateway: ClusterProxy,
    /// etcd, kube-apiserver and istiod (xDS on [`eastwest::ISTIOD_IP`] only; upstream Envoy's
    /// limits set).
    pub cp: ControlPlane,
    /// Declared after the processes so the address goes after them.
    _istiod: IstiodAddress,
    /// Held for the scenario's lifetime, released last: the scenario uses fixed addresses,
    /// names and ports, so two in one test process (tests of a file run in parallel) wait for
    /// each other.
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

/// One mesh scenario at a time per test process (see `MeshCluster::_exclusive`).
static SCENARIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl MeshCluster {
    /// Starts the control plane under `dir` with istiod on [`eastwest::ISTIOD_IP`], applies
    /// sigma's shipped RBAC and the gateway's manifests, starts the gateway and Xboard, and
    /// starts sigma-api as service account `sigma/sigma-api` (not cluster-admin).
    pub async fn up(dir: &Path) -> MeshCluster {
        let exclusive = SCENARIO.lock().await;
        let istiod = IstiodAddress::add();
        let cp = ControlPlane::up(
            &dir.join("cp"),
            &[
                ("E2E_ISTIOD_BIND", eastwest::ISTIOD_IP),
                ("E2E_UPSTREAM_ENVOY", "1"),
            ],
        )
        .await;
        for f in [
            "k8s/base/rbac.yaml",
            "k8s/base/rbac-bootstrap.yaml",
            "k8s/base/serviceaccount-vm.yaml",
        ] {
            cp.apply(&repo_root().join(f));
        }
        eastwest::register_cluster_objects(&cp).await;
        let gateway = eastwest::start_gateway(&cp, dir).await;
        let xboard = eastwest::start_xboard(&cp, dir).await;
        let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;
        let api = SigmaApi::start_with(
            ApiOptions::default()
                .listen_ip("0.0.0.0")
                .env("SIGMA_MESH_MODE", "kubernetes")
                .env("SIGMA_KUBECONFIG", kubeconfig.to_str().unwrap())
                .env("SIGMA_MESH_RESYNC_INTERVAL", "2s")
                .env("SIGMA_ISTIO_CLUSTER_ID", "Kubernetes")
                .env("SIGMA_ISTIO_BOOTSTRAP_CACHE", "0s")
                .env("SIGMA_LOG", "info"),
        );
        crate::mesh_fleet_setup(&api, eastwest::XBOARD_PORT).await;
        MeshCluster {
            api,
            xboard,
            gateway,
            cp,
            _istiod: istiod,
            _exclusive: exclusive,
        }
    }

    /// A VPS namespace (`10.77.<index>.0/24`) whose only routes are its own link (sigma-api
    /// on the host side), the other VPS (`10.77.0.0/16`, standing for the internet between
    /// public addresses) and the gateway: istiod and the cluster's services are reached
    /// through the gateway or not at all.
    pub fn vps_namespace(&self, index: u8) -> Netns {
        let ns = Netns::create(index);
        ns.route_only_to(&[&format!("{GATEWAY_IP}/32"), "10.77.0.0/16"]);
        ns
    }
}

/// A simulated VPS of a mesh scenario: its namespace (routed to the gateway only), install
/// root and sigma-agent, in mesh mode with the real pilot-agent and Envoy, or in classic mode
/// serving xDS to an Envoy of its own.
pub struct MeshVps {
    /// Its host name (sigma's `hostname`).
    pub hostname: String,
    /// `AGENT_ROOT`: where the agent writes the proxy's files.
    pub root: PathBuf,
    /// Its directory (state, logs, copied binaries).
    pub dir: PathBuf,
    /// The unprivileged user the proxy runs as in mesh mode (root when `None`).
    pub istio_user: Option<String>,
    /// sigma-agent; declared before the namespace so it stops first.
    pub agent: Proc,
    /// The mode the agent runs in.
    pub run: AgentRun,
    /// Its network namespace.
    pub ns: Netns,
}

/// How a VPS's sigma-agent runs.
pub enum AgentRun {
    /// `--istio-enabled`: the agent runs pilot-agent, whose Envoy istiod configures.
    Mesh,
    /// Classic mode: the agent serves xDS to this Envoy (admin on 127.0.0.1:9901).
    Classic {
        /// The Envoy, started from `sigma-agent envoy-bootstrap`.
        envoy: Proc,
    },
}

/// The mode to start or switch a VPS's agent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mesh mode.
    Mesh,
    /// Classic mode.
    Classic,
}

impl MeshCluster {
    /// Starts a VPS in namespace `index` that enrolls with `token` as `hostname`, in mesh
    /// mode; its proxy runs as root (the agent's default `--istio-user` does not exist here).
    pub fn start_vps(&self, dir: &Path, index: u8, hostname: &str, token: &str) -> MeshVps {
        self.start_vps_with(dir, index, hostname, token, Mode::Mesh, None)
    }

    /// [`MeshCluster::start_vps`] in `mode`, with pilot-agent and Envoy run (in mesh mode) as
    /// the unprivileged `user` when given, as on a real VPS: the agent switches to it keeping
    /// only `CAP_NET_BIND_SERVICE`. Both binaries are then copied into the VPS's directory,
    /// since the user may not enter the directories they were built or installed in.
    pub fn start_vps_with(
        &self,
        dir: &Path,
        index: u8,
        hostname: &str,
        token: &str,
        mode: Mode,
        user: Option<&str>,
    ) -> MeshVps {
        let vps_dir = dir.join(hostname);
        let root = vps_dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/istio/envoy")).unwrap();
        std::fs::create_dir_all(vps_dir.join("state")).unwrap();
        let ns = self.vps_namespace(index);
        // Inside the namespace /etc/hosts is its own file (bind-mounted by `ip netns exec`):
        // the agent's hosts block must land there.
        std::os::unix::fs::symlink("/etc/hosts", root.join("etc/hosts")).unwrap();
        let agent_bin = PathBuf::from(env_path("SIGMA_E2E_PILOT_AGENT_BIN"));
        std::fs::copy(
            agent_bin.with_file_name("envoy_bootstrap_tmpl.json"),
            root.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
        )
        .expect("Envoy bootstrap template next to pilot-agent");
        let (agent, run) =
            self.spawn_agent(&ns, &vps_dir, &root, hostname, Some(token), mode, user);
        MeshVps {
            hostname: hostname.to_string(),
            root,
            dir: vps_dir,
            istio_user: user.map(str::to_string),
            agent,
            run,
            ns,
        }
    }

    /// Switches `v` to `to` the way `install-agent.sh --istio`/`--no-istio` does: the agent
    /// (and a classic Envoy) stopped first, which in mesh mode stops pilot-agent and Envoy,
    /// then started in the other mode with the key it already has.
    pub fn switch(&self, v: &mut MeshVps, to: Mode) {
        v.agent.stop();
        if let AgentRun::Classic { envoy } = &mut v.run {
            envoy.stop();
        }
        let (agent, run) = self.spawn_agent(
            &v.ns,
            &v.dir,
            &v.root,
            &v.hostname,
            None,
            to,
            v.istio_user.as_deref(),
        );
        v.agent = agent;
        v.run = run;
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_agent(
        &self,
        ns: &Netns,
        vps_dir: &Path,
        root: &Path,
        hostname: &str,
        token: Option<&str>,
        mode: Mode,
        user: Option<&str>,
    ) -> (Proc, AgentRun) {
        let env = |cmd: &mut std::process::Command| {
            cmd.env(
                "SIGMA_API_URL",
                format!("http://{}:{}", ns.host_ip, self.api.port),
            )
            .env("AGENT_STATE_DIR", vps_dir.join("state"))
            .env("AGENT_HOSTNAME", hostname)
            .env("AGENT_INTERVAL", "1s")
            .env("AGENT_METRICS_LISTEN", "0.0.0.0:9102")
            .env("SIGMA_LOG", "info");
            if let Some(t) = token {
                cmd.env("SIGMA_ENROLLMENT_TOKEN", t);
            }
        };
        let mut cmd = ns.command(sigma_testkit::bin("sigma-agent"));
        env(&mut cmd);
        match mode {
            Mode::Mesh => {
                let mut agent_bin = PathBuf::from(env_path("SIGMA_E2E_PILOT_AGENT_BIN"));
                let mut envoy_bin = PathBuf::from(env_path("SIGMA_ENVOY_BIN"));
                if let Some(u) = user {
                    let bin = vps_dir.join("bin");
                    std::fs::create_dir_all(&bin).unwrap();
                    for b in [&mut agent_bin, &mut envoy_bin] {
                        let to = bin.join(b.file_name().unwrap());
                        if !to.exists() {
                            std::fs::copy(&*b, &to).unwrap_or_else(|e| panic!("copy {b:?}: {e}"));
                        }
                        *b = to;
                    }
                    cmd.env("AGENT_ISTIO_USER", u);
                }
                cmd.env("AGENT_ISTIO_ENABLED", "true")
                    .env("AGENT_ROOT", root)
                    .env("AGENT_ISTIO_AGENT_PATH", &agent_bin)
                    .env("AGENT_ISTIO_ENVOY_PATH", &envoy_bin);
                let agent = Proc::spawn(&format!("agent-{hostname}"), cmd, vps_dir);
                (agent, AgentRun::Mesh)
            }
            Mode::Classic => {
                let mut boot = ns.command(sigma_testkit::bin("sigma-agent"));
                env(&mut boot);
                let out = boot
                    .args(["envoy-bootstrap", "--admin", "127.0.0.1:9901"])
                    .output()
                    .expect("sigma-agent envoy-bootstrap");
                assert!(
                    out.status.success(),
                    "envoy-bootstrap: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let bootstrap = vps_dir.join("classic-envoy.json");
                std::fs::write(&bootstrap, &out.stdout).unwrap();
                let agent = Proc::spawn(&format!("agent-{hostname}"), cmd, vps_dir);
                let mut e = ns.command(env_path("SIGMA_ENVOY_BIN"));
                e.arg("-c")
                    .arg(&bootstrap)
                    .args(["--disable-hot-restart", "--log-level", "warn"]);
                let envoy = Proc::spawn(&format!("classic-envoy-{hostname}"), e, vps_dir);
                (agent, AgentRun::Classic { envoy })
            }
        }
    }

    /// `sigmactl -o json mesh doctor HOST [--prometheus URL]` as an admin: its exit code and
    /// links.
    pub fn doctor(&self, host: &str, prometheus: Option<&str>) -> (i32, Vec<Value>) {
        let home = sigma_testkit::temp_dir("sigmactl-home");
        let mut cmd = std::process::Command::new(sigma_testkit::bin("sigmactl"));
        // Only what sigmactl should read: no SIGMA_* of the test environment, no real config.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("SIGMA_API_URL", &self.api.url)
            .env("SIGMA_API_KEY", sigma_testkit::ADMIN_KEY)
            .args(["-o", "json", "mesh", "doctor", host]);
        if let Some(p) = prometheus {
            cmd.args(["--prometheus", p]);
        }
        let out = cmd.output().expect("run sigmactl");
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sigmactl mesh doctor printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            out.status.code().unwrap_or(-1),
            links.as_array().cloned().unwrap_or_default(),
        )
    }

    /// Waits until istiod's endpoint index holds every address of `addresses` for service
    /// `host` (istiod's `/debug/endpointShardz`), i.e. until a proxy that connects now gets
    /// them in its first EDS answer.
    pub async fn wait_istiod_endpoints(&self, host: &str, addresses: &[String]) {
        use std::time::Duration;
        let port = &self.cp.env["ISTIOD_HTTP_PORT"];
        let url = format!("http://127.0.0.1:{port}/debug/endpointShardz");
        let http = reqwest::Client::new();
        crate::wait_for(
            &format!("istiod's endpoints of {host}: {addresses:?}"),
            Duration::from_secs(60),
            || async {
                let shards: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let of_host = shards.get(host)?.to_string();
                addresses
                    .iter()
                    .all(|a| of_host.contains(&format!("\"{a}\"")))
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits until the VPS is active, its WorkloadEntry exists and its agent reports the
    /// proxy ready in mesh mode; returns the VPS as sigma-api shows it.
    pub async fn wait_meshed(&self, v: &MeshVps) -> Value {
        use std::time::Duration;
        let vps = crate::wait_for("the VPS active", Duration::from_secs(60), || async {
            self.api
                .vps(&v.hostname)
                .await
                .filter(|x| x["status"] == "active")
        })
        .await;
        let id = vps["id"].as_str().unwrap().to_string();
        crate::wait_for("its WorkloadEntry", Duration::from_secs(60), || async {
            self.cp.workload_entry_of(&id).await.ok().flatten()
        })
        .await;
        crate::wait_for(
            "the agent to report the proxy ready",
            Duration::from_secs(120),
            || async {
                let s = self.api.vps(&v.hostname).await?["agent_state"].clone();
                (s["mode"] == "mesh" && s["mesh_state"]["state"] == "ready").then_some(())
            },
        )
        .await;
        vps
    }
}

impl MeshVps {
    /// Starts the application of a serving purpose on this VPS: HTTP on `0.0.0.0:<port>`,
    /// `GET /bytes/<n>` answering `n` zero bytes (for throughput), anything else
    /// answering `{"host": <its hostname>, "peer": <the client address it sees>}`, so a caller
    /// can tell which VPS answered and whether an Envoy (loopback peer) was in the path.
    /// Without Nagle: its headers and body are two writes, which on a kept-alive connection
    /// (an Envoy's pool) would wait for a delayed ACK, 40 ms per response.
    pub fn serve_http_echo(&self, port: u16, dir: &Path) -> Proc {
        let mut cmd = self.ns.command("python3");
        cmd.args([
            "-c",
            &format!(
                "import json, http.server\n\
                 class H(http.server.BaseHTTPRequestHandler):\n    \
                 protocol_version = 'HTTP/1.1'\n    \
                 disable_nagle_algorithm = True\n    \
                 def do_GET(self):\n        \
                 if self.path.startswith('/bytes/'):\n            \
                 n = int(self.path[7:]); chunk = memoryview(bytes(1 << 20))\n            \
                 self.send_response(200); self.send_header('content-length', str(n)); self.end_headers()\n            \
                 while n > 0:\n                \
                 self.wfile.write(chunk[:min(n, len(chunk))]); n -= min(n, len(chunk))\n            \
                 return\n        \
                 b = json.dumps({{'host': '{}', 'peer': self.client_address[0]}}).encode()\n        \
                 self.send_response(200); self.send_header('content-length', str(len(b))); self.end_headers(); self.wfile.write(b)\n    \
                 def log_message(self, *a): pass\n\
                 http.server.ThreadingHTTPServer(('0.0.0.0', {port}), H).serve_forever()",
                self.hostname
            ),
        ]);
        Proc::spawn(&format!("app-{}", self.hostname), cmd, dir)
    }

    /// Runs `curl` inside the namespace: `(exit code, stdout, stderr)`.
    pub fn curl(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .ns
            .command("curl")
            .args(args)
            .output()
            .expect("run curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

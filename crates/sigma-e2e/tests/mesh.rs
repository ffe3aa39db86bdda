//! A VPS really joins the mesh: real kube-apiserver, etcd and istiod (Istio 1.30 built from its
//! Go module), sigma-api under its shipped RBAC, and simulated VPS hosts (network namespaces)
//! running sigma-agent `--istio-enabled` with the real pilot-agent and Envoy.
//!
//! Upstream Envoy lacks Istio's own extensions (`istio.metadata_exchange`, `istio.alpn`,
//! `istio.stats`), so istiod runs with `PILOT_ENABLE_METADATA_EXCHANGE=false` and
//! `PILOT_ENABLE_ALPN_FILTER=false` (scripts/e2e/NOTES.md). What that limits: Envoy exports no
//! `istio_requests_total` family (no `istio.stats`), so this test proves Prometheus scrapes
//! Envoy's own stats, not Istio's standard metrics; everything up to that line (identity,
//! certificates, connection, health, no interception, retire, faults) is asserted here.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sigma_e2e::cluster::repo_root;
use sigma_e2e::{ControlPlane, Netns, Proc, Prometheus, wait_for, work_dir};
use sigma_testkit::{ADMIN_KEY, ApiOptions, SigmaApi};

/// Where VPS reach istiod: the "east-west gateway" address, an extra address on the host's
/// loopback interface, so every namespace reaches it through its default route.
const GATEWAY_IP: &str = "10.77.0.1";

/// [`GATEWAY_IP`] on the host's `lo`, removed on drop.
struct GatewayAddress;

impl GatewayAddress {
    fn add() -> GatewayAddress {
        let _ = Command::new("ip")
            .args(["addr", "del", "10.77.0.1/32", "dev", "lo"])
            .output();
        let st = Command::new("ip")
            .args(["addr", "add", "10.77.0.1/32", "dev", "lo"])
            .status()
            .unwrap();
        assert!(st.success(), "ip addr add 10.77.0.1/32 dev lo");
        GatewayAddress
    }
}

impl Drop for GatewayAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", "10.77.0.1/32", "dev", "lo"])
            .output();
    }
}

fn env_path(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: run the test command (scripts/test)"))
}

/// A simulated VPS: its namespace, install root, agent, and a TCP service standing for the
/// end-user traffic it carries.
struct Vps {
    hostname: String,
    ns: Netns,
    root: std::path::PathBuf,
    agent: Proc,
    _user_service: Proc,
}

const USER_PORT: u16 = 8443;

/// A one-line TCP echo service on the VPS's own address (end-user traffic).
fn user_service(ns: &Netns, dir: &Path) -> Proc {
    let mut cmd = ns.command("python3");
    cmd.args([
        "-c",
        &format!(
            "import socketserver\n\
             class H(socketserver.StreamRequestHandler):\n    \
             def handle(self):\n        self.wfile.write(self.rfile.readline())\n\
             socketserver.ThreadingTCPServer(('{}', {USER_PORT}), H).serve_forever()",
            ns.ip
        ),
    ]);
    Proc::spawn(&format!("user-service-{}", ns.name), cmd, dir)
}

/// Sends a line to the VPS's user service from the host and expects it back.
fn user_traffic_works(ns: &Netns) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = TcpStream::connect_timeout(
        &format!("{}:{USER_PORT}", ns.ip).parse().unwrap(),
        Duration::from_secs(2),
    ) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(b"hello vps\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line == "hello vps\n"
}

/// Packet-filter rules in a namespace (iptables-save and, when present, nft), without comments
/// and empty table headers.
fn filter_rules(ns: &Netns) -> Vec<String> {
    let mut rules = Vec::new();
    for (prog, args) in [
        ("iptables-save", vec![]),
        ("ip6tables-save", vec![]),
        ("nft", vec!["list", "ruleset"]),
    ] {
        let Ok(out) = ns.command(prog).args(&args).output() else {
            continue;
        };
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let l = l.trim();
            if l.starts_with("-A ") || l.starts_with("rule ") || l.contains(" jump ") {
                rules.push(format!("{prog}: {l}"));
            }
        }
    }
    rules
}

fn start_agent(vps_dir: &Path, ns: &Netns, hostname: &str, api: &SigmaApi, token: &str) -> Proc {
    let root = vps_dir.join("root");
    let mut cmd = ns.command(sigma_testkit::bin("sigma-agent"));
    cmd.env(
        "SIGMA_API_URL",
        format!("http://{}:{}", ns.host_ip, api.port),
    )
    .env("SIGMA_ENROLLMENT_TOKEN", token)
    .env("AGENT_STATE_DIR", vps_dir.join("state"))
    .env("AGENT_HOSTNAME", hostname)
    .env("AGENT_INTERVAL", "1s")
    .env("AGENT_METRICS_LISTEN", "0.0.0.0:9102")
    .env("AGENT_ISTIO_ENABLED", "true")
    .env("AGENT_ROOT", &root)
    .env(
        "AGENT_ISTIO_AGENT_PATH",
        env_path("SIGMA_E2E_PILOT_AGENT_BIN"),
    )
    .env("AGENT_ISTIO_ENVOY_PATH", env_path("SIGMA_ENVOY_BIN"))
    .env("SIGMA_LOG", "info");
    Proc::spawn(&format!("agent-{hostname}"), cmd, vps_dir)
}

async fn new_vps(dir: &Path, index: u8, api: &SigmaApi, token: &str) -> Vps {
    let hostname = format!("vps-{index}.e2e.sigma");
    let vps_dir = dir.join(&hostname);
    let root = vps_dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/istio/envoy")).unwrap();
    std::fs::create_dir_all(vps_dir.join("state")).unwrap();
    let ns = Netns::create(index);
    // Inside the namespace /etc/hosts is its own file (bind-mounted by `ip netns exec`): the
    // agent's hosts block must land there, where pilot-agent's resolver reads it.
    std::os::unix::fs::symlink("/etc/hosts", root.join("etc/hosts")).unwrap();
    // Istio's Envoy bootstrap template, which the sidecar package installs next to pilot-agent.
    let agent_bin = env_path("SIGMA_E2E_PILOT_AGENT_BIN");
    std::fs::copy(
        Path::new(&agent_bin).with_file_name("envoy_bootstrap_tmpl.json"),
        root.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
    )
    .expect("Envoy bootstrap template next to pilot-agent");
    let user = user_service(&ns, &vps_dir);
    wait_for("the user service", Duration::from_secs(10), || async {
        user_traffic_works(&ns).then_some(())
    })
    .await;
    let agent = start_agent(&vps_dir, &ns, &hostname, api, token);
    Vps {
        hostname,
        ns,
        root,
        agent,
        _user_service: user,
    }
}

async fn agent_state(api: &SigmaApi, hostname: &str) -> Value {
    api.vps(hostname)
        .await
        .map(|v| v["agent_state"].clone())
        .unwrap_or(Value::Null)
}

/// The workload certificate pilot-agent wrote, as `openssl x509 -text`.
fn workload_cert(root: &Path) -> Option<String> {
    let pem = root.join("var/lib/istio/certs/cert-chain.pem");
    if !pem.exists() {
        return None;
    }
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&pem)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Processes running in a namespace, by command name.
fn ns_processes(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "pids", &ns.name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

async fn istiod_debug(cp: &ControlPlane, what: &str) -> String {
    match reqwest::get(format!("{}/{what}", cp.var("ISTIOD_DEBUG_URL"))).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        // istiod is restarted on purpose in one step.
        Err(_) => String::new(),
    }
}

/// Waits until istiod's /debug/connections lists the proxy of WorkloadEntry `we_name`.
async fn wait_connected(cp: &ControlPlane, we_name: &str, what: &str, timeout: Duration) {
    wait_for(what, timeout, || async {
        istiod_debug(cp, "connections")
            .await
            .contains(&format!("{we_name}.sigma"))
            .then_some(())
    })
    .await;
}

fn healthy(entry: &Value) -> Option<bool> {
    entry["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Healthy")
        .map(|c| c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vps_joins_the_mesh_with_its_own_identity_and_no_interception() {
    if !sigma_e2e::can_run(&["ip", "openssl", "curl", "python3", "iptables-save"]) {
        return;
    }
    let dir = work_dir("mesh");
    let _gateway = GatewayAddress::add();
    let cp = ControlPlane::up(
        &dir.join("cp"),
        &[("E2E_ISTIOD_BIND", "0.0.0.0"), ("E2E_UPSTREAM_ENVOY", "1")],
    )
    .await;
    for f in [
        "k8s/base/rbac.yaml",
        "k8s/base/rbac-bootstrap.yaml",
        "k8s/base/serviceaccount-vm.yaml",
    ] {
        cp.apply(&repo_root().join(f));
    }
    // The east-west gateway's Service: sigma-api reads the address VPS reach istiod at from it.
    cp.apply_object(
        &cp.core("Service", "istio-system"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
            "spec": {"type": "ClusterIP", "externalIPs": [GATEWAY_IP],
                     "ports": [{"name": "tls-istiod", "port": 15012, "targetPort": 15012}]}
        }),
    )
    .await;
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
    sigma_e2e::mesh_fleet_setup(&api, 8001).await;
    let token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 10, "ttl_seconds": 3600}))
        .await;

    // Two VPS, each with user traffic flowing before it enrolls.
    let mut fleet = Vec::new();
    for i in 1..=2u8 {
        fleet.push(new_vps(&dir, i, &api, &token).await);
    }

    for v in &fleet {
        // Registered, active, WorkloadEntry applied with its namespace address.
        let vps = wait_for("the VPS active", Duration::from_secs(60), || async {
            api.vps(&v.hostname)
                .await
                .filter(|x| x["status"] == "active")
        })
        .await;
        let id = vps["id"].as_str().unwrap().to_string();
        let entry = wait_for("its WorkloadEntry", Duration::from_secs(60), || async {
            cp.workload_entry_of(&id).await
        })
        .await;
        assert_eq!(entry["spec"]["address"], v.ns.ip.as_str(), "{entry}");
        assert_eq!(entry["spec"]["serviceAccount"], "sigma-vm", "{entry}");
        let we_name = entry["metadata"]["name"].as_str().unwrap().to_string();

        // The bootstrap token was accepted: pilot-agent holds a workload certificate for the
        // purpose's service account.
        let cert = wait_for(
            "the workload certificate",
            Duration::from_secs(120),
            || async { workload_cert(&v.root) },
        )
        .await;
        assert!(
            cert.contains("URI:spiffe://cluster.local/ns/sigma/sa/sigma-vm"),
            "{cert}\nagent log:\n{}",
            v.agent.tail(40)
        );
        // istiod lists the proxy as connected under the VPS's own workload name.
        wait_connected(
            &cp,
            &we_name,
            "istiod to list the proxy",
            Duration::from_secs(60),
        )
        .await;
        let syncz = istiod_debug(&cp, "syncz").await;
        assert!(syncz.contains(&we_name), "syncz lacks {we_name}: {syncz}");
        // The agent reports Envoy ready, in mesh mode.
        wait_for(
            "the agent to report the proxy ready",
            Duration::from_secs(90),
            || async {
                let s = agent_state(&api, &v.hostname).await;
                (s["mode"] == "mesh" && s["mesh_state"]["state"] == "ready").then_some(())
            },
        )
        .await;
        // istiod's health check: Healthy once the probe (the agent's /healthz) passes.
        wait_for(
            "the WorkloadEntry Healthy",
            Duration::from_secs(90),
            || async {
                let e = cp.workload_entry_of(&id).await?;
                (healthy(&e) == Some(true)).then_some(())
            },
        )
        .await;
        // No interception: not one packet-filter rule in the VPS's namespace, and its user
        // traffic flows exactly as before.
        assert_eq!(filter_rules(&v.ns), Vec::<String>::new());
        assert!(
            user_traffic_works(&v.ns),
            "user traffic broken after enrollment"
        );
        // The hosts block maps istiod to the gateway and the egress service to its loopback
        // listener.
        let hosts = std::fs::read_to_string(v.ns.hosts_file()).unwrap();
        assert!(
            hosts.contains("# BEGIN sigma-istio")
                && hosts.contains(&format!("{GATEWAY_IP} istiod.istio-system.svc"))
                && hosts.contains("xboard.sigma.svc.cluster.local"),
            "{hosts}"
        );
    }

    // Prometheus discovers the agent and Envoy targets through sigma-api and scrapes them.
    let prom = Prometheus::start(
        &dir,
        &format!("{}/api/prometheus/targets", api.url),
        ADMIN_KEY,
    )
    .await;
    for v in &fleet {
        for job in ["agent", "envoy"] {
            wait_for(
                &format!("{job} target of {} up", v.hostname),
                Duration::from_secs(60),
                || async {
                    prom.active_targets()
                        .await
                        .iter()
                        .any(|t| {
                            t["labels"]["hostname"] == v.hostname.as_str()
                                && t["labels"]["job"] == job
                                && t["health"] == "up"
                        })
                        .then_some(())
                },
            )
            .await;
        }
    }
    let live = wait_for(
        "Envoy's stats in Prometheus",
        Duration::from_secs(30),
        || async {
            let r = prom.query("envoy_server_live{job=\"envoy\"} == 1").await;
            (r.len() == fleet.len()).then_some(r)
        },
    )
    .await;
    assert!(
        live.iter()
            .all(|s| s["metric"]["workload_entry"].is_string()),
        "{live:?}"
    );

    // Unhealthy when the agent stops answering its probe (frozen, so pilot-agent lives on and
    // reports the failing probe), Healthy again when it is back.
    let v = &fleet[0];
    let id = api.vps(&v.hostname).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let agent_pid = v.agent.pid().unwrap().to_string();
    Command::new("kill")
        .args(["-STOP", &agent_pid])
        .status()
        .unwrap();
    wait_for(
        "the WorkloadEntry unhealthy",
        Duration::from_secs(90),
        || async {
            let e = cp.workload_entry_of(&id).await?;
            (healthy(&e) == Some(false)).then_some(())
        },
    )
    .await;
    Command::new("kill")
        .args(["-CONT", &agent_pid])
        .status()
        .unwrap();
    wait_for("Healthy again", Duration::from_secs(90), || async {
        let e = cp.workload_entry_of(&id).await?;
        (healthy(&e) == Some(true)).then_some(())
    })
    .await;

    // istiod restarts: the proxy reconnects by itself.
    let we_name = cp.workload_entry_of(&id).await.unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let restart = cp.stop_component("istiod");
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart.start();
    wait_connected(
        &cp,
        &we_name,
        "the proxy reconnected to the restarted istiod",
        Duration::from_secs(120),
    )
    .await;

    // Retire: the WorkloadEntry goes, pilot-agent and Envoy stop, files and hosts block go.
    let (st, body) = api
        .call(
            "POST",
            &format!("/api/vps/{id}/retire?force=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    wait_for(
        "the WorkloadEntry deleted",
        Duration::from_secs(60),
        || async { cp.workload_entry_of(&id).await.is_none().then_some(()) },
    )
    .await;
    wait_for(
        "pilot-agent and Envoy stopped",
        Duration::from_secs(60),
        || async {
            let p = ns_processes(&v.ns);
            (!p.iter().any(|c| c == "pilot-agent" || c == "envoy")).then_some(())
        },
    )
    .await;
    wait_for(
        "the hosts block removed",
        Duration::from_secs(30),
        || async {
            let hosts = std::fs::read_to_string(v.ns.hosts_file()).unwrap_or_default();
            (!hosts.contains("sigma-istio")).then_some(())
        },
    )
    .await;
    for f in [
        "etc/certs/root-cert.pem",
        "var/run/secrets/tokens/istio-token",
        "var/lib/istio/envoy/cluster.env",
        "etc/istio/config/mesh",
        "var/lib/istio/certs/cert-chain.pem",
    ] {
        assert!(!v.root.join(f).exists(), "{f} left after retire");
    }
    assert!(
        user_traffic_works(&v.ns),
        "user traffic broken after retire"
    );

    for v in &mut fleet {
        v.agent.stop();
    }
    drop(prom);
}

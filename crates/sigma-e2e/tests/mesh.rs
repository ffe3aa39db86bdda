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
//!
//! Each check that asserts an absence first sees the thing present, or a planted one: rules
//! planted through iptables-nft, iptables-legacy and nft are seen before "no rule" is trusted;
//! pilot-agent and Envoy are seen running in the namespace before "stopped"; a cluster Envoy
//! must refuse shows as a NACK in istiod's syncz before "every type ACKed" is trusted. A third
//! VPS runs the opt-in iptables interception for real (pilot-agent's `istio-iptables`).

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sigma_e2e::mesh::{GATEWAY_IP, MeshCluster, env_path, healthy};
use sigma_e2e::{ControlPlane, Netns, Proc, Prometheus, wait_for, work_dir};
use sigma_testkit::{ADMIN_KEY, SigmaApi};

/// A simulated VPS: its namespace, install root, agent, and a TCP service standing for the
/// end-user traffic it carries.
struct Vps {
    hostname: String,
    /// Whether its purpose asks for iptables interception of [`SERVICE_CIDR`].
    captured: bool,
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

/// Control of [`Netns::filter_rules`]: a rule planted through each back end in the namespace is seen,
/// and once removed the namespace reads clean again.
fn filter_rules_see_planted_rules(ns: &Netns) {
    let plant: [(&str, &[&str], &[&str], &str); 3] = [
        (
            "iptables-nft",
            &["-w", "-A", "OUTPUT", "-d", "192.0.2.99/32", "-j", "ACCEPT"],
            &["-w", "-D", "OUTPUT", "-d", "192.0.2.99/32", "-j", "ACCEPT"],
            "192.0.2.99",
        ),
        (
            "iptables-legacy",
            &["-w", "-A", "OUTPUT", "-d", "192.0.2.98/32", "-j", "ACCEPT"],
            &["-w", "-D", "OUTPUT", "-d", "192.0.2.98/32", "-j", "ACCEPT"],
            "192.0.2.98",
        ),
        (
            "nft",
            &[
                "add table inet sigma_control; add chain inet sigma_control out { type filter hook output priority 0; }; add rule inet sigma_control out ip daddr 192.0.2.97 accept",
            ],
            &["delete table inet sigma_control"],
            "192.0.2.97",
        ),
    ];
    for (prog, add, del, marker) in plant {
        ns.output(prog, add);
        let seen = ns.filter_rules();
        ns.output(prog, del);
        assert!(
            seen.iter().any(|r| r.contains(marker)),
            "control: a rule planted with {prog} was not seen: {seen:?}"
        );
        eprintln!("control: a rule planted with {prog} is seen: {seen:?}");
    }
    assert_eq!(ns.filter_rules(), Vec::<String>::new(), "controls removed");
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

async fn new_vps(dir: &Path, cluster: &MeshCluster, index: u8, token: &str, captured: bool) -> Vps {
    let api = &cluster.api;
    let hostname = format!("vps-{index}.e2e.sigma");
    let vps_dir = dir.join(&hostname);
    let root = vps_dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/istio/envoy")).unwrap();
    std::fs::create_dir_all(vps_dir.join("state")).unwrap();
    let ns = cluster.vps_namespace(index);
    if captured {
        // Its only way to the service range is the interception (see route_on_link).
        ns.route_on_link(SERVICE_CIDR);
    }
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
        captured,
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

/// The pilot-agent and Envoy processes whose network namespace is the VPS's, found by the
/// namespace each process is in and the binary it runs (pilot-agent starts Envoy through the
/// `envoy-bin` symlink, so process names say nothing reliable): `"pilot-agent"` or `"envoy"`
/// for each.
fn proxy_processes(ns: &Netns) -> Vec<&'static str> {
    let canon = |k: &str| std::fs::canonicalize(env_path(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
    let (agent, envoy) = (canon("SIGMA_E2E_PILOT_AGENT_BIN"), canon("SIGMA_ENVOY_BIN"));
    ns.processes()
        .into_iter()
        .filter_map(|(_, exe)| {
            if exe == agent {
                Some("pilot-agent")
            } else if exe == envoy {
                Some("envoy")
            } else {
                None
            }
        })
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

/// istiod's `/debug/syncz` entry of the proxy of WorkloadEntry `we_name` (its proxy id is
/// `<workload name>.<namespace>`).
async fn syncz_entry(cp: &ControlPlane, we_name: &str) -> Option<Value> {
    let text = istiod_debug(cp, "syncz").await;
    let all: Value = serde_json::from_str(&text).ok()?;
    let id = format!("{we_name}.sigma");
    all.as_array()?
        .iter()
        .find(|e| e["proxy"].as_str() == Some(id.as_str()))
        .cloned()
}

/// What in a syncz entry is not acknowledged. istiod records per xDS type the nonce it last
/// sent and the nonce the proxy last ACKed; a NACK leaves the ACKed nonce behind and records
/// the proxy's error (`resources.<type>.lastError`, cleared by the next ACK). Clusters and
/// listeners must have been sent at all.
fn not_acked(entry: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for t in [
        "cluster",
        "listener",
        "route",
        "endpoint",
        "extensionconfig",
    ] {
        let sent = entry[format!("{t}_sent")].as_str().unwrap_or("");
        let acked = entry[format!("{t}_acked")].as_str().unwrap_or("");
        if sent.is_empty() && matches!(t, "cluster" | "listener") {
            problems.push(format!("{t}: nothing sent"));
        }
        if sent != acked {
            problems.push(format!("{t}: sent nonce {sent:?}, acked {acked:?}"));
        }
    }
    for (ty, r) in entry["resources"].as_object().into_iter().flatten() {
        if let Some(e) = r["lastError"].as_str().filter(|e| !e.is_empty()) {
            problems.push(format!("{ty}: NACK: {e}"));
        }
        if r["sent"] != r["acked"] {
            problems.push(format!("{ty}: sent {}, acked {}", r["sent"], r["acked"]));
        }
    }
    problems
}

/// Waits until istiod's syncz shows every type sent to the proxy of `we_name` ACKed, failing
/// with what is not.
async fn wait_acked(cp: &ControlPlane, we_name: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let entry = syncz_entry(cp, we_name).await;
        let problems = match &entry {
            Some(e) => not_acked(e),
            None => vec!["not listed".to_string()],
        };
        if problems.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the config of {we_name} is not ACKed: {problems:?}\nsyncz entry: {entry:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The service range the captured purpose's VPS send through Envoy (iptables interception).
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Whether a TCP connection from inside the namespace to `addr` is accepted (`Err` with why
/// not), made as user `nobody`: pilot-agent and Envoy run as root here (no `istio-proxy`
/// user), and istio-iptables exempts their user from the capture.
fn connects_from(ns: &Netns, addr: &str, port: u16) -> Result<(), String> {
    let out = ns
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            // The system's Python: one under root's home is not readable by `nobody`.
            "/usr/bin/python3",
            "-c",
            &format!("import socket; socket.create_connection(('{addr}', {port}), timeout=3)"),
        ])
        .output()
        .expect("run setpriv");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Control of [`proxy_processes`]: what it reports for a namespace where the proxy runs.
fn assert_proxy_runs(v: &Vps) {
    let p = proxy_processes(&v.ns);
    assert!(
        p.contains(&"pilot-agent") && p.contains(&"envoy"),
        "pilot-agent and Envoy should run in {}: {p:?} of {:?}",
        v.ns.name,
        v.ns.processes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vps_joins_the_mesh_with_its_own_identity_and_no_interception() {
    if !sigma_e2e::can_run(&[
        "ip",
        "openssl",
        "curl",
        "python3",
        "setpriv",
        "iptables-nft-save",
        "iptables-legacy-save",
        "nft",
    ]) {
        return;
    }
    let dir = work_dir("mesh");
    let cluster = MeshCluster::up(&dir).await;
    let (cp, api) = (&cluster.cp, &cluster.api);
    let token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 10, "ttl_seconds": 3600}))
        .await;
    // A second purpose opts in to iptables interception of the service range only.
    let (st, v) = api
        .call(
            "POST",
            "/api/purposes",
            Some(json!({"name": "relay", "mesh": {
                "enabled": true,
                "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP"}],
                "interception": {"mode": "iptables", "service_cidrs": [SERVICE_CIDR]}
            }})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let captured_token = api
        .token(json!({"purpose": "relay", "provider": "hetzner", "country": "DE", "max_uses": 1, "ttl_seconds": 3600}))
        .await;

    // Two VPS without interception and one with, each with user traffic flowing before it
    // enrolls.
    let mut fleet = Vec::new();
    for i in 1..=2u8 {
        fleet.push(new_vps(&dir, &cluster, i, &token, false).await);
    }
    fleet.push(new_vps(&dir, &cluster, 3, &captured_token, true).await);

    let mut we_names = Vec::new();
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
            entry_of(cp, &id).await
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
        // istiod lists the proxy as connected under the VPS's own workload name, and the
        // proxy ACKed every type of configuration istiod sent it (no NACK).
        wait_connected(
            cp,
            &we_name,
            "istiod to list the proxy",
            Duration::from_secs(60),
        )
        .await;
        wait_acked(cp, &we_name, Duration::from_secs(60)).await;
        // The agent reports Envoy ready, in mesh mode.
        wait_for(
            "the agent to report the proxy ready",
            Duration::from_secs(90),
            || async {
                let s = agent_state(api, &v.hostname).await;
                (s["mode"] == "mesh" && s["mesh_state"]["state"] == "ready").then_some(())
            },
        )
        .await;
        // pilot-agent and Envoy run in the VPS's namespace (what the retire check below
        // looks for is first seen present).
        assert_proxy_runs(v);
        // istiod's health check: Healthy once the probe (the agent's /healthz) passes.
        wait_for(
            "the WorkloadEntry Healthy",
            Duration::from_secs(90),
            || async {
                let e = entry_of(cp, &id).await?;
                (healthy(&e) == Some(true)).then_some(())
            },
        )
        .await;
        if v.captured {
            assert_captures_only_the_service_range(v);
        } else {
            // No interception: not one packet-filter rule in the VPS's namespace (and the
            // check sees a planted one), and its user traffic flows exactly as before.
            assert_eq!(v.ns.filter_rules(), Vec::<String>::new());
            filter_rules_see_planted_rules(&v.ns);
        }
        assert!(
            user_traffic_works(&v.ns),
            "user traffic broken after enrollment"
        );
        // The hosts block maps istiod to the gateway and (for the purpose calling it) the
        // egress service to its loopback listener.
        let hosts = std::fs::read_to_string(v.ns.hosts_file()).unwrap();
        assert!(
            hosts.contains("# BEGIN sigma-istio")
                && hosts.contains(&format!("{GATEWAY_IP} istiod.istio-system.svc"))
                && (v.captured || hosts.contains("xboard.sigma.svc.cluster.local")),
            "{hosts}"
        );
        we_names.push(we_name);
    }

    // Control of the ACK check: a cluster Envoy must refuse (STATIC, with an address that is
    // no IP) is sent by istiod, NACKed by every proxy, and the check reports it; once removed,
    // every proxy ACKs again.
    let filters: Api<DynamicObject> = Api::namespaced_with(
        cp.admin.clone(),
        "sigma",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "networking.istio.io",
            "v1alpha3",
            "EnvoyFilter",
        )),
    );
    cp.apply_object(
        &filters,
        json!({
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": "sigma-e2e-nack-control", "namespace": "sigma"},
            "spec": {"configPatches": [{
                "applyTo": "CLUSTER",
                "patch": {"operation": "ADD", "value": {
                    "name": "sigma-e2e-nack-control", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "sigma-e2e-nack-control", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "not-an-ip", "port_value": 1}}}}
                    ]}]}
                }}
            }]}
        }),
    )
    .await;
    let nacked = wait_for(
        "the planted NACK in syncz",
        Duration::from_secs(60),
        || async {
            let p = not_acked(&syncz_entry(cp, &we_names[0]).await?);
            p.iter().any(|x| x.contains("NACK")).then_some(p)
        },
    )
    .await;
    eprintln!("control: the ACK check reports the planted NACK: {nacked:?}");
    filters
        .delete("sigma-e2e-nack-control", &Default::default())
        .await
        .expect("delete the EnvoyFilter");
    for we_name in &we_names {
        wait_acked(cp, we_name, Duration::from_secs(60)).await;
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

    // The captured VPS's agent stops: the proxy stops and the interception rules go with it.
    let mut captured = fleet.pop().unwrap();
    assert!(captured.captured);
    captured.agent.stop();
    wait_for(
        "the captured VPS's proxy stopped",
        Duration::from_secs(30),
        || async { proxy_processes(&captured.ns).is_empty().then_some(()) },
    )
    .await;
    assert_eq!(
        captured.ns.filter_rules(),
        Vec::<String>::new(),
        "interception rules left after the agent stopped:\n{}",
        captured.agent.tail(30)
    );
    assert!(
        connects_from(&captured.ns, "10.96.0.99", 9).is_err(),
        "a connection to {SERVICE_CIDR} is still captured after the agent stopped"
    );
    drop(captured);

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
            let e = entry_of(cp, &id).await?;
            (healthy(&e) == Some(false)).then_some(())
        },
    )
    .await;
    Command::new("kill")
        .args(["-CONT", &agent_pid])
        .status()
        .unwrap();
    wait_for("Healthy again", Duration::from_secs(90), || async {
        let e = entry_of(cp, &id).await?;
        (healthy(&e) == Some(true)).then_some(())
    })
    .await;

    // istiod restarts: the proxy reconnects by itself.
    let we_name = entry_of(cp, &id).await.unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let restart = cp.stop_component("istiod");
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart.start();
    wait_connected(
        cp,
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
        || async { entry_of(cp, &id).await.is_none().then_some(()) },
    )
    .await;
    wait_for(
        "pilot-agent and Envoy stopped",
        Duration::from_secs(60),
        || async { proxy_processes(&v.ns).is_empty().then_some(()) },
    )
    .await;
    // The check tells namespaces apart: the other VPS's proxy, same binaries, still runs.
    assert_proxy_runs(&fleet[1]);
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

/// The WorkloadEntry of a VPS; a failed read fails the test (the API server is never stopped
/// here), so "deleted" means the API server listed none.
async fn entry_of(cp: &ControlPlane, vps_id: &str) -> Option<Value> {
    cp.workload_entry_of(vps_id)
        .await
        .unwrap_or_else(|e| panic!("listing WorkloadEntries: {e}"))
}

/// The iptables interception of a captured VPS, for real (pilot-agent's `istio-iptables` in
/// the VPS's namespace): outbound connections to [`SERVICE_CIDR`] land in Envoy, nothing else
/// is captured (not other destinations, not inbound), and the rules name only that range.
fn assert_captures_only_the_service_range(v: &Vps) {
    let rules = v.ns.filter_rules();
    let redirects: Vec<&String> = rules
        .iter()
        .filter(|r| r.contains("-j ISTIO_REDIRECT"))
        .collect();
    assert!(
        !redirects.is_empty()
            && redirects
                .iter()
                .all(|r| r.contains(&format!("-d {SERVICE_CIDR}"))),
        "only {SERVICE_CIDR} is redirected: {rules:#?}"
    );
    // A destination in the range is accepted by Envoy (nothing listens at that address); one
    // outside it reaches the host, which refuses the closed port.
    if let Err(e) = connects_from(&v.ns, "10.96.0.99", 9) {
        panic!(
            "a connection to {SERVICE_CIDR} is not captured: {e}\nlistening: {}\nrules: {rules:#?}",
            v.ns.output("ss", &["-ltnp"])
        );
    }
    assert!(
        connects_from(&v.ns, &v.ns.host_ip, 9).is_err(),
        "a connection outside {SERVICE_CIDR} was captured: {rules:#?}"
    );
}

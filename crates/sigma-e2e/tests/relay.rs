//! A relay chain in mesh mode, with the real control plane (kube-apiserver, istiod, pilot-agent
//! and Envoy on every VPS): a user outside the mesh (the test process, on the host side of the
//! VPS links) connects to the relay's public address and `listen_port`; the relay's
//! istiod-managed Envoy forwards over mTLS to the exits' ingress listeners, which hand the
//! stream to the exits' application on loopback. Nothing on the relay is intercepted: the
//! route's listener is an egress listener bound to the relay's address, rendered by sigma from
//! the route stored in sigma-api.
//!
//! The exits are VPS of the `xrayr` purpose (its `http-api` port, application on 8080,
//! answering `{"host", "peer"}`, one in DE and one in NL); the relay is a `vpn-relay` VPS of
//! another provider (another Istio network). The same relay also runs classic mode and is
//! switched to mesh mode and back, and a benchmark compares both modes' throughput.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_e2e::mesh::{MeshCluster, MeshVps, Mode};
use sigma_e2e::work_dir;

/// Where the exits' application listens (the `xrayr` purpose's `http-api` port).
const APP_PORT: u16 = 8080;

/// One user connection to `addr:port` (from outside the mesh): `(host, peer)` the exit's
/// application answered with.
fn user_call(addr: &str, port: u16) -> Result<(String, String), String> {
    user_call_timeout(addr, port, "5")
}

/// Waits until `n` user calls all succeed, answered by exactly `hosts` seeing `peer`.
async fn wait_chain(
    relay: &MeshVps,
    port: u16,
    n: usize,
    hosts: &BTreeSet<String>,
    peer: &str,
    what: &str,
) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(120) {
        last = (0..n).map(|_| user_call(&relay.ns.ip, port)).collect();
        let seen: Result<BTreeSet<String>, String> = last
            .iter()
            .map(|r| match r {
                Ok((h, p)) if p == peer => Ok(h.clone()),
                Ok((h, p)) => Err(format!("{h} saw peer {p}, not {peer}")),
                Err(e) => Err(e.clone()),
            })
            .collect();
        if seen.as_ref() == Ok(hosts) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listeners = relay.ns.output(
        "curl",
        &["-sS", "-m", "5", "http://127.0.0.1:15000/listeners"],
    );
    let clusters: Vec<String> = relay
        .ns
        .output(
            "curl",
            &["-sS", "-m", "5", "http://127.0.0.1:15000/clusters"],
        )
        .lines()
        .filter(|l| l.contains("route-"))
        .map(str::to_string)
        .collect();
    panic!(
        "timed out waiting for {what}: last calls {last:?}\nrelay listeners:\n{listeners}\nrelay route clusters:\n{}",
        clusters.join("\n")
    );
}

/// A counter of cluster `cluster` on the relay's Envoy (Istio's bootstrap tags cluster stats
/// as `cluster.<name>;.<stat>`), or `None` when Envoy has no such counter. A failed read of
/// the stats panics (`Netns::output`), so `None` is never a read error.
fn stat(relay: &MeshVps, cluster: &str, name: &str) -> Option<u64> {
    let stats = relay
        .ns
        .output("curl", &["-sS", "-m", "5", "http://127.0.0.1:15000/stats"]);
    let value = [
        format!("cluster.{cluster};.{name}: "),
        format!("cluster.{cluster}.{name}: "),
    ]
    .iter()
    .find_map(|p| stats.lines().find_map(|l| l.strip_prefix(p.as_str())))?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{cluster} {name}: {value:?}: {e}")),
    )
}

/// Waits until `v` is active and its agent reports `mode` (`classic` or `mesh`).
async fn wait_mode(cluster: &MeshCluster, v: &MeshVps, mode: &str) -> Value {
    sigma_e2e::wait_for(
        &format!("{} active in {mode} mode", v.hostname),
        Duration::from_secs(60),
        || async {
            cluster
                .api
                .vps(&v.hostname)
                .await
                .filter(|x| x["status"] == "active" && x["agent_state"]["mode"] == mode)
        },
    )
    .await
}

/// Replaces the relay's routes with `routes` (a JSON array), as an operator does.
async fn put_routes(cluster: &MeshCluster, relay_id: &str, routes: Value) {
    let (st, b) = cluster
        .api
        .call(
            "PUT",
            &format!("/api/vps/{relay_id}/envoy-routes"),
            Some(json!({ "routes": routes })),
        )
        .await;
    assert_eq!(st, 200, "{b}");
}

/// The relay's route plan for `mode` (`current`, `mesh` or `classic`).
async fn route_plan(cluster: &MeshCluster, relay_id: &str, mode: &str) -> Value {
    let (st, plan) = cluster
        .api
        .call(
            "GET",
            &format!("/api/vps/{relay_id}/envoy-routes/plan?mode={mode}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{plan}");
    plan
}

/// Waits until the plan for the relay's current mode shows every active route's listener
/// live (from the agent's report of its Envoy); returns the plan.
async fn wait_live(cluster: &MeshCluster, relay_id: &str, mode: &str) -> Value {
    let mut last = Value::Null;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let plan = route_plan(cluster, relay_id, "current").await;
        let routes = plan["routes"].as_array().cloned().unwrap_or_default();
        if plan["agent_mode"] == mode
            && !routes.is_empty()
            && routes.iter().all(|r| r["listener"]["state"] == "live")
        {
            return plan;
        }
        last = plan;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("route listeners not all live in {mode} mode: {last:#}");
}

/// The route to the exit pool listens on a port below 1024, as relays do.
const POOL_PORT: u16 = 443;

/// pilot-agent and Envoy of `v`'s namespace: (exe name, pid, real uid, CapAmb, CapEff), sorted.
fn proxy_identity(v: &MeshVps) -> Vec<(String, u32, String, String, String)> {
    let mut out = Vec::new();
    for (pid, exe) in v.ns.processes() {
        let name = exe.file_name().unwrap().to_string_lossy().to_string();
        if name != "pilot-agent" && name != "envoy-bin" {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        out.push((name, pid, field("Uid:"), field("CapAmb:"), field("CapEff:")));
    }
    out.sort();
    out
}

/// The test bed of a chain: the cluster, two `xrayr` exits of one provider in two countries
/// (DE, NL) with their application, and a `vpn-relay` relay of another provider whose agent
/// runs in the given mode (proxy as `nobody`); `ids` in that order.
struct Chain {
    exits: [MeshVps; 2],
    relay: MeshVps,
    ids: Vec<String>,
    _apps: Vec<sigma_e2e::Proc>,
    cluster: MeshCluster,
}

async fn chain(tag: &str, mode: Mode) -> Chain {
    let dir = work_dir(tag);
    let cluster = MeshCluster::up(&dir).await;
    let api = &cluster.api;
    let (st, b) = api
        .call("POST", "/api/providers", Some(json!({"name": "ovh"})))
        .await;
    assert_eq!(st, 201, "{b}");
    // The relay's purpose is in the mesh and calls nothing itself.
    let (st, b) = api
        .call(
            "PATCH",
            "/api/purposes/vpn-relay",
            Some(json!({"mesh": {"enabled": true}})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let exit_token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 2, "ttl_seconds": 3600}))
        .await;
    let relay_token = api
        .token(json!({"purpose": "vpn-relay", "provider": "ovh", "country": "FI", "max_uses": 1, "ttl_seconds": 3600}))
        .await;
    let exits = [
        cluster.start_vps(&dir, 51, "exit-51.e2e.sigma", &exit_token),
        cluster.start_vps(&dir, 52, "exit-52.e2e.sigma", &exit_token),
    ];
    let apps: Vec<_> = exits
        .iter()
        .map(|e| e.serve_http_echo(APP_PORT, &dir))
        .collect();
    // The relay's proxy runs unprivileged, as on a real VPS, so its route on 443 proves the
    // agent's CAP_NET_BIND_SERVICE grant.
    let relay = cluster.start_vps_with(
        &dir,
        53,
        "relay-53.e2e.sigma",
        &relay_token,
        mode,
        Some("nobody"),
    );
    let mut ids = Vec::new();
    for v in &exits {
        ids.push(
            cluster.wait_meshed(v).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The exits are in two countries (the pool spans both; a route may narrow it to one).
    let (st, b) = api
        .call(
            "PATCH",
            &format!("/api/vps/{}", ids[1]),
            Some(json!({"country": "NL"})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let relay_vps = match mode {
        Mode::Mesh => cluster.wait_meshed(&relay).await,
        Mode::Classic => wait_mode(&cluster, &relay, "classic").await,
    };
    ids.push(relay_vps["id"].as_str().unwrap().to_string());
    Chain {
        exits,
        relay,
        ids,
        _apps: apps,
        cluster,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_forwards_user_streams_to_an_exit_pool_over_mtls_in_mesh_mode() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "nft", "iptables-legacy-save"]) {
        return;
    }
    let c = chain("relay-chain", Mode::Mesh).await;
    let (api, exits, relay, ids) = (&c.cluster.api, &c.exits, &c.relay, &c.ids);
    let relay_id = &ids[2];

    // The chain: a pool route to both exits, a route to one exit, and a route to a backend
    // outside the mesh (the second exit's application port, reached as plain TCP).
    let t0 = Instant::now();
    put_routes(
        &c.cluster,
        relay_id,
        json!([
            {"name": "exits", "listen_port": 443, "target": {"purpose": "xrayr", "port": "http-api"}},
            {"name": "one", "listen_port": 9444, "target": {"vps": "exit-51.e2e.sigma", "port": "http-api"}},
            {"name": "ext", "listen_port": 9445, "backend_host": exits[1].ns.ip, "backend_port": APP_PORT},
            {"name": "de", "listen_port": 9447, "target": {"purpose": "xrayr", "port": "http-api", "countries": ["DE"]}},
        ]),
    )
    .await;
    let plan = route_plan(&c.cluster, relay_id, "current").await;
    assert_eq!(plan["agent_mode"], "mesh", "{plan}");
    for r in plan["routes"].as_array().unwrap() {
        assert_eq!(r["runs"], "mesh", "{r}");
        assert_eq!(r["listen_address"], relay.ns.ip.as_str(), "{r}");
    }

    // pilot-agent and Envoy run as nobody with CAP_NET_BIND_SERVICE as their only capability.
    let before = proxy_identity(relay);
    for (exe, _pid, uid, cap_amb, cap_eff) in &before {
        assert_eq!(uid, "65534", "{exe} runs as nobody");
        assert_eq!(
            cap_amb, "0000000000000400",
            "{exe}: only CAP_NET_BIND_SERVICE, ambient"
        );
        assert_eq!(
            cap_eff, "0000000000000400",
            "{exe}: only CAP_NET_BIND_SERVICE, effective"
        );
    }
    assert!(
        before.iter().any(|p| p.0 == "pilot-agent") && before.iter().any(|p| p.0 == "envoy-bin"),
        "pilot-agent and Envoy in the relay's namespace: {before:?}"
    );

    // Users reach both exits through the relay; each exit's application sees its own Envoy on
    // loopback (the stream came through its ingress listener, so over the mesh).
    let both: BTreeSet<String> = exits.iter().map(|e| e.hostname.clone()).collect();
    wait_chain(relay, POOL_PORT, 20, &both, "127.0.0.1", "the pool route").await;
    eprintln!(
        "route stored -> chain answering through the mesh: {:.2} s (first routes of the relay: Sidecar swap, istiod push)",
        (t0.elapsed()).as_secs_f64()
    );
    let one: BTreeSet<String> = BTreeSet::from([exits[0].hostname.clone()]);
    wait_chain(relay, 9444, 5, &one, "127.0.0.1", "the VPS route").await;
    // The external backend is plain TCP from the relay's address.
    let second: BTreeSet<String> = BTreeSet::from([exits[1].hostname.clone()]);
    wait_chain(relay, 9445, 5, &second, &relay.ns.ip, "the external route").await;
    // The pool narrowed to one country: only the German exit.
    wait_chain(relay, 9447, 10, &one, "127.0.0.1", "the pool of DE only").await;
    // The plan for today's mode shows each listener live, from the agent's reading of the
    // listeners its Envoy has bound.
    let t = Instant::now();
    wait_live(&c.cluster, relay_id, "mesh").await;
    eprintln!(
        "listeners reported live {:.2} s after the chain answered",
        t.elapsed().as_secs_f64()
    );
    // `sigmactl mesh doctor` covers the relay's routes.
    let (_, links) = c.cluster.doctor(&relay.hostname, None);
    let l = links
        .iter()
        .find(|l| l["link"] == "route-listeners")
        .unwrap_or_else(|| panic!("no route-listeners link: {links:?}"));
    assert_eq!(l["result"], "ok", "{l}");
    assert!(
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exits:443") && r.contains("mesh mode")),
        "{l}"
    );

    // The hop to the exits is mTLS with istiod's certificates: the relay's Envoy counts TLS
    // handshakes on the route's cluster.
    let entry = sigma_mesh::model::workload_entry_name(&relay.hostname);
    let cluster_name = format!("outbound|{POOL_PORT}||route-{POOL_PORT}.{entry}.sigma.mesh");
    let counter = |cluster: &str, name: &str| {
        stat(relay, cluster, name).unwrap_or_else(|| panic!("no counter {name} on {cluster}"))
    };
    let handshakes = counter(&cluster_name, "ssl.handshake");
    assert!(handshakes > 0, "no TLS handshake on {cluster_name}");
    // The external route's cluster carried connections (so its counters are read) and has no
    // TLS context at all: Envoy keeps no ssl counters for it.
    let ext_name = format!("outbound|9445||route-9445.{entry}.sigma.mesh");
    assert!(counter(&ext_name, "upstream_cx_total") > 0);
    assert_eq!(
        stat(relay, &ext_name, "ssl.handshake"),
        None,
        "the external backend is plain TCP"
    );
    eprintln!(
        "relay's Envoy, {cluster_name}: {handshakes} mTLS handshakes, {} connections, {} bytes sent",
        counter(&cluster_name, "upstream_cx_total"),
        counter(&cluster_name, "upstream_cx_tx_bytes_total")
    );

    // 100 parallel user connections through the chain, every one answered.
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let ip = relay.ns.ip.clone();
            std::thread::spawn(move || user_call(&ip, POOL_PORT))
        })
        .collect();
    let answers: Vec<_> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 100 failed: {failed:?}",
        failed.len()
    );

    // The exits see the relay's SPIFFE identity: Envoy's RBAC on an exit's ingress listener,
    // from an AuthorizationPolicy on the exits, matches the peer certificate of the hop. Allowing
    // only another identity stops the chain (the control); allowing the relay's
    // (spiffe://cluster.local/ns/sigma/sa/sigma-vm) lets it through again.
    let policies = c.cluster.cp.istio_security("AuthorizationPolicy", "sigma");
    let policy = |principal: &str| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "exits-from-relays", "namespace": "sigma"},
               "spec": {"selector": {"matchLabels": {"app": "xrayr"}}, "action": "ALLOW",
                        "rules": [{"from": [{"source": {"principals": [principal]}}]}]}})
    };
    c.cluster
        .cp
        .apply_object(&policies, policy("cluster.local/ns/sigma/sa/someone-else"))
        .await;
    let relay_ip = relay.ns.ip.clone();
    sigma_e2e::wait_for(
        "the exits to refuse an identity the policy does not allow",
        Duration::from_secs(60),
        || async { user_call(&relay_ip, POOL_PORT).is_err().then_some(()) },
    )
    .await;
    c.cluster
        .cp
        .apply_object(&policies, policy("cluster.local/ns/sigma/sa/sigma-vm"))
        .await;
    wait_chain(
        relay,
        POOL_PORT,
        20,
        &both,
        "127.0.0.1",
        "the chain with only the relay's identity allowed",
    )
    .await;
    policies
        .delete("exits-from-relays", &Default::default())
        .await
        .expect("delete the AuthorizationPolicy");

    // Prometheus, discovering the Envoys through sigma-api, has the relay's per-VPS connection
    // and byte series for the hop, labelled with the relay's VPS, purpose, provider and
    // country. (Istio's own proxy would add istio_tcp_connections_opened_total,
    // istio_tcp_sent_bytes_total and istio_tcp_received_bytes_total with source_workload the
    // relay's entry and destination_workload each exit's: the series Kiali draws its TCP edges
    // from; upstream Envoy lacks the filters that make them.)
    let prom = sigma_e2e::prometheus::Prometheus::start(
        &c.cluster.cp.dir,
        &format!("{}/api/prometheus/targets", api.url),
        sigma_testkit::ADMIN_KEY,
    )
    .await;
    for s in prom.upstream_series(&cluster_name, &relay.hostname).await {
        assert_eq!(s["metric"]["purpose"], "vpn-relay", "{s}");
        assert_eq!(s["metric"]["provider"], "ovh", "{s}");
        assert_eq!(s["metric"]["country"], "FI", "{s}");
        assert_eq!(s["metric"]["vps_id"], relay_id.as_str(), "{s}");
        eprintln!("Prometheus: {s}");
    }
    drop(prom);

    // No packet-filter rule on any VPS: nothing is intercepted.
    for v in exits.iter().chain([relay]) {
        assert_eq!(v.ns.filter_rules(), Vec::<String>::new(), "{}", v.hostname);
    }

    // Retiring one exit sends new connections to the other.
    let t = Instant::now();
    let (st, b) = api
        .call("POST", &format!("/api/vps/{}/retire", ids[0]), None)
        .await;
    assert!(st == 200 || st == 202, "{st} {b}");
    wait_chain(
        relay,
        POOL_PORT,
        10,
        &second,
        "127.0.0.1",
        "the pool without the retired exit",
    )
    .await;
    eprintln!(
        "exit retired -> pool without it on the relay: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // A route change reaches the relay's Envoy: a new route's listener goes live.
    let t = Instant::now();
    let (st, b) = api
        .call(
            "POST",
            &format!("/api/vps/{relay_id}/envoy-routes"),
            Some(json!({"name": "later", "listen_port": 993,
                        "target": {"vps": "exit-52.e2e.sigma", "port": "http-api"}})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    wait_chain(relay, 993, 1, &second, "127.0.0.1", "the added route").await;
    eprintln!(
        "route added -> listener live on the relay's Envoy: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Both low ports were bound by the same unprivileged Envoy, with no restart in between.
    assert_eq!(
        proxy_identity(relay),
        before,
        "the relay's proxy restarted or changed user"
    );
}

/// Calls `relay:port` every 25 ms from outside until stopped; each answer with its time and
/// the peer the exit's application saw (the relay's address in classic mode, the exit's own
/// Envoy on loopback in mesh mode).
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Prober {
    fn start(addr: &str, port: u16) -> Prober {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let addr = addr.to_string();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let r = user_call_timeout(&addr, port, "1").map(|(_, peer)| peer);
                seen.push((Instant::now(), r));
                std::thread::sleep(Duration::from_millis(25));
            }
            seen
        });
        Prober { stop, thread }
    }

    /// Stops it: the forwarding gap across a switch from a path whose answers show peer
    /// `from` to one whose answers show `to` (last answer of the old path to first answer of
    /// the new one), and how many calls failed in between.
    fn gap(self, from: &str, to: &str) -> (Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = self.thread.join().unwrap();
        let first_new = seen
            .iter()
            .position(|(_, r)| r.as_deref() == Ok(to))
            .unwrap_or_else(|| panic!("no answer through the new path ({to}): {seen:?}"));
        let last_old = seen[..first_new]
            .iter()
            .rposition(|(_, r)| r.as_deref() == Ok(from))
            .unwrap_or_else(|| panic!("no answer through the old path ({from}) before the switch"));
        let failed = seen[last_old..first_new]
            .iter()
            .filter(|(_, r)| r.is_err())
            .count();
        // What the users saw meanwhile: each change of answer, with its time from the last old
        // answer (the first few, enough to tell refused from reset).
        let mut kinds: Vec<(String, f64)> = Vec::new();
        for (t, r) in &seen[last_old..=first_new] {
            let k = match r {
                Ok(peer) => format!("answered, peer {peer}"),
                Err(e) => e.trim().to_string(),
            };
            if kinds.last().is_none_or(|(last, _)| *last != k) {
                kinds.push((k, (*t - seen[last_old].0).as_secs_f64()));
            }
        }
        for (k, at) in kinds.iter().take(6) {
            eprintln!("  +{at:.2} s: {k}");
        }
        (seen[first_new].0 - seen[last_old].0, failed)
    }
}

/// [`user_call`] with curl's whole-call limit `secs`.
fn user_call_timeout(addr: &str, port: u16, secs: &str) -> Result<(String, String), String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", secs, &format!("http://{addr}:{port}/")])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((
        v["host"].as_str().unwrap_or_default().to_string(),
        v["peer"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The same relay in classic mode, switched to mesh mode and back the way the installer does
/// (agent stopped, started in the other mode with its key): its routes keep forwarding, and
/// the gap each way is measured with a user calling every 25 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_keeps_its_routes_across_a_switch_to_mesh_mode_and_back() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "nft", "iptables-legacy-save"]) {
        return;
    }
    let mut c = chain("relay-switch", Mode::Classic).await;
    let relay_id = c.ids[2].clone();
    put_routes(
        &c.cluster,
        &relay_id,
        json!([
            {"name": "exits", "listen_port": POOL_PORT, "target": {"purpose": "xrayr", "port": "http-api"}},
        ]),
    )
    .await;
    let plan = route_plan(&c.cluster, &relay_id, "mesh").await;
    assert_eq!(plan["agent_mode"], "classic", "{plan}");
    assert_eq!(
        plan["routes"][0]["runs"], "mesh",
        "carried after a switch: {plan}"
    );

    // Classic mode: the relay's own Envoy (sigma-agent's xDS) connects to each exit's
    // application directly, which sees the relay's address.
    let both: BTreeSet<String> = c.exits.iter().map(|e| e.hostname.clone()).collect();
    let relay_ip = c.relay.ns.ip.clone();
    wait_chain(
        &c.relay,
        POOL_PORT,
        20,
        &both,
        &relay_ip,
        "the pool route in classic mode",
    )
    .await;
    wait_live(&c.cluster, &relay_id, "classic").await;

    // The mesh side is settled before the switch, as it is for long-lived exits: istiod holds
    // both exits as endpoints of the route's ServiceEntry. (Exits that joined seconds ago
    // reach istiod's endpoint index only after several seconds; measuring that would blame
    // the switch for it.)
    let entry = sigma_mesh::model::workload_entry_name(&c.relay.hostname);
    let route_host = format!("route-{POOL_PORT}.{entry}.sigma.mesh");
    let exit_ips: Vec<String> = c.exits.iter().map(|e| e.ns.ip.clone()).collect();
    let t = Instant::now();
    c.cluster
        .wait_istiod_endpoints(&route_host, &exit_ips)
        .await;
    eprintln!(
        "istiod holds both exits for {route_host} {:.2} s after the classic chain answered",
        t.elapsed().as_secs_f64()
    );

    // Classic -> mesh.
    let probe = Prober::start(&relay_ip, POOL_PORT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    c.cluster.switch(&mut c.relay, Mode::Mesh);
    wait_mode(&c.cluster, &c.relay, "mesh").await;
    wait_chain(
        &c.relay,
        POOL_PORT,
        20,
        &both,
        "127.0.0.1",
        "the pool route in mesh mode",
    )
    .await;
    let switched = t.elapsed();
    let (gap, failed) = probe.gap(&relay_ip, "127.0.0.1");
    eprintln!(
        "classic -> mesh: forwarding gap {:.2} s ({failed} user calls failed), switch done (pool answering over mTLS) after {:.2} s",
        gap.as_secs_f64(),
        switched.as_secs_f64()
    );
    // The hop is mTLS now.
    let cluster_name = format!("outbound|{POOL_PORT}||{route_host}");
    assert!(
        stat(&c.relay, &cluster_name, "ssl.handshake").is_some_and(|n| n > 0),
        "no mTLS handshake on {cluster_name}"
    );
    wait_live(&c.cluster, &relay_id, "mesh").await;

    // Mesh -> classic.
    let probe = Prober::start(&relay_ip, POOL_PORT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    c.cluster.switch(&mut c.relay, Mode::Classic);
    wait_mode(&c.cluster, &c.relay, "classic").await;
    wait_chain(
        &c.relay,
        POOL_PORT,
        20,
        &both,
        &relay_ip,
        "the pool route in classic mode again",
    )
    .await;
    let switched = t.elapsed();
    let (gap, failed) = probe.gap("127.0.0.1", &relay_ip);
    eprintln!(
        "mesh -> classic: forwarding gap {:.2} s ({failed} user calls failed), switch done after {:.2} s",
        gap.as_secs_f64(),
        switched.as_secs_f64()
    );
    wait_live(&c.cluster, &relay_id, "classic").await;
    // Nothing of the mesh is left running on the relay.
    let left: Vec<_> = c
        .relay
        .ns
        .processes()
        .into_iter()
        .filter(|(_, exe)| exe.ends_with("pilot-agent"))
        .collect();
    assert!(left.is_empty(), "pilot-agent still runs: {left:?}");
}

/// Route change in sigma-api -> listener live on the relay's Envoy in mesh mode (through the
/// reconciler, the API server and istiod), over 50 changes: each moves a route to a new listen
/// port and times until a user connection to the new port is answered by the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: prints figures; run with --ignored"]
async fn route_change_to_live_listener() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "nft", "iptables-legacy-save"]) {
        return;
    }
    const N: usize = 50;
    let c = chain("relay-bench", Mode::Mesh).await;
    let (api, relay) = (&c.cluster.api, &c.relay);
    let relay_id = &c.ids[2];
    let exit: BTreeSet<String> = BTreeSet::from([c.exits[0].hostname.clone()]);
    let (st, r) = api
        .call(
            "POST",
            &format!("/api/vps/{relay_id}/envoy-routes"),
            Some(json!({"name": "moving", "listen_port": 9500,
                        "target": {"vps": "exit-51.e2e.sigma", "port": "http-api"}})),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let route = r["id"].as_str().unwrap().to_string();
    wait_chain(relay, 9500, 1, &exit, "127.0.0.1", "the first route").await;
    let mut ms = Vec::with_capacity(N);
    for i in 1..=N {
        let port = 9500 + i as u16;
        let t = Instant::now();
        let (st, b) = api
            .call(
                "PATCH",
                &format!("/api/envoy-routes/{route}"),
                Some(json!({"listen_port": port})),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        // Poll quickly: one connection every 20 ms until the exit answers on the new port.
        loop {
            if user_call(&relay.ns.ip, port)
                .is_ok_and(|(h, p)| exit.contains(&h) && p == "127.0.0.1")
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "change {i} never went live"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((p * N as f64).ceil() as usize).clamp(1, N) - 1];
    eprintln!(
        "route change -> listener live on the relay's Envoy (mesh mode, {N} changes): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.50),
        q(0.90),
        q(0.99),
        sorted[N - 1]
    );
}

/// One connection through `addr:port` downloading `bytes` from the exit's application:
/// MB/s (10^6 bytes per second) over the whole transfer.
fn bulk_mb_per_s(addr: &str, port: u16, bytes: u64) -> f64 {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect((addr, port)).unwrap();
    // HTTP/1.1 with close: the exit's ingress listener serves an HTTP port, and Envoy refuses
    // HTTP/1.0 (426) by default.
    s.write_all(
        format!("GET /bytes/{bytes} HTTP/1.1\r\nhost: exit\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert!(
        got > bytes,
        "short transfer: {got} of {bytes} bytes (and headers)"
    );
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// New connections per second through `addr:port`, each one request and its answer, from
/// `threads` threads for `secs` seconds.
fn conns_per_s(addr: &str, port: u16, threads: usize, secs: u64) -> f64 {
    use std::io::{Read, Write};
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let end = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < end {
                    let mut s = std::net::TcpStream::connect((addr.as_str(), port)).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nhost: exit\r\nconnection: close\r\n\r\n")
                        .unwrap();
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).unwrap();
                    assert!(
                        out.starts_with(b"HTTP/1.1 200") || out.starts_with(b"HTTP/1.0 200"),
                        "{}",
                        String::from_utf8_lossy(&out)
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / t.elapsed().as_secs_f64()
}

/// Relay throughput in classic and mesh mode on the same machine: MB/s over one connection
/// (256 MiB, median of 3) and connections/s (4 threads, 5 s), through a VPS route on 443 to one
/// exit. Classic: user -> relay's Envoy -> exit's application (plain TCP). Mesh: user -> the
/// relay's Envoy -> mTLS -> the exit's Envoy -> its application. All of it shares the
/// machine's 2 cores, the Python application included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: cargo test -p sigma-e2e --test relay -- --ignored --nocapture relay_throughput"]
async fn relay_throughput_classic_vs_mesh() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "nft", "iptables-legacy-save"]) {
        return;
    }
    let mut c = chain("relay-throughput", Mode::Classic).await;
    let relay_id = c.ids[2].clone();
    put_routes(
        &c.cluster,
        &relay_id,
        json!([
            {"name": "one", "listen_port": POOL_PORT, "target": {"vps": "exit-51.e2e.sigma", "port": "http-api"}},
        ]),
    )
    .await;
    let one = BTreeSet::from([c.exits[0].hostname.clone()]);
    let relay_ip = c.relay.ns.ip.clone();
    let measure = |what: &str| {
        let mut mb: Vec<f64> = (0..3)
            .map(|_| bulk_mb_per_s(&relay_ip, POOL_PORT, 256 << 20))
            .collect();
        mb.sort_by(f64::total_cmp);
        let cps = conns_per_s(&relay_ip, POOL_PORT, 4, 5);
        eprintln!(
            "{what}: one connection {:.0} MB/s (median of 3 x 256 MiB; {:.0}..{:.0}), {cps:.0} connections/s",
            mb[1], mb[0], mb[2]
        );
    };
    wait_chain(&c.relay, POOL_PORT, 5, &one, &relay_ip, "classic").await;
    measure("classic (relay Envoy -> exit application)");
    let entry = sigma_mesh::model::workload_entry_name(&c.relay.hostname);
    c.cluster
        .wait_istiod_endpoints(
            &format!("route-{POOL_PORT}.{entry}.sigma.mesh"),
            std::slice::from_ref(&c.exits[0].ns.ip),
        )
        .await;
    c.cluster.switch(&mut c.relay, Mode::Mesh);
    wait_chain(&c.relay, POOL_PORT, 5, &one, "127.0.0.1", "mesh").await;
    measure("mesh (relay Envoy -> mTLS -> exit Envoy -> exit application)");
}

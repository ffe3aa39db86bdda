//! A relay chain in mesh mode, with the real control plane (kube-apiserver, istiod, pilot-agent
//! and Envoy on every VPS): a user outside the mesh (the test process, on the host side of the
//! VPS links) connects to the relay's public address and `listen_port`; the relay's
//! istiod-managed Envoy forwards over mTLS to the exits' ingress listeners, which hand the
//! stream to the exits' application on loopback. Nothing on the relay is intercepted: the
//! route's listener is an egress listener bound to the relay's address, rendered by sigma from
//! the route stored in sigma-api.
//!
//! The exits are VPS of the `xrayr` purpose (its `http-api` port, application on 8080,
//! answering `{"host", "peer"}`); the relay is a `vpn-relay` VPS of another provider (another
//! Istio network).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_e2e::mesh::{MeshCluster, MeshVps};
use sigma_e2e::work_dir;

/// Where the exits' application listens (the `xrayr` purpose's `http-api` port).
const APP_PORT: u16 = 8080;

/// One user connection to `addr:port` (from outside the mesh): `(host, peer)` the exit's
/// application answered with.
fn user_call(addr: &str, port: u16) -> Result<(String, String), String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5", &format!("http://{addr}:{port}/")])
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

/// The test bed of a chain: the cluster, two `xrayr` exits with their application, and a
/// `vpn-relay` relay of another provider, all in mesh mode; `ids` in that order.
struct Chain {
    exits: [MeshVps; 2],
    relay: MeshVps,
    ids: Vec<String>,
    _apps: Vec<sigma_e2e::Proc>,
    cluster: MeshCluster,
}

async fn chain(tag: &str) -> Chain {
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
    let relay = cluster.start_vps(&dir, 53, "relay-53.e2e.sigma", &relay_token);
    let mut ids = Vec::new();
    for v in exits.iter().chain([&relay]) {
        ids.push(
            cluster.wait_meshed(v).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
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
    let c = chain("relay-chain").await;
    let (api, exits, relay, ids) = (&c.cluster.api, &c.exits, &c.relay, &c.ids);
    let relay_id = &ids[2];

    // The chain: a pool route to both exits, a route to one exit, and a route to a backend
    // outside the mesh (the second exit's application port, reached as plain TCP).
    let t0 = Instant::now();
    let (st, b) = api
        .call(
            "PUT",
            &format!("/api/vps/{relay_id}/envoy-routes"),
            Some(json!({"routes": [
                {"name": "exits", "listen_port": 9443, "target": {"purpose": "xrayr", "port": "http-api"}},
                {"name": "one", "listen_port": 9444, "target": {"vps": "exit-51.e2e.sigma", "port": "http-api"}},
                {"name": "ext", "listen_port": 9445, "backend_host": exits[1].ns.ip, "backend_port": APP_PORT},
            ]})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, plan) = api
        .call(
            "GET",
            &format!("/api/vps/{relay_id}/envoy-routes/plan"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["agent_mode"], "mesh", "{plan}");
    for r in plan["routes"].as_array().unwrap() {
        assert_eq!(r["runs"], "mesh", "{r}");
        assert_eq!(r["listen_address"], relay.ns.ip.as_str(), "{r}");
    }

    // Users reach both exits through the relay; each exit's application sees its own Envoy on
    // loopback (the stream came through its ingress listener, so over the mesh).
    let both: BTreeSet<String> = exits.iter().map(|e| e.hostname.clone()).collect();
    wait_chain(relay, 9443, 20, &both, "127.0.0.1", "the pool route").await;
    eprintln!(
        "route stored -> chain answering through the mesh: {:.2} s (first routes of the relay: Sidecar swap, istiod push)",
        (t0.elapsed()).as_secs_f64()
    );
    let one: BTreeSet<String> = BTreeSet::from([exits[0].hostname.clone()]);
    wait_chain(relay, 9444, 5, &one, "127.0.0.1", "the VPS route").await;
    // The external backend is plain TCP from the relay's address.
    let second: BTreeSet<String> = BTreeSet::from([exits[1].hostname.clone()]);
    wait_chain(relay, 9445, 5, &second, &relay.ns.ip, "the external route").await;

    // The hop to the exits is mTLS with istiod's certificates: the relay's Envoy counts TLS
    // handshakes on the route's cluster.
    let entry = sigma_mesh::model::workload_entry_name(&relay.hostname);
    let cluster_name = format!("outbound|9443||route-9443.{entry}.sigma.mesh");
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
            std::thread::spawn(move || user_call(&ip, 9443))
        })
        .collect();
    let answers: Vec<_> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 100 failed: {failed:?}",
        failed.len()
    );

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
        9443,
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
            Some(json!({"name": "later", "listen_port": 9446,
                        "target": {"vps": "exit-52.e2e.sigma", "port": "http-api"}})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    wait_chain(relay, 9446, 1, &second, "127.0.0.1", "the added route").await;
    eprintln!(
        "route added -> listener live on the relay's Envoy: {:.2} s",
        t.elapsed().as_secs_f64()
    );
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
    let c = chain("relay-bench").await;
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

//! Traffic through the mesh, proven against the real components: an XrayR stand-in on a VPS
//! (purpose `xrayr`, mesh egress to `xboard.sigma.svc.cluster.local:80`) calls Xboard's three
//! paths by name; the name resolves through sigma's hosts block in the VPS's namespace to the
//! VPS Envoy's loopback listener, which opens mTLS with the VPS's own certificate to the
//! east-west gateway (15443, SNI `outbound_.80_._.xboard.sigma.svc.cluster.local`,
//! `AUTO_PASSTHROUGH`), which passes it to Xboard's sidecar, which terminates it and hands the
//! request to Xboard with the caller's SPIFFE identity in `x-forwarded-client-cert`.
//!
//! The cluster side is the one of [`sigma_e2e::eastwest`]: the VPS's namespace has a route to
//! the gateway and to nothing else of the cluster, so every byte to istiod and Xboard crosses
//! the gateway (asserted below, with controls).
//!
//! What upstream Envoy cannot produce: the `istio_requests_total` family (and every other
//! `istio_*` standard metric: `istio_request_duration_milliseconds`,
//! `istio_tcp_sent_bytes_total`, …). Those come from the `istio.stats` filter
//! (`stats.PluginConfig`), which exists only in Istio's own proxy build; upstream Envoy 1.40
//! refuses any listener that carries it (scripts/e2e/NOTES.md), so no Telemetry resource asks
//! for it here, and istiod runs with `PILOT_ENABLE_METADATA_EXCHANGE=false` (the peer labels
//! those metrics carry come from metadata exchange, also Istio-only). What is asserted instead
//! is Envoy's own per-upstream counter, `envoy_cluster_upstream_rq{cluster_name=
//! "outbound|80||xboard.sigma.svc.cluster.local", response_code}` of each VPS's Envoy, with the
//! VPS, purpose and country labels sigma-api's service discovery gives the target. Istio's
//! bootstrap leaves `cluster.outbound|…` stats out unless `proxyStatsMatcher` includes them;
//! sigma's bootstrap bundle adds `cluster.outbound|` (and `control_plane`) to the mesh
//! config's `defaultConfig.proxyStatsMatcher.inclusionPrefixes`, and the cluster's mesh
//! ConfigMap here has no matcher, so the series exist because of sigma's bundle. For the same
//! reason `sigmactl mesh doctor --prometheus` reports its `xboard-requests` link (a query on
//! `istio_requests_total`) as a warning here, while every other link is ok. Nothing sigma
//! generates (Sidecar, DestinationRule, ServiceEntry,
//! WorkloadEntry, bundle) touches Telemetry or the stats filters, so Istio's own proxy emits
//! `istio_requests_total` for the same edges.
//!
//! A second scenario has the `xrayr` purpose serve its `http-api` port to the mesh: a VPS of
//! another purpose (`monitor`) and another provider (so another Istio network) calls
//! `xrayr.sigma.mesh:8080`, which its Envoy sends (mTLS, straight to the VPS: a VPS network
//! has no gateway) to the ingress listeners of two `xrayr` VPS, which forward to the
//! application on loopback.

use std::time::Duration;

use serde_json::{Value, json};
use sigma_e2e::eastwest::{GATEWAY_IP, ISTIOD_IP, XBOARD_DIRECT_PORT, XBOARD_IP, XBOARD_PORT};
use sigma_e2e::mesh::{MeshCluster, MeshVps};
use sigma_e2e::{Prometheus, wait_for, work_dir};
use sigma_testkit::ADMIN_KEY;

const XBOARD_HOST: &str = "xboard.sigma.svc.cluster.local";
const XBOARD_CLUSTER: &str = "outbound|80||xboard.sigma.svc.cluster.local";
const VPS_IDENTITY: &str = "spiffe://cluster.local/ns/sigma/sa/sigma-vm";

/// XrayR's three calls to Xboard, by name: `(method, path, status)` of each.
fn xrayr_calls(v: &MeshVps) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (method, path, body) in [
        ("GET", "/api/v1/server/config", None),
        (
            "POST",
            "/api/v1/server/push",
            Some(r#"[{"user_id":1,"u":1024,"d":2048}]"#),
        ),
        ("POST", "/api/v1/alive", Some(r#"{"1":["192.0.2.7"]}"#)),
    ] {
        let url = format!("http://{XBOARD_HOST}{path}?node_id=1&node_type=vless");
        let mut args = vec![
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{remote_ip}",
            "-X",
            method,
        ];
        if let Some(b) = body {
            args.extend(["-H", "content-type: application/json", "--data", b]);
        }
        args.push(&url);
        let (_, stdout, stderr) = v.curl(&args);
        out.push((
            method.to_string(),
            path.to_string(),
            format!("{stdout} {stderr}"),
        ));
    }
    out
}

/// Whether a TCP connection from inside the VPS's namespace to `addr:port` is accepted
/// (`Err` with why not).
fn connects(v: &MeshVps, addr: &str, port: u16) -> Result<(), String> {
    let out =
        v.ns.command("python3")
            .args([
                "-c",
                &format!("import socket; socket.create_connection(('{addr}', {port}), timeout=3)"),
            ])
            .output()
            .expect("run python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A plaintext request from the host straight to Xboard's mesh port (its sidecar captures
/// it): the status, or the error.
fn plaintext_to_xboard() -> Result<u16, String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{XBOARD_IP}:{XBOARD_PORT}/api/v1/alive"),
            "-X",
            "POST",
        ])
        .output()
        .expect("run curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if out.status.success() && code != 0 {
        Ok(code)
    } else {
        Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Envoy's admin stat `name` (exact) from `/stats`, 0 when absent.
fn stat(admin_stats: &str, name: &str) -> u64 {
    admin_stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Envoy's admin stat `name` of cluster `cluster`. Istio gives each cluster an observability
/// name ending in `;` (`outbound|80||host;`), which is what `/stats` prints.
fn cluster_stat(admin_stats: &str, cluster: &str, name: &str) -> u64 {
    stat(admin_stats, &format!("cluster.{cluster};.{name}"))
        .max(stat(admin_stats, &format!("cluster.{cluster}.{name}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xrayr_calls_xboard_through_the_east_west_gateway_with_its_own_identity() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "prometheus", "promtool"]) {
        return;
    }
    let dir = work_dir("traffic");
    let mut cluster = MeshCluster::up(&dir).await;
    let api = &cluster.api;
    let token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 1, "ttl_seconds": 3600}))
        .await;
    let v = cluster.start_vps(&dir, 41, "xrayr-41.e2e.sigma", &token);
    let vps = cluster.wait_meshed(&v).await;
    assert_eq!(vps["purpose"], "xrayr", "{vps}");

    // Topology: from the VPS, the gateway answers on both ports; istiod's and Xboard's
    // addresses have no route, and the host side of the VPS's own link (where the host would
    // accept packets for any of its addresses) has no istiod listening.
    for port in [15012, 15443] {
        connects(&v, GATEWAY_IP, port)
            .unwrap_or_else(|e| panic!("control: the gateway's {port} from the VPS: {e}"));
    }
    for (addr, port) in [
        (ISTIOD_IP, 15012),
        (XBOARD_IP, XBOARD_PORT),
        (XBOARD_IP, XBOARD_DIRECT_PORT),
        (v.ns.host_ip.as_str(), 15012),
    ] {
        assert!(
            connects(&v, addr, port).is_err(),
            "the VPS reaches {addr}:{port} without the gateway"
        );
    }
    // The VPS's proxy got its certificate and config through the gateway: the gateway's
    // cluster for istiod carried connections.
    let gw_stats = cluster.gateway.admin("/stats");
    let through_15012 = stat(&gw_stats, "listener.0.0.0.0_15012.downstream_cx_total");
    let istiod_cx = cluster_stat(
        &gw_stats,
        "outbound|15012||istiod.istio-system.svc.cluster.local",
        "upstream_cx_total",
    );
    assert!(
        through_15012 > 0 && istiod_cx > 0,
        "no connection through the gateway to istiod: {through_15012} in, {istiod_cx} out"
    );

    // The hosts block maps Xboard's name to a loopback listener of the VPS's Envoy.
    let hosts = std::fs::read_to_string(v.ns.hosts_file()).unwrap();
    let loopback = hosts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(XBOARD_HOST))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{XBOARD_HOST} not in the VPS's hosts block:\n{hosts}"))
        .to_string();
    assert!(loopback.starts_with("127."), "{hosts}");
    // The VPS's Envoy reaches Xboard at the gateway's 15443 (the endpoint istiod gives a
    // proxy of another network for a workload of a network with a gateway).
    let clusters = wait_for(
        "Xboard's endpoint in the VPS's Envoy",
        Duration::from_secs(60),
        || async {
            let c = v.ns.output(
                "curl",
                &["-sS", "-m", "5", "http://127.0.0.1:15000/clusters"],
            );
            c.lines()
                .any(|l| l.starts_with(&format!("{XBOARD_CLUSTER}::{GATEWAY_IP}:15443::")))
                .then_some(c)
        },
    )
    .await;
    assert!(
        !clusters
            .lines()
            .any(|l| l.starts_with(XBOARD_CLUSTER) && l.contains(XBOARD_IP)),
        "the VPS's Envoy was given Xboard's own address:\n{clusters}"
    );

    // XrayR's calls, by name: 200 each, answered through the loopback listener.
    let calls = wait_for(
        "XrayR's calls answered",
        Duration::from_secs(60),
        || async {
            let c = xrayr_calls(&v);
            c.iter()
                .all(|(_, _, r)| r.starts_with(&format!("200 {loopback}")))
                .then_some(c)
        },
    )
    .await;
    eprintln!("XrayR's calls: {calls:?}");
    // Xboard saw them with the VPS's identity, forwarded by its sidecar.
    let seen = xboard_saw(&cluster);
    for path in [
        "/api/v1/server/config",
        "/api/v1/server/push",
        "/api/v1/alive",
    ] {
        let r = seen
            .iter()
            .rev()
            .find(|r| r["path"] == path && r["status"] == 200)
            .unwrap_or_else(|| panic!("Xboard did not log {path}: {seen:?}"));
        let xfcc = r["xfcc"].as_str().unwrap_or_default();
        assert!(
            xfcc.contains(&format!("URI={VPS_IDENTITY}"))
                && xfcc.contains("By=spiffe://cluster.local/ns/sigma/sa/xboard"),
            "{path}: {r}"
        );
    }
    // The gateway carried them on 15443, through its SNI cluster for Xboard.
    let gw_stats = cluster.gateway.admin("/stats");
    let in_15443 = stat(&gw_stats, "listener.0.0.0.0_15443.downstream_cx_total");
    let to_xboard = cluster_stat(
        &gw_stats,
        "outbound_.80_._.xboard.sigma.svc.cluster.local",
        "upstream_cx_total",
    );
    assert!(
        in_15443 > 0 && to_xboard > 0,
        "the gateway carried nothing to Xboard: {in_15443} in on 15443, {to_xboard} out"
    );

    // PeerAuthentication STRICT (the shipped manifest). Control first: PERMISSIVE (no
    // PeerAuthentication) lets a plaintext request straight to Xboard's mesh port through its
    // sidecar, without a client identity.
    assert_eq!(
        plaintext_to_xboard(),
        Ok(200),
        "control: plaintext under PERMISSIVE"
    );
    let last = xboard_saw(&cluster);
    let plain = last.last().unwrap();
    assert!(
        plain["xfcc"].is_null(),
        "a plaintext request carries no identity: {plain}"
    );
    cluster
        .cp
        .apply(&sigma_e2e::cluster::repo_root().join("k8s/istio/peer-authentication-strict.yaml"));
    let refused = wait_for(
        "plaintext refused under STRICT",
        Duration::from_secs(60),
        || async { plaintext_to_xboard().err() },
    )
    .await;
    eprintln!("plaintext to Xboard under STRICT: {refused}");
    let served = xboard_saw(&cluster).len();
    let calls = xrayr_calls(&v);
    assert!(
        calls.iter().all(|(_, _, r)| r.starts_with("200 ")),
        "the VPS's mTLS calls under STRICT: {calls:?}"
    );
    assert_eq!(
        xboard_saw(&cluster).len(),
        served + 3,
        "only the VPS's 3 calls reached Xboard"
    );

    // Prometheus, discovering Envoy through sigma-api: the VPS's Envoy's upstream request
    // counts for Xboard's cluster by response code, labelled with the VPS, purpose and country.
    let sent = envoy_upstream_200(&v);
    assert!(sent >= 6, "the VPS's Envoy counted {sent} 200s from Xboard");
    let prom = Prometheus::start(
        &dir,
        &format!("{}/api/prometheus/targets", api.url),
        ADMIN_KEY,
    )
    .await;
    // Istio's cluster_name tag strips the observability name's trailing `;`.
    let q = format!(
        r#"envoy_cluster_upstream_rq{{job="envoy",cluster_name="{XBOARD_CLUSTER}",response_code="200"}}"#
    );
    let series = wait_for(
        "the VPS's Xboard request count in Prometheus",
        Duration::from_secs(90),
        || async {
            let r = prom.query(&q).await;
            r.iter()
                .any(|s| s["metric"]["hostname"] == v.hostname.as_str())
                .then_some(r)
        },
    )
    .await;
    let s = series
        .iter()
        .find(|s| s["metric"]["hostname"] == v.hostname.as_str())
        .unwrap();
    eprintln!("Prometheus: {s}");
    assert_eq!(s["metric"]["purpose"], "xrayr", "{s}");
    assert_eq!(s["metric"]["country"], "DE", "{s}");
    assert_eq!(s["metric"]["provider"], "hetzner", "{s}");
    assert_eq!(s["metric"]["vps_id"], vps["id"], "{s}");
    let value: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value >= 6.0, "{s}");
    // As stated above: upstream Envoy has no istio.stats filter.
    assert_eq!(
        prom.query("istio_requests_total").await,
        Vec::<Value>::new()
    );

    // `sigmactl mesh doctor` in the chain: every link ok (xboard-requests aside, see above).
    let prom_url = prom.url.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let links = loop {
        let (code, links) = cluster.doctor(&v.hostname, Some(&prom_url));
        let bad: Vec<&Value> = links
            .iter()
            .filter(|l| l["result"] != "ok" && l["link"] != "xboard-requests")
            .collect();
        if code == 0 && bad.is_empty() {
            break links;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "doctor: exit {code}, links not ok: {}\n(an egress-responses warning \"Envoy keeps no \
             cluster.outbound| stats\" while Prometheus above has them means the agent looks the \
             stats up without Istio's observability name: `cluster.<cluster>;.<stat>`)",
            serde_json::to_string_pretty(&bad).unwrap()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let names: Vec<&str> = links.iter().filter_map(|l| l["link"].as_str()).collect();
    for link in [
        "xds-connected",
        "hosts-block",
        "egress-listener",
        "egress-endpoints",
        "egress-responses",
        "prometheus-scrape",
    ] {
        assert!(
            names.contains(&link),
            "doctor has no {link} link: {names:?}"
        );
    }
    let xr = links
        .iter()
        .find(|l| l["link"] == "xboard-requests")
        .unwrap();
    assert_eq!(xr["result"], "warning", "{xr}");
    eprintln!(
        "doctor, working chain: {}",
        serde_json::to_string(&links).unwrap()
    );
    drop(prom);

    // The VPS's hosts block loses Xboard's name (an operator's tool rewrote /etc/hosts): the
    // doctor names `hosts-block`, and the link is ok again once the line is back.
    let hosts_path = v.ns.hosts_file();
    let original = std::fs::read_to_string(&hosts_path).unwrap();
    let without: String = original
        .lines()
        .filter(|l| !l.split_whitespace().skip(1).any(|h| h == XBOARD_HOST))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, original, "the hosts block held {XBOARD_HOST}");
    // Written in place: the namespace's /etc/hosts is a bind mount of this very inode.
    std::fs::write(&hosts_path, &without).unwrap();
    let missing = doctor_until(&cluster, &v.hostname, "hosts-block", "failed").await;
    assert!(
        missing.to_string().contains(XBOARD_HOST),
        "the link names the host: {missing}"
    );
    eprintln!("doctor, hosts entry missing: {missing}");
    std::fs::write(&hosts_path, &original).unwrap();
    doctor_until(&cluster, &v.hostname, "hosts-block", "ok").await;

    // Xboard's WorkloadEntry goes away: Service sigma/xboard selects nothing, istiod sends the
    // VPS's Envoy no endpoint, and the doctor names `egress-endpoints` with its fix.
    let entries = cluster.cp.istio("WorkloadEntry", "sigma");
    let entry = entries.get("xboard").await.expect("Xboard's WorkloadEntry");
    entries
        .delete("xboard", &Default::default())
        .await
        .expect("delete Xboard's WorkloadEntry");
    let empty = doctor_until(&cluster, &v.hostname, "egress-endpoints", "failed").await;
    assert!(
        empty.to_string().contains(XBOARD_HOST) && empty.to_string().contains("0 of"),
        "{empty}"
    );
    eprintln!("doctor, no endpoint: {empty}");
    cluster
        .cp
        .apply_object(
            &entries,
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "xboard", "namespace": "sigma",
                             "labels": entry.metadata.labels.clone().unwrap_or_default()},
                "spec": entry.data["spec"].clone(),
            }),
        )
        .await;
    doctor_until(&cluster, &v.hostname, "egress-endpoints", "ok").await;

    // The gateway stops: the doctor names the broken link, with its fix.
    cluster.gateway.agent.stop();
    let broken = wait_for(
        "the doctor to name the stopped gateway",
        Duration::from_secs(120),
        || async {
            let (code, links) = cluster.doctor(&v.hostname, None);
            let l = links.into_iter().find(|l| l["link"] == "xds-connected")?;
            (code == 1 && l["result"] == "failed").then_some(l)
        },
    )
    .await;
    let text = broken.to_string();
    assert!(
        text.contains("gateway") && text.contains("15012"),
        "{broken}"
    );
    eprintln!("doctor, gateway stopped: {broken}");
}

/// Runs the doctor (without Prometheus) until `link` has `result`; returns that link. A
/// failed link must also fail the run (exit 1).
async fn doctor_until(cluster: &MeshCluster, host: &str, link: &str, result: &str) -> Value {
    wait_for(
        &format!("the doctor's {link} link to be {result}"),
        Duration::from_secs(120),
        || async {
            let (code, links) = cluster.doctor(host, None);
            let l = links.into_iter().find(|l| l["link"] == link)?;
            (l["result"] == result && (result != "failed" || code == 1)).then_some(l)
        },
    )
    .await
}

/// The requests Xboard served so far.
fn xboard_saw(cluster: &MeshCluster) -> Vec<Value> {
    cluster.xboard.requests()
}

/// `cluster.<Xboard's cluster>.upstream_rq_200` in the VPS's Envoy.
fn envoy_upstream_200(v: &MeshVps) -> u64 {
    let stats =
        v.ns.output("curl", &["-sS", "-m", "5", "http://127.0.0.1:15000/stats"]);
    cluster_stat(&stats, XBOARD_CLUSTER, "upstream_rq_200")
}

/// Runs `scripts/e2e/latency` inside the VPS's namespace; its JSON summary.
fn latency(v: &MeshVps, args: &[&str]) -> Value {
    let script = sigma_e2e::cluster::repo_root().join("scripts/e2e/latency");
    let out =
        v.ns.output("python3", &[&[script.to_str().unwrap()], args].concat());
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("latency {args:?}: {e}: {out}"))
}

/// Latency the mesh path adds (figures printed, never asserted): XrayR → Xboard through the
/// VPS's loopback listener, the east-west gateway and Xboard's sidecar, against the same
/// request sent straight to Xboard's app (its uncaptured port [`XBOARD_DIRECT_PORT`], through
/// a route to Xboard added to the VPS's namespace for this comparison only), 2,000 sequential
/// requests each on one kept-alive connection; and connection set-up: a TCP connect plus an
/// mTLS handshake with the VPS's workload certificate through the gateway to Xboard's sidecar
/// (what the VPS's Envoy does for each new upstream connection), against a TCP connect
/// straight to Xboard's app.
///
/// `/work/wt/testenv cargo test -p sigma-e2e --test traffic -- --ignored --nocapture mesh_path_latency`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: prints figures; run with --ignored"]
async fn mesh_path_latency() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3"]) {
        return;
    }
    let dir = work_dir("traffic-bench");
    let cluster = MeshCluster::up(&dir).await;
    let token = cluster
        .api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 1, "ttl_seconds": 3600}))
        .await;
    let v = cluster.start_vps(&dir, 42, "xrayr-42.e2e.sigma", &token);
    cluster.wait_meshed(&v).await;
    wait_for(
        "XrayR's calls answered",
        Duration::from_secs(60),
        || async {
            xrayr_calls(&v)
                .iter()
                .all(|(_, _, r)| r.starts_with("200 "))
                .then_some(())
        },
    )
    .await;
    // The direct path needs a route to Xboard, which the mesh path never uses.
    v.ns.output(
        "ip",
        &[
            "route",
            "add",
            &format!("{XBOARD_IP}/32"),
            "via",
            &v.ns.host_ip,
        ],
    );
    const N: &str = "2000";
    let mesh_url = format!("http://{XBOARD_HOST}/api/v1/server/config");
    let direct_url = format!("http://{XBOARD_IP}:{XBOARD_DIRECT_PORT}/api/v1/server/config");
    // Warm-up: connection pools, Python, caches.
    latency(&v, &["http", &mesh_url, "200"]);
    latency(&v, &["http", &direct_url, "200"]);
    let mesh = latency(&v, &["http", &mesh_url, N]);
    let direct = latency(&v, &["http", &direct_url, N]);
    let certs = v.root.join("var/lib/istio/certs");
    let file = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (
        file("cert-chain.pem"),
        file("key.pem"),
        file("root-cert.pem"),
    );
    let mtls = latency(
        &v,
        &[
            "mtls",
            GATEWAY_IP,
            "15443",
            "outbound_.80_._.xboard.sigma.svc.cluster.local",
            &cert,
            &key,
            &ca,
            N,
        ],
    );
    let tcp = latency(&v, &["tcp", XBOARD_IP, &XBOARD_DIRECT_PORT.to_string(), N]);
    let ms = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    eprintln!("mesh-path latency ({N} sequential requests each, one kept-alive connection):");
    for (what, r) in [
        (
            "mesh (loopback listener + gateway + Xboard's sidecar)",
            &mesh,
        ),
        ("direct (VPS -> Xboard's app)", &direct),
    ] {
        eprintln!("  {what}: {r}");
    }
    eprintln!(
        "  added by the mesh path: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        ms(&mesh, "p50_ms") - ms(&direct, "p50_ms"),
        ms(&mesh, "p90_ms") - ms(&direct, "p90_ms"),
        ms(&mesh, "p99_ms") - ms(&direct, "p99_ms"),
    );
    eprintln!("connection set-up ({N} each):");
    eprintln!("  TCP + mTLS through the gateway to Xboard's sidecar: {mtls}");
    eprintln!("  TCP straight to Xboard's app: {tcp}");
    assert_eq!(mesh["errors"], 0, "{mesh}");
    assert_eq!(direct["errors"], 0, "{direct}");
    assert_eq!(mtls["errors"], 0, "{mtls}");
}

/// The port the `xrayr` purpose serves to the mesh (`http-api`, see
/// [`sigma_e2e::mesh_fleet_setup`]), where its application listens.
const SERVED_PORT: u16 = 8080;
const SERVED_HOST: &str = "xrayr.sigma.mesh";

/// `n` calls from `client` to `http://xrayr.sigma.mesh:8080/`: the answering host of each
/// (`Err` with what went wrong for a failed one).
fn served_calls(client: &MeshVps, n: usize) -> Vec<Result<String, String>> {
    (0..n)
        .map(|_| {
            let (code, out, err) = client.curl(&[
                "-sS",
                "-m",
                "5",
                &format!("http://{SERVED_HOST}:{SERVED_PORT}/"),
            ]);
            if code != 0 {
                return Err(err);
            }
            let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            // Through the server's ingress listener, the application sees Envoy on loopback.
            if v["peer"] != "127.0.0.1" {
                return Err(format!("not through the ingress listener: {v}"));
            }
            Ok(v["host"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Waits until `n` calls from `client` all succeed and are answered by exactly `want`; on
/// timeout fails with the last calls and what the client's and servers' Envoys hold.
async fn wait_answering(
    client: &MeshVps,
    servers: &[MeshVps],
    n: usize,
    want: &std::collections::BTreeSet<String>,
    what: &str,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let calls = served_calls(client, n);
        let hosts: Result<std::collections::BTreeSet<String>, _> = calls.iter().cloned().collect();
        if hosts.as_ref() == Ok(want) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let admin = |v: &MeshVps, path: &str| {
                v.ns.output(
                    "curl",
                    &["-sS", "-m", "5", &format!("http://127.0.0.1:15000{path}")],
                )
            };
            let clusters: Vec<String> = admin(client, "/clusters")
                .lines()
                .filter(|l| l.contains(SERVED_HOST))
                .map(str::to_string)
                .collect();
            let listeners: Vec<String> = servers
                .iter()
                .map(|s| format!("{}: {}", s.hostname, admin(s, "/listeners")))
                .collect();
            panic!(
                "timed out waiting for {what}: last calls {calls:?}\nclient clusters:\n{}\nserver listeners:\n{}",
                clusters.join("\n"),
                listeners.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purpose_serves_its_port_to_another_purpose_through_ingress_listeners() {
    if !sigma_e2e::can_run(&["ip", "curl", "python3", "nft", "iptables-legacy-save"]) {
        return;
    }
    let dir = work_dir("traffic-serve");
    let cluster = MeshCluster::up(&dir).await;
    let api = &cluster.api;
    // The client: another purpose, another provider (so another Istio network), calling the
    // xrayr purpose's served port by its mesh name.
    let (st, b) = api
        .call("POST", "/api/providers", Some(json!({"name": "ovh"})))
        .await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = api
        .call(
            "PATCH",
            "/api/purposes/monitor",
            Some(json!({"mesh": {"enabled": true, "egress": [
                {"host": SERVED_HOST, "port": SERVED_PORT, "protocol": "HTTP"}
            ]}})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let server_token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 2, "ttl_seconds": 3600}))
        .await;
    let client_token = api
        .token(json!({"purpose": "monitor", "provider": "ovh", "country": "FI", "max_uses": 1, "ttl_seconds": 3600}))
        .await;
    let servers = [
        cluster.start_vps(&dir, 43, "srv-43.e2e.sigma", &server_token),
        cluster.start_vps(&dir, 44, "srv-44.e2e.sigma", &server_token),
    ];
    let _apps: Vec<_> = servers
        .iter()
        .map(|s| s.serve_http_echo(SERVED_PORT, &dir))
        .collect();
    let client = cluster.start_vps(&dir, 45, "mon-45.e2e.sigma", &client_token);
    let mut ids = Vec::new();
    for v in servers.iter().chain([&client]) {
        ids.push(
            cluster.wait_meshed(v).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let both: std::collections::BTreeSet<String> =
        servers.iter().map(|s| s.hostname.clone()).collect();

    // Spread over both servers, each reached through its ingress listener.
    wait_answering(
        &client,
        &servers,
        20,
        &both,
        "calls answered by both servers",
        Duration::from_secs(90),
    )
    .await;
    // Direct user connections to the application's port: no Envoy in the path (the app sees
    // the user's address), and no packet-filter rule on any VPS.
    for s in &servers {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-m",
                "5",
                &format!("http://{}:{SERVED_PORT}/", s.ns.ip),
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(v["host"], s.hostname.as_str(), "direct user call: {out:?}");
        assert_eq!(
            v["peer"],
            s.ns.host_ip.as_str(),
            "direct user call passed a proxy: {v}"
        );
    }
    for v in servers.iter().chain([&client]) {
        assert_eq!(v.ns.filter_rules(), Vec::<String>::new(), "{}", v.hostname);
    }

    // `istioctl analyze` on the whole cluster (sigma's objects for both purposes, the
    // gateway's, Xboard's): its only findings are IST0101 on sigma's Sidecars, whose selectors
    // match WorkloadEntries while the analyzer looks at Pods only (docs/operator-guide.md).
    let analyze = std::process::Command::new(sigma_e2e::mesh::env_path("SIGMA_E2E_ISTIOCTL_BIN"))
        .args([
            "analyze",
            "--kubeconfig",
            cluster.cp.var("KUBECONFIG"),
            "--all-namespaces",
            "--output-threshold",
            "Info",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let findings: Vec<Value> = serde_json::from_slice(&analyze.stdout).unwrap_or_else(|e| {
        panic!(
            "istioctl analyze printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&analyze.stdout),
            String::from_utf8_lossy(&analyze.stderr)
        )
    });
    eprintln!(
        "istioctl analyze: {}",
        serde_json::to_string(&findings).unwrap()
    );
    let (selector, others): (Vec<&Value>, Vec<&Value>) = findings.iter().partition(|m| {
        m["code"] == "IST0101"
            && m["origin"]
                .as_str()
                .is_some_and(|o| o.starts_with("Sidecar "))
    });
    assert_eq!(others, Vec::<&Value>::new(), "istioctl analyze findings");
    // Control: the analyzer did look at sigma's Sidecars (one per mesh purpose here).
    for purpose in ["xrayr", "monitor"] {
        assert!(
            selector
                .iter()
                .any(|m| m["origin"].as_str().is_some_and(|o| o.contains(purpose))),
            "no IST0101 for the {purpose} Sidecar: {findings:?}"
        );
    }

    // Prometheus, discovering the Envoys through sigma-api, has the client VPS's connection and
    // byte counts for the served service (the edge monitor -> xrayr, per VPS), labelled with
    // its VPS, purpose, provider and country.
    let prom = Prometheus::start(
        &dir,
        &format!("{}/api/prometheus/targets", api.url),
        ADMIN_KEY,
    )
    .await;
    let served_cluster = format!("outbound|{SERVED_PORT}||{SERVED_HOST}");
    for s in prom
        .upstream_series(&served_cluster, &client.hostname)
        .await
    {
        assert_eq!(s["metric"]["purpose"], "monitor", "{s}");
        assert_eq!(s["metric"]["country"], "FI", "{s}");
        assert_eq!(s["metric"]["provider"], "ovh", "{s}");
        assert_eq!(s["metric"]["vps_id"], ids[2].as_str(), "{s}");
        eprintln!("Prometheus: {s}");
    }
    drop(prom);

    // A frozen agent (its probe fails, pilot-agent lives on): that server leaves the endpoints.
    let frozen = servers[0].agent.pid().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &frozen])
        .status()
        .unwrap();
    let other: std::collections::BTreeSet<String> = [servers[1].hostname.clone()].into();
    wait_answering(
        &client,
        &servers,
        10,
        &other,
        "calls answered by the healthy server only",
        Duration::from_secs(120),
    )
    .await;
    std::process::Command::new("kill")
        .args(["-CONT", &frozen])
        .status()
        .unwrap();
    wait_answering(
        &client,
        &servers,
        20,
        &both,
        "both servers again",
        Duration::from_secs(120),
    )
    .await;

    // Retiring a server takes it out of the endpoints.
    let (st, b) = api
        .call(
            "POST",
            &format!("/api/vps/{}/retire?force=true", ids[1]),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let first: std::collections::BTreeSet<String> = [servers[0].hostname.clone()].into();
    wait_answering(
        &client,
        &servers,
        10,
        &first,
        "calls answered by the remaining server only",
        Duration::from_secs(90),
    )
    .await;
}

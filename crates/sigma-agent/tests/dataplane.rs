//! The data-plane reader (`sigma_agent::mesh::dataplane`) against a real Envoy started with a
//! static configuration shaped like what istiod gives a VPS: loopback listeners named
//! `<bind>_<port>` in front of clusters named `outbound|<port>||<host>`, one cluster with a
//! reachable and an unreachable endpoint (active health checking), one with only an
//! unreachable endpoint, and an ADS stream to a control plane that is not there.
//!
//! Envoy comes from `SIGMA_ENVOY_BIN` (or PATH); without one the test is skipped unless
//! `SIGMA_TEST_REQUIRE_ENVOY=1`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use sigma_agent::mesh::dataplane::{self, Admin};
use sigma_testkit::{free_port, temp_dir};
use sigma_types::mesh::BundleEgress;
use sigma_types::mesh::dataplane::{
    EgressEndpoints, EgressResponses, HostsEntry, ListenerState, MeshDataPlane, XdsConnection,
};

fn envoy_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("SIGMA_ENVOY_BIN") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("envoy"))
                .find(|p| p.is_file())
        }),
    };
    if found.is_none() {
        assert!(
            std::env::var("SIGMA_TEST_REQUIRE_ENVOY").as_deref() != Ok("1"),
            "SIGMA_TEST_REQUIRE_ENVOY=1 but no Envoy: set SIGMA_ENVOY_BIN"
        );
        eprintln!("note: no Envoy (SIGMA_ENVOY_BIN unset, none on PATH); skipping");
    }
    found
}

struct Envoy {
    child: Child,
    dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- envoy log (tail) ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const WEB: &str = "web.test.local";
const DEAD: &str = "dead.test.local";
const ABSENT: &str = "absent.test.local";

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bootstrap(admin: u16, web: u16, tcp: u16, backend: u16, dead: u16) -> String {
    let endpoint = |port: u16| {
        format!(
            r#"{{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {port}}}}}}}}}"#
        )
    };
    format!(
        r#"{{
  "node": {{"id": "sidecar~127.0.0.1~vps-test.sigma~sigma.svc.cluster.local", "cluster": "test"}},
  "admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {admin}}}}}}},
  "dynamic_resources": {{
    "ads_config": {{"api_type": "GRPC", "transport_api_version": "V3",
      "grpc_services": [{{"envoy_grpc": {{"cluster_name": "xds-grpc"}}}}]}}
  }},
  "static_resources": {{
    "listeners": [
      {{"name": "127.0.0.1_{web}",
        "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {web}}}}},
        "filter_chains": [{{"filters": [{{"name": "envoy.filters.network.http_connection_manager",
          "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "outbound_{web}",
            "route_config": {{"virtual_hosts": [{{"name": "web", "domains": ["*"],
              "routes": [{{"match": {{"prefix": "/"}}, "route": {{"cluster": "outbound|{web}||{WEB}"}}}}]}}]}},
            "http_filters": [{{"name": "envoy.filters.http.router",
              "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}]
          }}}}]}}]
      }},
      {{"name": "127.0.0.1_{tcp}",
        "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {tcp}}}}},
        "filter_chains": [{{"filters": [{{"name": "envoy.filters.network.tcp_proxy",
          "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "outbound_{tcp}", "cluster": "outbound|{tcp}||{DEAD}"}}}}]}}]
      }}
    ],
    "clusters": [
      {{"name": "outbound|{web}||{WEB}", "type": "STATIC", "connect_timeout": "1s",
        "health_checks": [{{"timeout": "1s", "interval": "0.2s", "unhealthy_threshold": 1,
          "healthy_threshold": 1, "tcp_health_check": {{}}}}],
        "load_assignment": {{"cluster_name": "outbound|{web}||{WEB}",
          "endpoints": [{{"lb_endpoints": [{}, {}]}}]}}
      }},
      {{"name": "outbound|{tcp}||{DEAD}", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {{"cluster_name": "outbound|{tcp}||{DEAD}",
          "endpoints": [{{"lb_endpoints": [{}]}}]}}
      }},
      {{"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {{"http2_protocol_options": {{}}}}}}}},
        "load_assignment": {{"cluster_name": "xds-grpc",
          "endpoints": [{{"lb_endpoints": [{}]}}]}}
      }}
    ]
  }}
}}"#,
        endpoint(backend),
        endpoint(dead),
        endpoint(dead),
        endpoint(dead),
    )
}

async fn poll(
    what: &str,
    admin: &Admin,
    hosts: &std::path::Path,
    egress: &[BundleEgress],
    mut ok: impl FnMut(&MeshDataPlane) -> bool,
) -> MeshDataPlane {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = dataplane::read(admin, hosts, egress).await;
        if ok(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in 30 s; last reading {d:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn reads_listeners_endpoints_and_counters_of_a_real_envoy() {
    let Some(bin) = envoy_bin() else { return };
    // The reachable endpoint: 200 on /ok, 503 on /fail, 404 elsewhere.
    let app = Router::new().route("/ok", get(|| async { "ok" })).route(
        "/fail",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
    );
    let backend = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(backend, app).await });

    let (admin_port, web, tcp, dead) = (free_port(), free_port(), free_port(), dead_port());
    let dir = temp_dir("dataplane");
    std::fs::write(
        dir.join("envoy.json"),
        bootstrap(admin_port, web, tcp, backend_port, dead),
    )
    .unwrap();
    let base_id = std::process::id() * 16 + 7;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(dir.join("envoy.json"))
        .args(["--base-id", &base_id.to_string()])
        .args(["--concurrency", "1", "-l", "info", "--drain-time-s", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
        .spawn()
        .expect("start envoy");
    let _envoy = Envoy {
        child,
        dir: dir.clone(),
    };

    // The hosts file: the web host mapped to its listener's address, the dead host elsewhere,
    // the absent host not at all.
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n10.9.9.9 {DEAD}\n# BEGIN sigma-istio\n127.0.0.1 {WEB}\n127.0.0.1 {DEAD}\n# END sigma-istio\n"
        ),
    )
    .unwrap();
    let egress = vec![
        BundleEgress {
            host: WEB.into(),
            port: web,
            bind: "127.0.0.1".into(),
        },
        BundleEgress {
            host: DEAD.into(),
            port: tcp,
            bind: "127.0.0.1".into(),
        },
        BundleEgress {
            host: ABSENT.into(),
            port: free_port(),
            bind: "127.0.0.3".into(),
        },
    ];
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let admin = Admin::new(http.clone(), format!("http://127.0.0.1:{admin_port}"));

    // Health checking marks the unreachable endpoint; the reachable one stays.
    let d = poll("1 of 2 endpoints healthy", &admin, &hosts, &egress, |d| {
        d.egress[0].endpoints
            == EgressEndpoints::Held {
                total: 2,
                healthy: 1,
                outlier_ejected: 0,
            }
    })
    .await;
    assert_eq!(d.xds, XdsConnection::Disconnected, "{d:#?}");
    assert_eq!(d.egress.len(), 3);
    assert_eq!(d.omitted, 0);
    let (w, t, a) = (&d.egress[0], &d.egress[1], &d.egress[2]);
    assert_eq!(w.listener, ListenerState::Bound);
    assert_eq!(w.hosts_entry, HostsEntry::Present);
    assert_eq!(t.listener, ListenerState::Bound);
    assert_eq!(
        t.endpoints,
        EgressEndpoints::Held {
            total: 1,
            healthy: 1,
            outlier_ejected: 0
        },
        "no health check on it: Envoy counts it healthy"
    );
    assert_eq!(
        t.hosts_entry,
        HostsEntry::Wrong {
            address: "10.9.9.9".parse().unwrap()
        },
        "the first line naming the host wins"
    );
    assert_eq!(a.listener, ListenerState::NotBound);
    assert_eq!(a.endpoints, EgressEndpoints::NoCluster);
    assert!(
        matches!(&a.responses, EgressResponses::Unknown { reason } if reason.contains("no cluster")),
        "{:?}",
        a.responses
    );
    assert_eq!(a.hosts_entry, HostsEntry::Missing);

    // Responses by class through the listener: 3 × 200, 2 × 503, 1 × 404.
    let url = |p: &str| format!("http://127.0.0.1:{web}{p}");
    for (path, want) in [
        ("/ok", 200),
        ("/ok", 200),
        ("/ok", 200),
        ("/fail", 503),
        ("/fail", 503),
        ("/nope", 404),
    ] {
        let st = http.get(url(path)).send().await.unwrap().status().as_u16();
        assert_eq!(st, want, "{path}");
    }
    // A connection through the TCP listener to the unreachable endpoint fails to connect.
    let mut s = tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, tcp)))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;

    let d = poll("counters", &admin, &hosts, &egress, |d| {
        matches!(d.egress[1].responses, EgressResponses::Counted { connect_failures, .. } if connect_failures >= 1)
    })
    .await;
    match d.egress[0].responses {
        EgressResponses::Counted {
            rq_2xx,
            rq_4xx,
            rq_5xx,
            connect_failures,
            connections,
            window_seconds,
        } => {
            assert_eq!((rq_2xx, rq_4xx, rq_5xx), (3, 1, 2), "{d:#?}");
            assert_eq!(window_seconds, None, "one reading: since Envoy started");
            assert_eq!(connect_failures, 0);
            assert!(connections >= 1);
        }
        ref o => panic!("{o:?}"),
    }
    match d.egress[1].responses {
        EgressResponses::Counted {
            rq_2xx,
            connect_failures,
            ..
        } => {
            assert_eq!(rq_2xx, 0);
            assert_eq!(connect_failures, 1);
        }
        ref o => panic!("{o:?}"),
    }

    // Envoy gone: every fact is unknown with the reason, no zero anywhere.
    let gone = Admin::new(http, format!("http://127.0.0.1:{}", dead_port()));
    let d = dataplane::read(&gone, &dir.join("no-such-hosts"), &egress).await;
    let reason = |s: &str| {
        assert!(
            s.contains("unreachable") || s.contains("No such file"),
            "{s}"
        )
    };
    match &d.xds {
        XdsConnection::Unknown { reason: r } => reason(r),
        o => panic!("{o:?}"),
    }
    for e in &d.egress {
        match (&e.listener, &e.endpoints, &e.responses, &e.hosts_entry) {
            (
                ListenerState::Unknown { reason: a },
                EgressEndpoints::Unknown { reason: b },
                EgressResponses::Unknown { reason: c },
                HostsEntry::Unknown { reason: h },
            ) => {
                for r in [a, b, c, h] {
                    reason(r);
                }
            }
            o => panic!("{o:?}"),
        }
    }
}

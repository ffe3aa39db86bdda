//! The xDS server against a real Envoy: routes become listeners that forward bytes, changes
//! follow, rejected configs are NACKed and recovered from, PROXY protocol headers reach the
//! backend, and Envoy rides out a restart of the server.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use sigma_types::{ClusterType, ProxyProtocol, RouteStatus};
use sigma_xds::{CLUSTER_TYPE_URL, LISTENER_TYPE_URL, XdsHandle};

const T: Duration = Duration::from_secs(20);

async fn accepted(handle: &XdsHandle, version: i64) {
    eventually(
        &format!("Envoy accepts version {version}"),
        T,
        || async move { (handle.accepted_version() == Some(version)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flow_through_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let _envoy = Envoy::start(&bin, xds.addr);
    let echo = Echo::start("A:").await;
    eventually("Envoy connects", T, || async {
        (xds.handle.clients() == 1).then_some(())
    })
    .await;

    let port = free_port();
    xds.handle.publish(1, vec![route("web", port, echo.addr)]);
    wait_accepts(port, T).await;
    let (reply, _) = roundtrip(port, b"hello through envoy").await.unwrap();
    assert_eq!(reply, b"A:hello through envoy");

    accepted(&xds.handle, 1).await;
    let s = xds.handle.stats();
    assert_eq!(s.clients, 1);
    assert_eq!(s.version_served, Some(1));
    assert_eq!(s.acked_cluster_version.as_deref(), Some("1"));
    assert_eq!(s.acked_listener_version.as_deref(), Some("1"));
    assert!(s.pushes >= 2 && s.acks >= 2, "{s:?}");
    assert_eq!(s.nacks, 0);
    assert!(xds.handle.last_nack().is_none());
    xds.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_route_changes() {
    let Some(bin) = envoy_bin() else { return };
    let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let envoy = Envoy::start(&bin, xds.addr);
    let (a, b) = (Echo::start("A:").await, Echo::start("B:").await);
    let (p1, p2) = (free_port(), free_port());
    let h = &xds.handle;

    h.publish(1, vec![route("one", p1, a.addr)]);
    wait_reply(p1, "A:", T).await;

    // Backend of "one" moves to B; "two" is added, resolved by DNS (strict) from localhost.
    let mut two = route("two", p2, a.addr);
    two.upstream = sigma_types::Upstream::Backend {
        backend_host: "localhost".into(),
        backend_port: a.addr.port(),
        cluster_type: ClusterType::StrictDns,
    };
    h.publish(2, vec![route("one", p1, b.addr), two.clone()]);
    wait_reply(p1, "B:", T).await;
    wait_reply(p2, "A:", T).await;
    accepted(h, 2).await;
    assert_eq!(
        listener_names(envoy.admin).await,
        ["route_one", "route_two"]
    );
    let clusters = admin_get(envoy.admin, "/clusters").await.unwrap();
    assert!(
        clusters.contains(&format!("route_one::{}::", b.addr)),
        "route_one's host is B in:\n{clusters}"
    );

    // "one" is deleted: its port closes, "two" keeps working.
    h.publish(3, vec![two.clone()]);
    wait_refused(p1, T).await;
    wait_reply(p2, "A:", T).await;
    accepted(h, 3).await;
    assert_eq!(listener_names(envoy.admin).await, ["route_two"]);
    let dump = admin_get(envoy.admin, "/config_dump?resource=dynamic_active_clusters")
        .await
        .unwrap();
    assert!(
        !dump.contains("route_one") && dump.contains("route_two"),
        "{dump}"
    );

    // A listen port change of a kept route moves its listener.
    let p3 = free_port();
    two.listen_port = p3;
    h.publish(4, vec![two.clone()]);
    wait_reply(p3, "A:", T).await;
    wait_refused(p2, T).await;
    accepted(h, 4).await;

    // Disabling the last route leaves Envoy without listeners.
    two.status = RouteStatus::Disabled;
    h.publish(5, vec![two]);
    wait_refused(p3, T).await;
    accepted(h, 5).await;
    assert!(listener_names(envoy.admin).await.is_empty());
    assert_eq!(h.stats().nacks, 0);
    xds.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_keeps_the_last_good_config_and_a_good_publish_recovers() {
    let Some(bin) = envoy_bin() else { return };
    let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let envoy = Envoy::start(&bin, xds.addr);
    let echo = Echo::start("E:").await;
    let h = &xds.handle;
    let p1 = free_port();
    h.publish(1, vec![route("good", p1, echo.addr)]);
    wait_reply(p1, "E:", T).await;
    accepted(h, 1).await;

    // A port something else holds: Envoy cannot bind it and rejects the listener update.
    let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    h.publish(
        2,
        vec![
            route("good", p1, echo.addr),
            route("blocked", taken, echo.addr),
        ],
    );
    let nack = eventually("the listener update is NACKed", T, || async {
        h.last_nack()
    })
    .await;
    eprintln!("NACK: {nack:?}");
    assert_eq!(nack.version, "2");
    assert_eq!(nack.type_url, LISTENER_TYPE_URL);
    assert!(
        nack.detail.contains(&taken.to_string()),
        "Envoy's detail names the port: {nack:?}"
    );
    let s = h.stats();
    assert_eq!(s.nacks, 1, "{s:?}");
    assert!(s.nack_current);
    assert_eq!(
        s.accepted_version,
        Some(1),
        "v2 was not accepted as a whole"
    );
    assert_eq!(s.acked_listener_version.as_deref(), Some("1"));
    // Still served: the route that was there keeps forwarding.
    wait_reply(p1, "E:", T).await;
    assert!(envoy.log().contains(&taken.to_string()));

    // Recovery: the next good version is pushed and ACKed.
    let p2 = free_port();
    h.publish(
        3,
        vec![
            route("good", p1, echo.addr),
            route("blocked", p2, echo.addr),
        ],
    );
    accepted(h, 3).await;
    wait_reply(p2, "E:", T).await;
    wait_reply(p1, "E:", T).await;
    assert!(h.last_nack().is_none(), "the ACK of v3 clears the NACK");
    let s = h.stats();
    assert_eq!(s.nacks, 1);
    assert_eq!(s.last_nack.unwrap().version, "2", "kept for the record");
    drop(squatter);
    xds.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_cluster_with_a_dns_name_is_nacked_with_envoys_detail() {
    let Some(bin) = envoy_bin() else { return };
    let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let _envoy = Envoy::start(&bin, xds.addr);
    let echo = Echo::start("E:").await;
    let h = &xds.handle;
    let p1 = free_port();
    h.publish(1, vec![route("good", p1, echo.addr)]);
    accepted(h, 1).await;

    // sigma-api refuses this; built directly, it reaches Envoy, which rejects the cluster.
    let mut bad = route("bad", free_port(), echo.addr);
    bad.upstream = sigma_types::Upstream::Backend {
        backend_host: "backend.invalid".into(),
        backend_port: echo.addr.port(),
        cluster_type: ClusterType::Static,
    };
    h.publish(2, vec![route("good", p1, echo.addr), bad]);
    let nack = eventually("the cluster update is NACKed", T, || async {
        h.last_nack()
    })
    .await;
    eprintln!("NACK: {nack:?}");
    assert_eq!(
        (nack.version.as_str(), nack.type_url.as_str()),
        ("2", CLUSTER_TYPE_URL)
    );
    assert!(
        nack.detail.contains("backend.invalid"),
        "Envoy's detail names the host: {nack:?}"
    );
    wait_reply(p1, "E:", T).await;

    h.publish(3, vec![route("good", p1, echo.addr)]);
    accepted(h, 3).await;
    assert!(h.last_nack().is_none());
    wait_reply(p1, "E:", T).await;
    xds.stop().await;
}

/// The PROXY protocol v2 header: signature, version/command, family, length, addresses.
fn parse_v2(b: &[u8]) -> (u8, u8, SocketAddr, SocketAddr, usize) {
    assert_eq!(&b[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    let a = &b[16..16 + len];
    let src = SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[8], a[9]])));
    let dst = SocketAddr::from(([a[4], a[5], a[6], a[7]], u16::from_be_bytes([a[10], a[11]])));
    (b[12], b[13], src, dst, 16 + len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_reach_the_backend() {
    let Some(bin) = envoy_bin() else { return };
    let xds = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let _envoy = Envoy::start(&bin, xds.addr);
    let echo = Echo::start("").await;
    let (p1, p2) = (free_port(), free_port());
    let mut v1 = route("pp1", p1, echo.addr);
    v1.proxy_protocol = ProxyProtocol::V1;
    let mut v2 = route("pp2", p2, echo.addr);
    v2.proxy_protocol = ProxyProtocol::V2;
    xds.handle.publish(1, vec![v1, v2]);
    accepted(&xds.handle, 1).await;
    wait_accepts(p1, T).await;
    wait_accepts(p2, T).await;

    let (reply, client_port) = roundtrip(p1, b"payload-1").await.unwrap();
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {p1}\r\npayload-1");
    assert_eq!(String::from_utf8_lossy(&reply), want);

    let (reply, client_port) = roundtrip(p2, b"payload-2").await.unwrap();
    let (ver_cmd, family, src, dst, header_len) = parse_v2(&reply);
    assert_eq!(ver_cmd, 0x21, "version 2, PROXY command");
    assert_eq!(family, 0x11, "TCP over IPv4");
    assert_eq!(src, SocketAddr::from((Ipv4Addr::LOCALHOST, client_port)));
    assert_eq!(dst, SocketAddr::from((Ipv4Addr::LOCALHOST, p2)));
    assert_eq!(&reply[header_len..], b"payload-2");
    xds.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_keeps_forwarding_across_an_xds_server_restart() {
    let Some(bin) = envoy_bin() else { return };
    let first = Xds::start((Ipv4Addr::LOCALHOST, 0).into()).await;
    let addr = first.addr;
    let mut envoy = Envoy::start(&bin, addr);
    let (a, b) = (Echo::start("A:").await, Echo::start("B:").await);
    let (p1, p2) = (free_port(), free_port());
    first.handle.publish(7, vec![route("kept", p1, a.addr)]);
    wait_reply(p1, "A:", T).await;
    accepted(&first.handle, 7).await;

    // The agent goes away: Envoy keeps forwarding with the config it has.
    let first_handle = first.handle.clone();
    first.stop().await;
    assert_eq!(
        first_handle.clients(),
        0,
        "the stream ended with the server"
    );
    for _ in 0..5 {
        wait_reply(p1, "A:", Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(envoy.running());

    // A new agent process on the same address, before it knows the routes: Envoy reconnects
    // and is sent nothing, so it goes on forwarding.
    let second = Xds::start(addr).await;
    eventually("Envoy reconnects", T, || async {
        (second.handle.clients() == 1).then_some(())
    })
    .await;
    wait_reply(p1, "A:", T).await;
    assert_eq!(second.handle.stats().pushes, 0);

    // The routes arrive: the snapshot reaches Envoy.
    second.handle.publish(
        8,
        vec![route("kept", p1, b.addr), route("added", p2, a.addr)],
    );
    accepted(&second.handle, 8).await;
    wait_reply(p1, "B:", T).await;
    wait_reply(p2, "A:", T).await;
    second.stop().await;
}

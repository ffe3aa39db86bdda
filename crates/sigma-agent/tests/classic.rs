//! Classic mode end to end: routes kept in a real sigma-api reach a real Envoy through the real
//! sigma-agent's xDS server, and bytes flow through Envoy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sigma_testkit::classic::ClassicRelay;
use sigma_testkit::{SigmaApi, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn envoy_bin() -> Option<String> {
    match std::env::var("SIGMA_ENVOY_BIN") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("SIGMA_TEST_REQUIRE_ENVOY").as_deref() == Ok("1") => {
            panic!("SIGMA_TEST_REQUIRE_ENVOY=1 but SIGMA_ENVOY_BIN is unset")
        }
        _ => {
            eprintln!("note: SIGMA_ENVOY_BIN unset; classic-mode Envoy test skipped");
            None
        }
    }
}

/// A TCP server that answers every read with `tag` followed by what it read.
async fn echo(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = tag.as_bytes().to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `msg` to the port and returns the answer, if something answers.
async fn exchange(port: u16, msg: &str) -> Option<String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(msg.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_in_sigma_api_drive_a_real_envoy() {
    let Some(envoy) = envoy_bin() else { return };
    let mut api = SigmaApi::start();
    let token = api.token(json!({"purpose": "vpn-relay"})).await;
    let _relay = ClassicRelay::start(
        Path::new(env!("CARGO_BIN_EXE_sigma-agent")),
        &envoy,
        &api.url,
        &token,
        "relay-envoy-1",
        "300ms",
    );
    let vps = sigma_testkit::SigmaApi::eventually(Duration::from_secs(20), || async {
        api.vps("relay-envoy-1")
            .await
            .filter(|v| v["status"] == "active")
    })
    .await
    .expect("agent registered");
    let id = vps["id"].as_str().unwrap().to_string();

    // A route to an echo server: bytes flow through Envoy.
    let a = echo("A:").await;
    let listen = free_port();
    let (st, route) = api
        .call("POST", &format!("/api/vps/{id}/envoy-routes"), Some(json!({
            "name": "echo", "listen_port": listen, "backend_host": "127.0.0.1", "backend_port": a.port()})))
        .await;
    assert_eq!(st, 201, "{route}");
    until("Envoy forwarding to A", 20, async || {
        exchange(listen, "hello").await.as_deref() == Some("A:hello")
    })
    .await;

    // Change the backend; add a second route; the live listeners follow.
    let b = echo("B:").await;
    let rid = route["id"].as_str().unwrap();
    let (st, _) = api
        .call(
            "PATCH",
            &format!("/api/envoy-routes/{rid}"),
            Some(json!({"backend_port": b.port()})),
        )
        .await;
    assert_eq!(st, 200);
    until("Envoy forwarding to B", 20, async || {
        exchange(listen, "x").await.as_deref() == Some("B:x")
    })
    .await;
    let listen2 = free_port();
    let (st, r2) = api
        .call("POST", &format!("/api/vps/{id}/envoy-routes"), Some(json!({
            "name": "echo-2", "listen_port": listen2, "backend_host": "127.0.0.1", "backend_port": a.port()})))
        .await;
    assert_eq!(st, 201);
    until("second listener", 20, async || {
        exchange(listen2, "y").await.as_deref() == Some("A:y")
    })
    .await;
    let r2id = r2["id"].as_str().unwrap();
    assert_eq!(
        api.call("DELETE", &format!("/api/envoy-routes/{r2id}"), None)
            .await
            .0,
        204
    );
    until("second listener gone", 20, async || {
        exchange(listen2, "y").await.is_none()
    })
    .await;

    // The agent reports what Envoy accepted.
    until("accepted version reported", 20, async || {
        let v = api.vps("relay-envoy-1").await.unwrap();
        v["agent_state"]["envoy_applied_version"] == v["envoy_version"]
            && v["agent_state"]["xds_clients"] == 1
    })
    .await;

    // sigma-api restarts while Envoy keeps forwarding.
    api.stop();
    assert_eq!(
        exchange(listen, "z").await.as_deref(),
        Some("B:z"),
        "forwarding without sigma-api"
    );
    api.restart();
    let (st, _) = api
        .call(
            "PATCH",
            &format!("/api/envoy-routes/{rid}"),
            Some(json!({"backend_port": a.port()})),
        )
        .await;
    assert_eq!(st, 200);
    until("Envoy back on A after the restart", 30, async || {
        exchange(listen, "w").await.as_deref() == Some("A:w")
    })
    .await;

    // Retire: the agent withdraws the listeners; user traffic to the port stops.
    assert_eq!(
        api.call("POST", &format!("/api/vps/{id}/retire"), None)
            .await
            .0,
        200
    );
    until("listener withdrawn after retire", 20, async || {
        exchange(listen, "r").await.is_none()
    })
    .await;
    until("VPS retired", 20, async || {
        api.vps("relay-envoy-1").await.unwrap()["status"] == "retired"
    })
    .await;
}

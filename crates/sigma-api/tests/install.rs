//! `GET /install.sh` through the real sigma-api binary: deploy/install-agent.sh with the
//! server's defaults written in, accepted by `sh -n`, and never carrying header text that is
//! not a plain host[:port].

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use sigma_testkit::{SigmaApi, TestDb, both_backends};

both_backends!(
    the_script_carries_the_configured_defaults,
    the_host_header_is_used_only_when_plain,
);

/// deploy/install-agent.sh as the repository holds it.
fn original() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/install-agent.sh"
    ))
    .unwrap()
}

/// `sh -n` (syntax check only) on the script.
fn sh_accepts(script: &str) {
    let mut child = Command::new("sh")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP/1.1 request with exactly these header lines; returns the status and the body.
fn raw_get(s: &SigmaApi, headers: &[&str]) -> (u16, String, String) {
    let addr = s.url.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut req = String::from("GET /install.sh HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

async fn the_script_carries_the_configured_defaults(db: TestDb) {
    let s = SigmaApi::builder()
        .store(&db)
        .envs(vec![
            (
                "SIGMA_AGENT_BINARY_URL".into(),
                "https://downloads.example.net/sigma-agent-v1".into(),
            ),
            (
                "SIGMA_PUBLIC_URL".into(),
                "https://sigma.example.net/".into(),
            ),
        ])
        .start();
    // No key needed.
    let resp = s.http.get(s.url("/install.sh")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/x-shellscript"),
        "{:?}",
        resp.headers()
    );
    let body = resp.text().await.unwrap();
    let expected = original()
        .replacen(
            "DEFAULT_BINARY_URL=\"\"\n",
            "DEFAULT_BINARY_URL='https://downloads.example.net/sigma-agent-v1'\n",
            1,
        )
        .replacen(
            "DEFAULT_API_URL=\"\"\n",
            "DEFAULT_API_URL='https://sigma.example.net'\n",
            1,
        );
    assert_ne!(expected, original(), "both placeholders are in the script");
    assert_eq!(body, expected);
    sh_accepts(&body);
    // --public-url wins over the Host header.
    let (st, _, b) = raw_get(&s, &["Host: other.example.org"]);
    assert_eq!(st, 200);
    assert_eq!(b, expected);
}

async fn the_host_header_is_used_only_when_plain(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    // No flags: a plain Host becomes the default sigma-api URL, the binary has no default.
    let (st, head, body) = raw_get(&s, &["Host: sigma.example.net:8443"]);
    assert_eq!(st, 200, "{head}");
    let with_host = original().replacen(
        "DEFAULT_API_URL=\"\"\n",
        "DEFAULT_API_URL='http://sigma.example.net:8443'\n",
        1,
    );
    assert_eq!(body, with_host);
    sh_accepts(&body);
    // A TLS-terminating proxy's X-Forwarded-Proto gives the scheme.
    let (_, _, body) = raw_get(
        &s,
        &["Host: sigma.example.net:8443", "X-Forwarded-Proto: https"],
    );
    assert!(body.contains("DEFAULT_API_URL='https://sigma.example.net:8443'\n"));

    // Anything else in Host is ignored: the script is served as the repository holds it.
    for host in [
        "sigma.example.net;reboot",
        "$(touch /tmp/pwned)",
        "`id`.example.net",
        "a'b.example.net",
        "sigma.example.net:80 x",
    ] {
        let (st, head, body) = raw_get(&s, &[&format!("Host: {host}")]);
        assert!(st == 200 || st == 400, "{host}: {head}");
        if st == 200 {
            assert_eq!(body, original(), "{host}");
            assert!(!body.contains(host), "{host}");
        }
    }
    sh_accepts(&original());
}

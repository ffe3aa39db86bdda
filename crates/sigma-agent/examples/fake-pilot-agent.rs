//! A stand-in for Istio's pilot-agent, for sigma-agent's mesh-mode tests only (an example, so
//! it is never installed with the agent).
//!
//! - `proxy`: records its arguments, environment, working directory, user and ambient
//!   capabilities in `$FAKE_RECORD_DIR/proxy-<pid>.json`, then serves Envoy's readiness
//!   (`/healthz/ready` on `$FAKE_READY_PORT`; 503 while `not-ready` exists in the record
//!   directory) and stats (`/stats/prometheus` on `$FAKE_STATS_PORT`) until told to crash: a
//!   file `crash` in the record directory makes it delete the file and exit with code 3.
//! - `istio-iptables`: appends its arguments to `$FAKE_RECORD_DIR/iptables.jsonl` and exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn record(dir: &Path, args: &[String]) -> serde_json::Value {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    serde_json::json!({
        "pid": std::process::id(),
        "args": args,
        "env": env,
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        "uid": status_field("Uid:").split_whitespace().next().unwrap_or("").to_string(),
        "cap_amb": status_field("CapAmb:"),
        "record_dir": dir.display().to_string(),
    })
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write record");
    std::fs::rename(&tmp, path).expect("rename record");
}

fn bind(port: u16) -> TcpListener {
    // The previous instance may still be letting go of the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("fake-pilot-agent: bind {port}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("bind {port}: {e}"),
        }
    }
}

fn answer(mut s: TcpStream, status: &str, body: &str) {
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    // Request line and headers.
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(port: u16, dir: PathBuf, stats: bool) {
    let l = bind(port);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if stats {
                let body = format!(
                    "# TYPE envoy_server_live gauge\nenvoy_server_live 1\nfake_pilot_agent_pid {}\n",
                    std::process::id()
                );
                answer(s, "200 OK", &body);
            } else if dir.join("not-ready").exists() {
                answer(s, "503 Service Unavailable", "not ready\n");
            } else {
                answer(s, "200 OK", "ready\n");
            }
        }
    });
}

fn port(name: &str) -> Option<u16> {
    std::env::var(name).ok()?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = std::env::var_os("FAKE_RECORD_DIR").map(PathBuf::from) else {
        eprintln!("fake-pilot-agent: FAKE_RECORD_DIR is not set");
        return ExitCode::from(2);
    };
    match args.first().map(String::as_str) {
        Some("proxy") => {
            let rec = record(&dir, &args);
            write_atomic(
                &dir.join(format!("proxy-{}.json", std::process::id())),
                rec.to_string().as_bytes(),
            );
            println!("fake-pilot-agent: proxy started");
            eprintln!("fake-pilot-agent: envoy log line on stderr");
            if let Some(p) = port("FAKE_READY_PORT") {
                serve(p, dir.clone(), false);
            }
            if let Some(p) = port("FAKE_STATS_PORT") {
                serve(p, dir.clone(), true);
            }
            loop {
                if std::fs::remove_file(dir.join("crash")).is_ok() {
                    eprintln!("fake-pilot-agent: crashing as told");
                    return ExitCode::from(3);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some("istio-iptables") => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("iptables.jsonl"))
                .expect("iptables.jsonl");
            let rec = record(&dir, &args);
            let _ = writeln!(f, "{rec}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("fake-pilot-agent: unknown command {args:?}");
            ExitCode::from(2)
        }
    }
}

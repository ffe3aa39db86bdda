//! Test support: a real sigma-api on loopback (SQLite in a temp dir) and a way to run the real
//! `sigmactl` binary against it with a clean, private environment.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The admin key every test sigma-api is started with.
pub const ADMIN_KEY: &str = "sgm_00000000_sigmactl-test-admin-key-0123456789abcdef";

static BUILD: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `…/target/<profile>` of the running test (`…/target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf()
}

/// The newest modification time of the files sigma-api is built from: the workspace's
/// `Cargo.toml` and `Cargo.lock`, and every file (but tests and benches) of `sigma-api` and of
/// the workspace crates it depends on, found through their `Cargo.toml`s.
fn newest_source() -> SystemTime {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut bump = |p: &Path| {
        if let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    };
    bump(&root.join("Cargo.toml"));
    bump(&root.join("Cargo.lock"));
    let mut todo = vec!["sigma-api".to_string()];
    let mut seen = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        let dir = root.join("crates").join(&name);
        if let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml"))
            && let Ok(manifest) = text.parse::<toml::Table>()
            && let Some(deps) = manifest.get("dependencies").and_then(|d| d.as_table())
        {
            todo.extend(deps.keys().filter(|k| k.starts_with("sigma-")).cloned());
        }
        let mut dirs = vec![dir];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                let skip = matches!(
                    p.file_name().and_then(|n| n.to_str()),
                    Some("tests" | "benches" | "target")
                );
                if p.is_dir() {
                    if !skip {
                        dirs.push(p);
                    }
                } else {
                    bump(&p);
                }
            }
        }
        seen.push(name);
    }
    newest
}

/// The `sigma-api` binary next to this test's profile directory. It is built (with the same
/// target directory and profile) when it is missing or older than its sources, so that a test
/// run of this package alone never talks to a stale server; under `cargo test --workspace`
/// cargo has just built it and this is a no-op.
pub fn sigma_api_bin() -> PathBuf {
    let dir = profile_dir();
    let bin = dir.join("sigma-api");
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_none_or(|t| t < newest_source()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "sigma-api",
            "--bin",
            "sigma-api",
            "--target-dir",
        ])
        .arg(dir.parent().expect("target dir"));
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build for sigma-api");
        assert!(status.success(), "building sigma-api failed: {status}");
        assert!(bin.exists(), "cargo built sigma-api but {bin:?} is missing");
    }
    bin
}

/// A fresh directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "sigmactl-{tag}-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file (creating directories) with a mode.
    pub fn write(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running sigma-api, killed when dropped.
pub struct Api {
    pub url: String,
    child: Child,
    /// Its database directory; also HOME of every sigmactl run (so no real config is read).
    pub dir: TempDir,
}

impl Api {
    pub fn start() -> Api {
        let dir = TempDir::new("api");
        let mut child = Command::new(sigma_api_bin())
            .args(["--listen", "127.0.0.1:0"])
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("sigma.db").display()),
            )
            .env("SIGMA_ADMIN_KEY", ADMIN_KEY)
            .env_remove("SIGMA_ADMIN_KEY_FILE")
            .env_remove("DATABASE_URL_FILE")
            .env("SIGMA_LOG", "warn")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sigma-api");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait().unwrap();
                panic!("sigma-api exited before listening ({status})");
            }
            if let Some(addr) = line.trim_end().strip_prefix("sigma-api listening on ") {
                break addr.to_string();
            }
            assert!(Instant::now() < deadline, "sigma-api did not start in time");
        };
        // Keep draining stdout so sigma-api never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Api { url, child, dir }
    }

    /// sigmactl pointed at this server with the admin key, in a private environment.
    pub fn ctl(&self) -> Ctl {
        Ctl::new(self.dir.path())
            .env("SIGMA_API_URL", &self.url)
            .env("SIGMA_API_KEY", ADMIN_KEY)
    }

    /// Runs sigmactl as admin with JSON output and returns the parsed answer; panics unless
    /// it succeeds.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let r = self.ctl().run(&a);
        r.ok();
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("sigmactl {args:?} printed no JSON ({e}): {r:?}"))
    }

    /// Creates an API key of `role` through sigmactl and returns its secret.
    pub fn key(&self, role: &str) -> String {
        let v = self.json(&["keys", "create", &format!("{role} key"), "--role", role]);
        v["key"].as_str().expect("key in answer").to_string()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sigmactl invocation being prepared.
pub struct Ctl {
    cmd: Command,
    stdin: Option<String>,
}

/// What a sigmactl run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "sigmactl failed: {self:?}");
        self
    }

    /// Asserts exit code `code` and that stderr holds every one of `needles`.
    #[track_caller]
    pub fn fails(&self, code: i32, needles: &[&str]) -> &Run {
        assert_eq!(self.code, code, "wrong exit code: {self:?}");
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}: {}",
                self.stderr
            );
        }
        self
    }
}

impl Ctl {
    /// sigmactl with no SIGMA_* variables and HOME/XDG_CONFIG_HOME under `home`.
    pub fn new(home: &Path) -> Ctl {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmactl"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("SIGMA_") || k == "NO_COLOR" || k == "XDG_CONFIG_HOME" {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", home.join("home"));
        Ctl { cmd, stdin: None }
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ctl {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Ctl {
        self.cmd.env_remove(k);
        self
    }

    pub fn stdin(mut self, s: &str) -> Ctl {
        self.stdin = Some(s.to_string());
        self
    }

    pub fn run(mut self, args: &[&str]) -> Run {
        self.cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("run sigmactl");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(s) = &self.stdin {
            stdin.write_all(s.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Column start offsets (in characters) of a table's header line.
pub fn column_starts(header: &str) -> Vec<usize> {
    let chars: Vec<char> = header.chars().collect();
    let mut starts = vec![0];
    let mut i = 0;
    while i + 2 < chars.len() {
        if chars[i] == ' ' && chars[i + 1] == ' ' {
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            starts.push(j);
            i = j;
        } else {
            i += 1;
        }
    }
    starts
}

/// Asserts every row of a table has a cell boundary at each header column start: the cell
/// starts there, after at least two spaces. Returns the cells of each row.
#[track_caller]
pub fn assert_aligned(table: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = table.lines().collect();
    assert!(!lines.is_empty(), "empty table");
    let starts = column_starts(lines[0]);
    let mut rows = Vec::new();
    for l in &lines {
        assert_eq!(l.trim_end(), *l, "trailing spaces in {l:?}");
        let chars: Vec<char> = l.chars().collect();
        let mut cells = Vec::new();
        for (n, &s) in starts.iter().enumerate() {
            if s > 0 {
                assert!(
                    chars.len() > s
                        && chars[s - 1] == ' '
                        && chars[s - 2] == ' '
                        && chars[s] != ' ',
                    "column {n} does not start at {s} in {l:?}\n{table}"
                );
            }
            let end = starts.get(n + 1).map_or(chars.len(), |e| *e);
            cells.push(
                chars[s..end.min(chars.len())]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_string(),
            );
        }
        rows.push(cells);
    }
    rows
}

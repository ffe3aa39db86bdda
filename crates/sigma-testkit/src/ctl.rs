//! The real `sigmactl` binary in a private environment, and checks of the tables it prints.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{ADMIN_KEY, SigmaApi, bin};

/// One sigmactl invocation being prepared.
pub struct Ctl {
    cmd: Command,
    stdin: Option<String>,
}

/// What a sigmactl run did.
#[derive(Debug)]
pub struct Run {
    /// Its exit code (-1 when killed by a signal).
    pub code: i32,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr.
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
    /// sigmactl with no SIGMA_* variables and HOME under `home` (so no real configuration of
    /// the developer's is read).
    pub fn new(home: &Path) -> Ctl {
        let mut cmd = Command::new(bin("sigmactl"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("SIGMA_") || k == "NO_COLOR" || k == "XDG_CONFIG_HOME" {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", home.join("home"));
        Ctl { cmd, stdin: None }
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ctl {
        self.cmd.env(k, v);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, k: &str) -> Ctl {
        self.cmd.env_remove(k);
        self
    }

    /// Feeds `s` on stdin.
    pub fn stdin(mut self, s: &str) -> Ctl {
        self.stdin = Some(s.to_string());
        self
    }

    /// Runs it with `args` and waits.
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

impl SigmaApi {
    /// sigmactl pointed at this server with the admin key, its HOME in the server's directory.
    pub fn ctl(&self) -> Ctl {
        Ctl::new(&self.dir)
            .env("SIGMA_API_URL", &self.url)
            .env("SIGMA_API_KEY", ADMIN_KEY)
    }

    /// Runs sigmactl as admin with JSON output and returns the parsed answer; fails the test
    /// unless it succeeds.
    #[track_caller]
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let r = self.ctl().run(&a);
        r.ok();
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("sigmactl {args:?} printed no JSON ({e}): {r:?}"))
    }

    /// Creates an API key of `role` through `sigmactl keys create` and returns its secret.
    pub fn ctl_key(&self, role: &str) -> String {
        let v = self.ctl_json(&["keys", "create", &format!("{role} key"), "--role", role]);
        v["key"].as_str().expect("key in answer").to_string()
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

//! Runs pilot-agent and keeps it running: its output goes to the agent's log, an exit is
//! followed by a restart after a capped exponential backoff, and Envoy's readiness is polled
//! while it runs.
//!
//! pilot-agent is started in its own process group, so stopping it (SIGTERM, a grace period,
//! then SIGKILL) reaches the Envoy it started as well, and a crash never leaves an Envoy behind
//! holding the ports the next one needs.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use sigma_types::backoff::Backoff;

use super::privs::{self, Credentials};
use super::status::Shared;

/// First wait before restarting a pilot-agent that exited.
pub const RESTART_BASE: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long pilot-agent gets to drain and exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often Envoy's readiness is polled.
pub const READY_POLL: Duration = Duration::from_secs(1);
/// Longest log line kept (longer ones are cut).
const MAX_LINE: usize = 8192;

/// How to start one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// Executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited from the agent).
    pub env: Vec<(String, String)>,
    /// Working directory (the install root, which pilot-agent's relative defaults need).
    pub cwd: PathBuf,
    /// Credentials to switch to, when running as another user.
    pub creds: Option<Credentials>,
}

impl LaunchSpec {
    /// Starts it: no stdin, piped output, own process group, dying with the agent.
    pub fn spawn(&self) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let creds = self.creds.clone();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(c) = &creds {
                    privs::switch_to(c)?;
                }
                privs::die_with_parent(parent)
            });
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
    }
}

/// Sends `sig` to every process of the group `pgid`.
pub fn signal_group(pgid: u32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Stops a child and its process group: SIGTERM, up to `grace`, then SIGKILL.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    signal_group(pid, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            tracing::warn!(pid, "pilot-agent did not exit within {grace:?}; killing it");
            signal_group(pid, libc::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Whatever is left of the group (an Envoy that ignored SIGTERM).
    signal_group(pid, libc::SIGKILL);
    status
}

/// Reads one line of at most `max` bytes (the rest of a longer line is dropped); `false` at
/// the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&avail[..take.min(room)]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// Logs every line of `stream` until it ends or `stop`.
pub fn log_output<R>(
    tracker: &TaskTracker,
    stream: R,
    name: &'static str,
    pid: u32,
    program: &'static str,
    stop: CancellationToken,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tracker.spawn(
        async move {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                let more = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = read_line(&mut r, &mut buf, MAX_LINE) => m,
                };
                match more {
                    Ok(true) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end();
                        if !line.is_empty() {
                            tracing::info!(line, "{program}");
                        }
                    }
                    _ => break,
                }
            }
        }
        .instrument(tracing::info_span!(
            "proxy_output",
            program,
            pid,
            stream = name
        )),
    );
}

fn describe(s: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".into(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

async fn envoy_ready(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

/// A running supervisor.
pub struct Supervisor {
    ctl: mpsc::Sender<LaunchSpec>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

enum Outcome {
    Stop,
    Restart,
    Exited(std::io::Result<ExitStatus>),
}

impl Supervisor {
    /// Starts supervising `spec`; stops with `stop` (a child of the agent's shutdown).
    pub fn start(
        spec: LaunchSpec,
        shared: Arc<Shared>,
        http: reqwest::Client,
        ready_url: String,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Supervisor {
        let (tx, rx) = mpsc::channel(4);
        let t = tracker.clone();
        let s = stop.clone();
        let done = tracker.spawn(
            supervise(spec, rx, shared, http, ready_url, t, s)
                .instrument(tracing::info_span!("pilot_agent")),
        );
        Supervisor {
            ctl: tx,
            stop,
            done,
        }
    }

    /// Restarts pilot-agent at once with a new spec (new bundle version).
    pub async fn restart(&self, spec: LaunchSpec) {
        let _ = self.ctl.send(spec).await;
    }

    /// Stops pilot-agent and Envoy and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

async fn supervise(
    mut spec: LaunchSpec,
    mut ctl: mpsc::Receiver<LaunchSpec>,
    shared: Arc<Shared>,
    http: reqwest::Client,
    ready_url: String,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::exact(RESTART_BASE, RESTART_MAX);
    let mut first = true;
    loop {
        if !first {
            shared.restarted();
        }
        first = false;
        let mut child = match spec.spawn() {
            Ok(c) => c,
            Err(e) => {
                let d = backoff.next_delay();
                let why = format!(
                    "cannot start {}: {e}; retrying in {d:?}",
                    spec.program.display()
                );
                tracing::error!("{why}");
                shared.update(|s| s.child_down(why));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                    new = ctl.recv() => match new {
                        Some(n) => spec = n,
                        None => break,
                    },
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, program = %spec.program.display(), "pilot-agent started");
        shared.update(|s| s.child_up(pid));
        let output_stop = stop.child_token();
        if let Some(out) = child.stdout.take() {
            log_output(
                &tracker,
                out,
                "stdout",
                pid,
                "pilot-agent",
                output_stop.clone(),
            );
        }
        if let Some(err) = child.stderr.take() {
            log_output(
                &tracker,
                err,
                "stderr",
                pid,
                "pilot-agent",
                output_stop.clone(),
            );
        }
        let started = Instant::now();
        let mut poll = tokio::time::interval(READY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                _ = stop.cancelled() => break Outcome::Stop,
                new = ctl.recv() => match new {
                    Some(n) => {
                        spec = n;
                        break Outcome::Restart;
                    }
                    None => break Outcome::Stop,
                },
                st = child.wait() => break Outcome::Exited(st),
                _ = poll.tick() => {
                    let ok = envoy_ready(&http, &ready_url).await;
                    shared.update(|s| s.envoy_ready(ok));
                }
            }
        };
        match outcome {
            Outcome::Stop => {
                let st = terminate(&mut child, STOP_GRACE).await;
                tracing::info!(pid, status = ?st, "pilot-agent stopped");
                shared.update(|s| s.child_stopped());
                break;
            }
            Outcome::Restart => {
                tracing::info!(pid, "restarting pilot-agent for a new bundle");
                terminate(&mut child, STOP_GRACE).await;
                shared.update(|s| s.child_stopped());
                backoff.reset();
            }
            Outcome::Exited(st) => {
                // Its Envoy must not outlive it: the next one needs the same ports.
                signal_group(pid, libc::SIGKILL);
                if started.elapsed() >= STABLE_RUN {
                    backoff.reset();
                }
                let d = backoff.next_delay();
                let why = format!("pilot-agent {}; restarting in {d:?}", describe(&st));
                tracing::warn!(pid, "{why}");
                shared.update(|s| s.child_down(why));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                    new = ctl.recv() => match new {
                        Some(n) => spec = n,
                        None => break,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::exact(RESTART_BASE, RESTART_MAX);
        let d: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), RESTART_BASE);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_lines_split() {
        let data = format!("short\n{}\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(7, data.as_bytes());
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf, 10).await.unwrap());
        assert_eq!(buf, b"short\n");
        assert!(read_line(&mut r, &mut buf, 10).await.unwrap());
        assert_eq!(buf, b"xxxxxxxxxx");
        assert!(read_line(&mut r, &mut buf, 10).await.unwrap());
        assert_eq!(buf, b"last");
        assert!(!read_line(&mut r, &mut buf, 10).await.unwrap());
    }
}

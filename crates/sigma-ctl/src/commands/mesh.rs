//! `sigmactl mesh …`: the fleet's mesh status, the GitOps export, a VPS's bootstrap bundle for
//! a manual install, and the doctor.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration as StdDuration;

use serde_json::{Value, json};
use sigma_types::mesh::{HOSTS_BEGIN, HOSTS_END, IstioBootstrapBundle, MeshAgentState, MeshPhase};
use sigma_types::{AgentMode, List, MeshSyncStatus, Purpose, RoutePlan, Vps};
use time::OffsetDateTime;

use super::Ctx;
use super::resolve::{self, Among};
use crate::cli::{MeshCommand, MeshDoctorArgs, MeshStatusArgs, PhaseFilter};
use crate::doctor::{self, Inputs, Link, MeshReport, Outcome, PromAnswers};
use crate::error::{Error, Result};
use crate::output::status_cell;
use crate::output::{self, Cell, Details, Paint};

/// Runs `sigmactl mesh …`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: MeshCommand) -> Result<()> {
    match cmd {
        MeshCommand::Status(a) => status(ctx, a).await,
        MeshCommand::Export => export(ctx).await,
        MeshCommand::Bootstrap { vps } => bootstrap(ctx, &vps).await,
        MeshCommand::Doctor(a) => doctor_cmd(ctx, a).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Views shared with `vps show`

/// The paint of a sync status.
pub fn sync_cell(s: MeshSyncStatus) -> Cell {
    let paint = match s {
        MeshSyncStatus::Synced => Paint::Green,
        MeshSyncStatus::Pending => Paint::Yellow,
        MeshSyncStatus::Error => Paint::Red,
        MeshSyncStatus::NotMeshed => Paint::Dim,
    };
    Cell::painted(s.as_str(), paint)
}

fn phase_paint(p: MeshPhase) -> Paint {
    match p {
        MeshPhase::Ready => Paint::Green,
        MeshPhase::Installing | MeshPhase::Starting => Paint::Cyan,
        MeshPhase::Degraded => Paint::Red,
        MeshPhase::Stopped => Paint::Dim,
    }
}

/// The agent's mesh phase as a cell: the phase, `classic` for an agent in classic mode, `-`
/// when it reported nothing.
pub fn phase_cell(v: &Vps) -> Cell {
    let Some(a) = &v.agent_state else {
        return Cell::opt(None::<String>);
    };
    match (&a.mesh_state, a.mode) {
        (Some(m), _) => Cell::painted(m.state.as_str(), phase_paint(m.state)),
        (None, Some(AgentMode::Classic)) => Cell::painted("classic", Paint::Dim),
        (None, _) => Cell::opt(None::<String>),
    }
}

/// One line on the reconciler's record of a VPS (`vps show`'s "Mesh").
pub fn sync_summary(v: &Vps, now: OffsetDateTime) -> Cell {
    let m = &v.mesh;
    let mut t = m.status.as_str().to_string();
    if let Some(w) = &m.workload_entry {
        t.push_str(&format!(" as WorkloadEntry {w}"));
    }
    if let Some(msg) = &m.message {
        t.push_str(&format!(": {msg}"));
    }
    if let Some(at) = m.last_attempt_at {
        t.push_str(&format!(" (last attempt {})", output::ago(at, now)));
    }
    if v.mesh_opt_out {
        t.push_str("\nopted out of the mesh");
    }
    Cell::painted(t, sync_cell(m.status).paint)
}

fn expiry_text(t: OffsetDateTime, now: OffsetDateTime) -> String {
    if t <= now {
        format!("expired {}", output::ago(t, now))
    } else {
        format!("expires {}", output::ago(t, now))
    }
}

/// One line on the agent's mesh proxy (`vps show`'s "Mesh proxy").
pub fn proxy_summary(m: &MeshAgentState, now: OffsetDateTime) -> Cell {
    let mut t = m.state.as_str().to_string();
    if let Some(r) = &m.reason {
        t.push_str(&format!(": {r}"));
    }
    let mut facts = Vec::new();
    if let Some(b) = &m.bundle_version {
        facts.push(format!("bundle {b}"));
    }
    if let Some(x) = m.token_expires_at {
        facts.push(format!("token {}", expiry_text(x, now)));
    }
    if let Some(x) = m.cert_expires_at {
        facts.push(format!("certificate {}", expiry_text(x, now)));
    }
    facts.push(format!("{} restart(s)", m.restarts));
    t.push('\n');
    t.push_str(&facts.join(", "));
    Cell::painted(t, phase_paint(m.state))
}

// ---------------------------------------------------------------------------------------------
// mesh status

/// Columns of `mesh status`.
pub const STATUS_HEADERS: [&str; 7] = [
    "HOSTNAME",
    "PURPOSE",
    "STATUS",
    "SYNC",
    "WORKLOAD ENTRY",
    "AGENT MESH",
    "MESSAGE",
];

fn status_message(v: &Vps) -> Cell {
    let mut parts = Vec::new();
    if v.mesh_opt_out {
        parts.push("opted out".to_string());
    }
    if let Some(m) = &v.mesh.message {
        parts.push(m.clone());
    }
    if let Some(r) = v
        .agent_state
        .as_ref()
        .and_then(|a| a.mesh_state.as_ref())
        .and_then(|m| m.reason.as_ref())
    {
        parts.push(format!("agent: {r}"));
    }
    if parts.is_empty() {
        Cell::opt(None::<String>)
    } else {
        Cell::new(parts.join("; "))
    }
}

fn status_row(v: &Vps, _now: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(v.hostname.clone()),
        Cell::new(v.purpose.clone()),
        status_cell(v.status),
        sync_cell(v.mesh.status),
        Cell::opt(v.mesh.workload_entry.clone()),
        phase_cell(v),
        status_message(v),
    ]
}

fn status_details(v: &Vps, now: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("Hostname", v.hostname.clone())
        .field("ID", v.id.to_string())
        .field("Status", status_cell(v.status))
        .field("Purpose", v.purpose.clone())
        .field(
            "Mesh opt-out",
            if v.mesh_opt_out {
                Cell::painted("yes: kept out of the mesh", Paint::Yellow)
            } else {
                Cell::new("no")
            },
        )
        .field("Sync", sync_cell(v.mesh.status))
        .field("Sync message", Cell::opt(v.mesh.message.clone()))
        .field(
            "Last attempt",
            Cell::opt(v.mesh.last_attempt_at.map(|t| output::time_ago(t, now))),
        )
        .field("WorkloadEntry", Cell::opt(v.mesh.workload_entry.clone()))
        .field("Kiali workload", kiali_workload_cell(v))
        .field(
            "Last heartbeat",
            match v.last_heartbeat_at {
                Some(t) => Cell::new(output::time_ago(t, now)),
                None => Cell::painted("never", Paint::Dim),
            },
        );
    let a = v.agent_state.as_ref();
    d.field(
        "Agent mode",
        Cell::opt(a.and_then(|a| a.mode).map(|m| match m {
            AgentMode::Classic => "classic",
            AgentMode::Mesh => "mesh",
        })),
    );
    match a.and_then(|a| a.mesh_state.as_ref()) {
        None => {
            d.field("Agent mesh", Cell::opt(None::<String>));
        }
        Some(m) => {
            d.field(
                "Agent mesh",
                Cell::painted(m.state.as_str(), phase_paint(m.state)),
            )
            .field("Reason", Cell::opt(m.reason.clone()))
            .field("Bundle version", Cell::opt(m.bundle_version.clone()))
            .field(
                "Token expires",
                Cell::opt(m.token_expires_at.map(|t| output::time_ago(t, now))),
            )
            .field(
                "Certificate expires",
                Cell::opt(m.cert_expires_at.map(|t| output::time_ago(t, now))),
            )
            .field("Restarts", m.restarts.to_string());
        }
    }
    d
}

/// The workload Kiali lists the VPS as: its WorkloadGroup, which the reconciler applies with
/// its entry under the same name (the name its proxy reports as `ISTIO_META_WORKLOAD_NAME`),
/// so it is known once the entry is; in the cluster as desired when the sync is `synced`.
fn kiali_workload_cell(v: &Vps) -> Cell {
    match &v.mesh.workload_entry {
        None => Cell::opt(None::<String>),
        Some(n) => {
            let t = format!("{n} (WorkloadGroup {n}, app {})", v.purpose);
            match v.mesh.status {
                MeshSyncStatus::Synced => Cell::new(t),
                s => Cell::painted(format!("{t}; sync {}", s.as_str()), sync_cell(s).paint),
            }
        }
    }
}

fn keep(v: &Vps, a: &MeshStatusArgs) -> bool {
    if a.sync.is_some_and(|s| s != v.mesh.status) {
        return false;
    }
    match a.phase {
        None => true,
        Some(PhaseFilter::None) => v
            .agent_state
            .as_ref()
            .is_none_or(|s| s.mesh_state.is_none()),
        Some(PhaseFilter::Phase(p)) => v
            .agent_state
            .as_ref()
            .and_then(|s| s.mesh_state.as_ref())
            .is_some_and(|m| m.state == p),
    }
}

async fn status(ctx: &mut Ctx<'_>, a: MeshStatusArgs) -> Result<()> {
    if let Some(h) = &a.vps {
        let id = resolve::vps(&ctx.client, h, Among::Live).await?;
        let ans = ctx
            .client
            .get(&["api", "vps", &id.to_string()], &[])
            .await?;
        return ctx.show(&ans, status_details);
    }
    let mut q = Vec::new();
    if let Some(p) = &a.purpose {
        q.push(("purpose", p.clone()));
    }
    if let Some(s) = a.status {
        q.push(("status", s.as_str().to_string()));
    }
    // The sync and phase filters are not API filters: every page is fetched and filtered
    // here.
    let ans = ctx.client.get_all(&["api", "vps"], &q).await?;
    let all: List<Value> = ans.parse()?;
    let mut kept: Vec<(Value, Vps)> = Vec::new();
    for raw in all.items {
        let v: Vps = serde_json::from_value(raw.clone()).map_err(|e| Error::Protocol {
            url: ans.url.clone(),
            status: ans.status,
            detail: format!("a listed VPS does not match the API: {e}"),
        })?;
        if keep(&v, &a) {
            kept.push((raw, v));
        }
    }
    if !ctx.out.human() {
        let items: Vec<Value> = kept.into_iter().map(|(raw, _)| raw).collect();
        let total = items.len();
        return ctx.out.value(&json!({"items": items, "total": total}));
    }
    let vps: Vec<Vps> = kept.into_iter().map(|(_, v)| v).collect();
    ctx.rows(&vps, "VPS", &STATUS_HEADERS, status_row)
}

// ---------------------------------------------------------------------------------------------
// mesh export

/// First line of every file `mesh export -o DIR` writes: files carrying it are sigmactl's to
/// overwrite and to remove when their object is gone; any other file is left alone.
pub const EXPORT_MARKER: &str = "# Generated by `sigmactl mesh export` from sigma-api's GET /api/mesh/manifests; do not edit: the next export overwrites or removes this file.";

/// One object of the export.
#[derive(Debug, Clone, PartialEq)]
struct Manifest {
    /// Its YAML as sigma-api wrote it (without the `---` line).
    text: String,
    /// It as JSON.
    value: Value,
    kind: String,
    name: String,
    namespace: Option<String>,
}

/// The export's leading comment lines and its documents.
fn split_manifests(yaml: &str) -> std::result::Result<(Vec<String>, Vec<Manifest>), String> {
    let mut header = Vec::new();
    let mut docs: Vec<String> = Vec::new();
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
            continue;
        }
        match docs.last_mut() {
            Some(d) => {
                d.push_str(line);
                d.push('\n');
            }
            None if line.starts_with('#') || line.trim().is_empty() => {
                header.push(line.to_string())
            }
            None => return Err(format!("text before the first document: {line:?}")),
        }
    }
    let mut out = Vec::new();
    for (i, text) in docs.into_iter().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = yaml_serde::from_str(&text)
            .map_err(|e| format!("document {} is not YAML: {e}", i + 1))?;
        let field = |p: &str| value.pointer(p).and_then(Value::as_str).map(str::to_string);
        let (Some(kind), Some(name)) = (field("/kind"), field("/metadata/name")) else {
            return Err(format!("document {} lacks kind or metadata.name", i + 1));
        };
        let namespace = field("/metadata/namespace");
        out.push(Manifest {
            text,
            value,
            kind,
            name,
            namespace,
        });
    }
    Ok((header, out))
}

/// Whether `s` may be part of a file name: the characters of Kubernetes names only, so a
/// name can never climb out of the directory.
fn file_safe(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The file of each manifest: `<kind>-<name>.yaml`, with `<namespace>-` in front when the
/// objects span several namespaces.
fn file_names(docs: &[Manifest]) -> std::result::Result<Vec<String>, String> {
    let namespaces: BTreeSet<Option<&str>> = docs.iter().map(|d| d.namespace.as_deref()).collect();
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for d in docs {
        let kind = d.kind.to_ascii_lowercase();
        let mut parts = Vec::new();
        if namespaces.len() > 1 {
            parts.push(d.namespace.clone().unwrap_or_else(|| "cluster".into()));
        }
        parts.push(kind);
        parts.push(d.name.clone());
        if !parts.iter().all(|p| file_safe(p)) {
            return Err(format!(
                "object {} {:?} has a name unfit for a file name",
                d.kind, d.name
            ));
        }
        let f = format!("{}.yaml", parts.join("-"));
        if f == "kustomization.yaml" || !seen.insert(f.clone()) {
            return Err(format!("two objects map to the file name {f}"));
        }
        names.push(f);
    }
    Ok(names)
}

fn kustomization(header: &[String], files: &[String]) -> String {
    let mut s = format!("{EXPORT_MARKER}\n");
    for h in header.iter().filter(|h| !h.trim().is_empty()) {
        s.push_str(h);
        s.push('\n');
    }
    s.push_str("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    if files.is_empty() {
        s.push_str("resources: []\n");
    } else {
        s.push_str("resources:\n");
        for f in files {
            s.push_str(&format!("  - {f}\n"));
        }
    }
    s
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is a file an earlier export wrote (its first line is the marker).
fn ours(path: &Path) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().next() == Some(EXPORT_MARKER)),
        // A file that is not UTF-8 text is certainly not ours.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees half a file; the temporary file has `mode` from its creation on.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover of a killed run would make create_new fail.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        // The umask may have narrowed the mode; set it exactly.
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)));
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// What an export into a directory did.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExportDone {
    written: usize,
    unchanged: usize,
    removed: Vec<String>,
}

fn export_to_dir(dir: &Path, header: &[String], docs: &[Manifest]) -> Result<ExportDone> {
    let files = file_names(docs).map_err(Error::Refused)?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut wanted: Vec<(String, String)> = files
        .iter()
        .zip(docs)
        .map(|(f, d)| (f.clone(), format!("{EXPORT_MARKER}\n{}", d.text)))
        .collect();
    wanted.push(("kustomization.yaml".into(), kustomization(header, &files)));
    // Check every target before writing any, so a refusal leaves the directory as it was.
    for (f, _) in &wanted {
        let p = dir.join(f);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.is_file() || !ours(&p)? => {
                return Err(Error::Refused(format!(
                    "{} exists and was not written by `sigmactl mesh export`; move it away or export into another directory",
                    p.display()
                )));
            }
            _ => {}
        }
    }
    let mut done = ExportDone::default();
    for (f, text) in &wanted {
        let p = dir.join(f);
        if std::fs::read_to_string(&p).is_ok_and(|old| old == *text) {
            done.unchanged += 1;
            continue;
        }
        write_atomic(&p, text, 0o644)?;
        done.written += 1;
    }
    let keep: BTreeSet<&str> = wanted.iter().map(|(f, _)| f.as_str()).collect();
    let mut stale = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let e = e.map_err(|e| io_err(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let is_file = e.file_type().map_err(|err| io_err(&p, err))?.is_file();
        if is_file && name.ends_with(".yaml") && !keep.contains(name.as_str()) && ours(&p)? {
            stale.push((name, p));
        }
    }
    stale.sort();
    for (name, p) in stale {
        std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        done.removed.push(name);
    }
    Ok(done)
}

async fn export(ctx: &mut Ctx<'_>) -> Result<()> {
    let (url, yaml) = ctx
        .client
        .get_text(&["api", "mesh", "manifests"], &[], "application/yaml")
        .await?;
    let dir = ctx.dir.clone().filter(|d| d.as_os_str() != "-");
    if dir.is_none() && ctx.out.format != crate::output::Format::Json {
        // As served: the same bytes sigma-api's export mode produces.
        return ctx.out.text(&yaml);
    }
    let (header, docs) = split_manifests(&yaml).map_err(|detail| Error::Protocol {
        url: url.clone(),
        status: 200,
        detail,
    })?;
    // The header names VPS that qualify for the mesh but have no WorkloadEntry, and why.
    for h in header.iter().filter(|h| h.starts_with("#   skipped")) {
        eprintln!("note: {}", h.trim_start_matches('#').trim());
    }
    let Some(dir) = dir else {
        let items: Vec<Value> = docs.into_iter().map(|d| d.value).collect();
        let total = items.len();
        return ctx.out.value(&json!({"items": items, "total": total}));
    };
    let done = export_to_dir(&dir, &header, &docs)?;
    let mut line = format!(
        "{} object(s) exported to {}: {} file(s) written, {} unchanged",
        docs.len(),
        dir.display(),
        done.written,
        done.unchanged
    );
    if !done.removed.is_empty() {
        line.push_str(&format!(
            ", {} removed ({})",
            done.removed.len(),
            done.removed.join(", ")
        ));
    }
    ctx.out.line(&line)?;
    ctx.out.line(&format!(
        "Apply with `kubectl apply -k {}`, or commit the directory for Argo CD or Flux.",
        dir.display()
    ))
}

// ---------------------------------------------------------------------------------------------
// mesh bootstrap

/// The files of a bundle: name, contents, mode, and where a manual install puts it.
fn bundle_files(b: &IstioBootstrapBundle) -> [(&'static str, &str, u32); 5] {
    [
        ("root-cert.pem", b.files.root_cert_pem.as_str(), 0o644),
        // The token is a credential of the VPS's mesh identity.
        ("istio-token", b.files.istio_token.as_str(), 0o600),
        ("mesh.yaml", b.files.mesh_yaml.as_str(), 0o644),
        ("cluster.env", b.files.cluster_env.as_str(), 0o644),
        ("hosts", b.files.hosts.as_str(), 0o644),
    ]
}

/// Creates `dir` with mode 0700, or checks that an existing one is a directory no other
/// user may write to (who could otherwise swap the files before they are installed).
fn bundle_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(Error::Refused(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => Err(Error::Refused(format!(
            "{} may be written by other users (mode {:04o}); the bundle holds a credential: `chmod 700 {}` or name a new directory",
            dir.display(),
            m.permissions().mode() & 0o7777,
            dir.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(dir, e)),
        Err(e) => Err(io_err(dir, e)),
    }
}

fn next_steps(b: &IstioBootstrapBundle, dir: &Path, now: OffsetDateTime) -> String {
    let h = &b.hostname;
    let mut s = format!(
        "Wrote the Istio bootstrap bundle of {h} (WorkloadEntry {}, bundle {}) to {}:\n",
        b.workload_entry,
        b.bundle_version,
        dir.display()
    );
    s.push_str("  root-cert.pem  cluster.env  mesh.yaml  hosts  istio-token (mode 0600)\n");
    s.push_str(&format!(
        "The istio-token expires {} ({}): pilot-agent needs it to get its first certificate, so start it before then, or fetch a new bundle.\n\n",
        output::time(b.token_expires_at),
        output::ago(b.token_expires_at, now)
    ));
    s.push_str(&format!(
        "Manual install on {h}, as root, with Istio's sidecar package (pilot-agent, Envoy) installed:\n"
    ));
    for line in [
        "  install -D -m 0644 root-cert.pem /etc/certs/root-cert.pem",
        "  install -D -m 0600 istio-token   /var/run/secrets/tokens/istio-token",
        "  install -D -m 0644 cluster.env   /var/lib/istio/envoy/cluster.env",
        "  install -D -m 0644 mesh.yaml     /etc/istio/config/mesh",
    ] {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "  /etc/hosts: put the lines of `hosts` between the lines {HOSTS_BEGIN:?} and {HOSTS_END:?}\n    (replace an earlier block; none yet: {{ echo '{HOSTS_BEGIN}'; cat hosts; echo '{HOSTS_END}'; }} >> /etc/hosts)\n"
    ));
    s.push_str("  chown -R istio-proxy /etc/certs /var/run/secrets/tokens /var/lib/istio /etc/istio/config\n");
    s.push_str("  systemctl start istio\n");
    if let Some(p) = &b.istio_proxy {
        s.push_str(&format!(
            "Istio's proxy archive{}: {} (sha256 {})\n",
            p.version
                .as_deref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            p.url,
            p.sha256
        ));
    }
    let low: Vec<String> = b
        .egress
        .iter()
        .filter(|e| e.port < 1024)
        .map(|e| format!("{}:{} ({})", e.bind, e.port, e.host))
        .collect();
    if !low.is_empty() {
        s.push_str(&format!(
            "Envoy binds egress listeners below port 1024 ({}): give it CAP_NET_BIND_SERVICE.\n",
            low.join(", ")
        ));
    }
    if b.interception == sigma_types::mesh::InterceptionMode::Iptables {
        s.push_str("The bundle asks for iptables interception: run pilot-agent's istio-iptables as Istio's VM guide says.\n");
    }
    s.push_str(&format!(
        "sigma-agent with --istio-enabled does all of this itself and keeps the token fresh; `sigmactl mesh doctor {h}` checks the result.\n"
    ));
    s
}

fn field_errors(e: &sigma_types::FieldErrors) -> String {
    e.0.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn bootstrap(ctx: &mut Ctx<'_>, arg: &str) -> Result<()> {
    // Checked before anything is asked: every issued bundle is a new credential and an audit
    // entry.
    let dir = ctx.dir.clone();
    match &dir {
        None if ctx.out.human() => {
            return Err(Error::Usage(
                "mesh bootstrap writes files: give -o DIR (or -o json / -o yaml to print the bundle)"
                    .into(),
            ));
        }
        Some(d) if d.as_os_str() == "-" => {
            return Err(Error::Usage(
                "the bundle is five files: give -o DIR, or -o json / -o yaml to print it".into(),
            ));
        }
        _ => {}
    }
    // The VPS is looked up first, so an unknown hostname reads as one and a 404 of the
    // endpoint afterwards can only mean a sigma-api without it.
    let id = resolve::vps(&ctx.client, arg, Among::Live).await?;
    let v: Vps = ctx
        .client
        .get(&["api", "vps", &id.to_string()], &[])
        .await?
        .parse()?;
    let ans = match ctx
        .client
        .get(
            &["api", "agent", "istio-bootstrap"],
            &[("hostname", v.hostname.clone())],
        )
        .await
    {
        Ok(a) => a,
        Err(e) if e.status() == Some(404) => {
            return Err(Error::Unsupported {
                api_url: ctx.settings.api_url.clone(),
                endpoint: "GET /api/agent/istio-bootstrap".into(),
            });
        }
        Err(e) => {
            return Err(e.context(format!("no bootstrap bundle for {}", v.hostname)));
        }
    };
    let b: IstioBootstrapBundle = ans.parse()?;
    // Checked like the agent checks it before anything reaches the disk.
    b.check().map_err(|e| Error::Protocol {
        url: ans.url.clone(),
        status: ans.status,
        detail: format!("the bundle fails its checks: {}", field_errors(&e)),
    })?;
    if b.hostname != v.hostname || b.vps_id != v.id {
        return Err(Error::Protocol {
            url: ans.url.clone(),
            status: ans.status,
            detail: format!(
                "asked for the bundle of {} ({}), got {} ({})",
                v.hostname, v.id, b.hostname, b.vps_id
            ),
        });
    }
    let Some(dir) = dir else {
        return ctx.out.value(&ans.body);
    };
    write_bundle(&dir, &b)?;
    let text = next_steps(&b, &dir, ctx.now);
    ctx.out.text(&text)
}

/// Writes a checked bundle's files into `dir` (created 0700 when missing).
fn write_bundle(dir: &Path, b: &IstioBootstrapBundle) -> Result<()> {
    bundle_dir(dir)?;
    for (name, text, mode) in bundle_files(b) {
        write_atomic(&dir.join(name), text, mode)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// mesh doctor

const PROM_CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(10);
const PROM_TIMEOUT: StdDuration = StdDuration::from_secs(30);

async fn prom_query(
    http: &reqwest::Client,
    base: &reqwest::Url,
    query: &str,
) -> std::result::Result<Vec<f64>, String> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| format!("{base} cannot take a path"))?
        .pop_if_empty()
        .extend(["api", "v1", "query"]);
    url.query_pairs_mut().append_pair("query", query);
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| crate::client::error_chain(&e))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| crate::client::error_chain(&e))?;
    // Prometheus answers errors (400, 422, 503) with the same JSON envelope.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(body) => doctor::prom_vector(&body),
        Err(_) => Err(format!(
            "HTTP {status} without Prometheus' JSON answer (is this Prometheus' base URL?)"
        )),
    }
}

async fn ask_prometheus(base: &reqwest::Url, vps: &Vps, report: &MeshReport) -> PromAnswers {
    let url = base.to_string();
    let http = match reqwest::Client::builder()
        .connect_timeout(PROM_CONNECT_TIMEOUT)
        .timeout(PROM_TIMEOUT)
        .user_agent(concat!("sigmactl/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            let why = format!("cannot set up HTTP: {e}");
            return PromAnswers {
                url,
                up: Err(why.clone()),
                xboard_rate: Some(Err(why)),
            };
        }
    };
    let up = prom_query(&http, base, &doctor::up_query(&vps.hostname)).await;
    let xboard_rate = match doctor::workload_entry_name(vps, report) {
        None => None,
        Some(we) => Some(
            prom_query(&http, base, &doctor::xboard_query(&we))
                .await
                .map(|v| v.iter().sum()),
        ),
    };
    PromAnswers {
        url,
        up,
        xboard_rate,
    }
}

fn render_links(links: &[Link], color: bool) -> String {
    let rw = links
        .iter()
        .map(|l| l.result.as_str().len())
        .max()
        .unwrap_or(0);
    let tw = links
        .iter()
        .map(|l| l.link.title().chars().count())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for l in links {
        let paint = match l.result {
            Outcome::Ok => Paint::Green,
            Outcome::Warning => Paint::Yellow,
            Outcome::Failed => Paint::Red,
        };
        let r = l.result.as_str();
        let t = l.link.title();
        s.push_str(&paint.apply(r, color));
        s.push_str(&" ".repeat(rw - r.len() + 2));
        s.push_str(t);
        s.push_str(&" ".repeat(tw - t.chars().count() + 2));
        s.push_str(&l.reason.replace('\n', " "));
        s.push('\n');
        if let Some(f) = &l.fix {
            s.push_str(&" ".repeat(rw + tw + 4));
            s.push_str(&Paint::Dim.apply("fix: ", color));
            s.push_str(&f.replace('\n', " "));
            s.push('\n');
        }
    }
    s
}

async fn doctor_cmd(ctx: &mut Ctx<'_>, a: MeshDoctorArgs) -> Result<()> {
    let id = resolve::vps(&ctx.client, &a.vps, Among::Live).await?;
    let id_s = id.to_string();
    let v: Vps = ctx.client.get(&["api", "vps", &id_s], &[]).await?.parse()?;
    let purpose: Option<Purpose> = match ctx.client.get(&["api", "purposes", &v.purpose], &[]).await
    {
        Ok(a) => Some(a.parse()?),
        // A key that may read the VPS may read purposes; a purpose gone meanwhile is reported
        // as unreadable settings rather than stopping the walk.
        Err(e) if e.status() == Some(404) => None,
        Err(e) => return Err(e),
    };
    // The VPS exists (read just above), so a 404 here is the route: a sigma-api without it.
    let report = match ctx.client.get(&["api", "vps", &id_s, "mesh"], &[]).await {
        Ok(a) => MeshReport::Reported(Box::new(a.parse()?)),
        Err(e) if e.status() == Some(404) => MeshReport::Unsupported,
        Err(e) => return Err(e),
    };
    let prom = match &a.prometheus {
        Some(base) => Some(ask_prometheus(base, &v, &report).await),
        None => None,
    };
    // Where its routes run today and whether they are live (a sigma-api without the plan
    // answers 404 for the route).
    let routes: Option<RoutePlan> = match ctx
        .client
        .get(&["api", "vps", &id_s, "envoy-routes", "plan"], &[])
        .await
    {
        Ok(a) => Some(a.parse()?),
        Err(e) if e.status() == Some(404) => None,
        Err(e) => return Err(e),
    };
    let stale_after = a
        .stale_after
        .map(time::Duration::seconds)
        .unwrap_or(doctor::DEFAULT_STALE_AFTER);
    let links = doctor::evaluate(&Inputs {
        vps: &v,
        purpose_mesh: purpose.as_ref().map(|p| &p.mesh),
        report: &report,
        now: ctx.now,
        stale_after,
        prometheus: prom.as_ref(),
        routes: routes.as_ref(),
    });
    let (n_ok, n_warn, n_failed) = doctor::tally(&links);
    if ctx.out.human() {
        ctx.out.line(&format!(
            "mesh doctor: {} (id {}, purpose {})",
            v.hostname, v.id, v.purpose
        ))?;
        let text = render_links(&links, ctx.out.color);
        ctx.out.text(&text)?;
        ctx.out.line(&format!(
            "{n_ok} ok, {n_warn} warning(s), {n_failed} failed"
        ))?;
    } else {
        let value = serde_json::to_value(&links).map_err(|e| Error::Input {
            source_name: "output".into(),
            message: format!("cannot render JSON: {e}"),
        })?;
        ctx.out.value(&value)?;
    }
    if n_failed > 0 {
        return Err(Error::Checks(format!(
            "mesh doctor: {n_failed} of {} links of {} failed",
            links.len(),
            v.hostname
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const EXPORT: &str =
        "# Istio objects of the sigma mesh, generated by sigma-api from its inventory.
# namespace: sigma; objects: 2; VPS without a WorkloadEntry: 1
#   skipped 1 x.example.net: no address
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: xrayr
  namespace: sigma
spec: {}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vps-edge-1-example-net
  namespace: sigma
spec:
  address: \"203.0.113.7\"
";

    #[test]
    fn the_kiali_workload_is_the_group_named_like_the_entry() {
        let mut v: Vps = serde_json::from_value(json!({
            "id": "6f1c1d0e-0000-4000-8000-000000000001",
            "hostname": "edge-1.example.net",
            "alias": null, "provider": null, "country": null, "city": null,
            "ip_addresses": [], "purpose": "xrayr", "status": "active", "tags": [],
            "monitoring": true, "node_exporter_port": 9100, "system_info": null,
            "agent_state": null, "last_heartbeat_at": null,
            "desired_version": 1, "envoy_version": 0,
            "created_at": "2027-01-01T00:00:00Z", "updated_at": "2027-01-01T00:00:00Z",
            "deleted_at": null, "mesh_opt_out": false,
            "mesh": {"status": "synced", "message": null, "last_attempt_at": null,
                     "workload_entry": "vps-edge-1-example-net"}
        }))
        .unwrap();
        let c = kiali_workload_cell(&v);
        assert_eq!(
            c.text,
            "vps-edge-1-example-net (WorkloadGroup vps-edge-1-example-net, app xrayr)"
        );
        v.mesh.status = MeshSyncStatus::Error;
        let c = kiali_workload_cell(&v);
        assert!(c.text.ends_with("; sync error"), "{}", c.text);
        assert_eq!(c.paint, Paint::Red);
        v.mesh.workload_entry = None;
        assert_eq!(kiali_workload_cell(&v), Cell::opt(None::<String>));
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sigmactl-unit-{tag}-{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn exports_split_into_named_documents() {
        let (header, docs) = split_manifests(EXPORT).unwrap();
        assert_eq!(header.len(), 3);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].kind, "WorkloadEntry");
        assert_eq!(docs[1].value["spec"]["address"], "203.0.113.7");
        assert!(docs[0].text.starts_with("apiVersion:"));
        assert_eq!(
            file_names(&docs).unwrap(),
            [
                "workloadgroup-xrayr.yaml",
                "workloadentry-vps-edge-1-example-net.yaml"
            ]
        );
        assert!(split_manifests("kind: X\n").is_err());
        assert!(
            split_manifests("---\nkind: X\n").is_err(),
            "no metadata.name"
        );
        let (_, mut docs) = split_manifests(EXPORT).unwrap();
        docs[0].name = "../evil".into();
        assert!(file_names(&docs).is_err());
    }

    #[test]
    fn export_dirs_are_updated_and_pruned_but_foreign_files_stay() {
        let dir = tmp("export");
        let (header, docs) = split_manifests(EXPORT).unwrap();
        let d = export_to_dir(&dir, &header, &docs).unwrap();
        assert_eq!((d.written, d.unchanged), (3, 0));
        let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        assert!(
            k.contains("  - workloadentry-vps-edge-1-example-net.yaml\n"),
            "{k}"
        );
        assert!(k.contains("#   skipped 1 x.example.net"), "{k}");
        std::fs::write(dir.join("mine.yaml"), "kind: Mine\n").unwrap();

        let d = export_to_dir(&dir, &header, &docs[..1]).unwrap();
        assert_eq!(d.unchanged, 1, "the WorkloadGroup is unchanged");
        assert_eq!(d.removed, ["workloadentry-vps-edge-1-example-net.yaml"]);
        assert!(dir.join("mine.yaml").exists(), "files of others stay");

        std::fs::write(
            dir.join("workloadentry-vps-edge-1-example-net.yaml"),
            "mine\n",
        )
        .unwrap();
        let e = export_to_dir(&dir, &header, &docs).unwrap_err();
        assert!(
            e.to_string()
                .contains("was not written by `sigmactl mesh export`"),
            "{e}"
        );
        assert!(
            std::fs::read_to_string(dir.join("kustomization.yaml"))
                .unwrap()
                .contains("resources:\n  - workloadgroup-xrayr.yaml\n"),
            "a refusal writes nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn bundle() -> IstioBootstrapBundle {
        serde_json::from_value(json!({
            "vps_id": "6f1c1d0e-0000-4000-8000-000000000001",
            "hostname": "edge-1.example.net",
            "workload_entry": "vps-edge-1-example-net",
            "files": {
                "root-cert.pem": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
                "istio-token": "eyJ.abc.def",
                "mesh.yaml": "defaultConfig: {}\n",
                "cluster.env": "CANONICAL_SERVICE='xrayr'\n",
                "hosts": "10.0.0.1 istiod.istio-system.svc\n"
            },
            "token_expires_at": "2027-01-15T09:00:00Z",
            // SHA-256 of the DER above (bytes 30 82): `check` compares them.
            "root_cert_sha256": "9df0692e6d29b2a40631cd75ea0ce46206374edcb7a7950ce3180025c7088a00",
            "bundle_version": "v1",
            "interception": "none",
            "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 80, "bind": "127.0.0.2"}],
            "istio_proxy": {"url": "https://example.net/istio-sidecar.tar.gz", "sha256": "b".repeat(64), "version": "1.30.0"}
        }))
        .unwrap()
    }

    #[test]
    fn bundles_are_written_with_private_token_and_next_steps() {
        let b = bundle();
        b.check().unwrap();
        let dir = tmp("bundle-files").join("edge-1");
        write_bundle(&dir, &b).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("istio-token")), 0o600);
        assert_eq!(mode(&dir.join("cluster.env")), 0o644);
        assert_eq!(
            std::fs::read_to_string(dir.join("istio-token")).unwrap(),
            "eyJ.abc.def"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts")).unwrap(),
            "10.0.0.1 istiod.istio-system.svc\n"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cluster.env",
                "hosts",
                "istio-token",
                "mesh.yaml",
                "root-cert.pem"
            ],
            "no temporary files are left"
        );
        // A second write replaces the files in place.
        write_bundle(&dir, &b).unwrap();

        let now = OffsetDateTime::parse(
            "2027-01-15T08:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let t = next_steps(&b, &dir, now);
        for needle in [
            "expires 2027-01-15 09:00:00 UTC (in 1h)",
            "/etc/certs/root-cert.pem",
            "/var/run/secrets/tokens/istio-token",
            "/var/lib/istio/envoy/cluster.env",
            "/etc/istio/config/mesh",
            "# BEGIN sigma-istio",
            "# END sigma-istio",
            "systemctl start istio",
            "CAP_NET_BIND_SERVICE",
            "istio-sidecar.tar.gz",
        ] {
            assert!(t.contains(needle), "{needle} missing:\n{t}");
        }
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn bundle_dirs_are_private() {
        let dir = tmp("bundle");
        bundle_dir(&dir.join("a/b")).unwrap();
        let m = std::fs::metadata(dir.join("a/b")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(dir.join("a/b"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bundle_dir(&dir.join("a/b")).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        write_atomic(&dir.join("a/t"), "secret", 0o600).unwrap();
        let m = std::fs::metadata(dir.join("a/t")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(dir.join("a/t")).unwrap(), "secret");
        let e = bundle_dir(&dir.join("a/t")).unwrap_err();
        assert!(e.to_string().contains("not a directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

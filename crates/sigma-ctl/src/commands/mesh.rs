//! `sigmactl mesh …`: the fleet's mesh status, the GitOps export, a VPS's bootstrap bundle for
//! a manual install, and the doctor. The export and the bootstrap bundle, which write files,
//! are in the submodules `export` and `bootstrap`.

use std::time::Duration as StdDuration;

use serde_json::{Value, json};
use sigma_types::mesh::{MeshAgentState, MeshPhase};
use sigma_types::{AgentMode, List, MeshSyncStatus, Purpose, RoutePlan, Vps};
use time::OffsetDateTime;

use super::Ctx;
use super::resolve::{self, Among};
use crate::cli::{MeshCommand, MeshDoctorArgs, MeshStatusArgs, PhaseFilter};
use crate::doctor::{self, Inputs, Link, MeshReport, Outcome, PromAnswers};
use crate::error::{Error, Result};
use crate::output::status_cell;
use crate::output::{self, Cell, Details, Paint};

mod bootstrap;
mod export;

use bootstrap::*;
use export::*;

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
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use sigma_types::mesh::IstioBootstrapBundle;

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

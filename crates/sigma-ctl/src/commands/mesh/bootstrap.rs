//! `sigmactl mesh bootstrap`: a VPS's Istio bootstrap bundle written for a manual install, with
//! the steps that follow.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use sigma_types::Vps;
use sigma_types::mesh::{HOSTS_BEGIN, HOSTS_END, IstioBootstrapBundle};
use time::OffsetDateTime;

use super::export::{io_err, write_atomic};
use crate::commands::Ctx;
use crate::commands::resolve::{self, Among};
use crate::error::{Error, Result};
use crate::output;

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
pub(super) fn bundle_dir(dir: &Path) -> Result<()> {
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

pub(super) fn next_steps(b: &IstioBootstrapBundle, dir: &Path, now: OffsetDateTime) -> String {
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

pub(super) async fn bootstrap(ctx: &mut Ctx<'_>, arg: &str) -> Result<()> {
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
pub(super) fn write_bundle(dir: &Path, b: &IstioBootstrapBundle) -> Result<()> {
    bundle_dir(dir)?;
    for (name, text, mode) in bundle_files(b) {
        write_atomic(&dir.join(name), text, mode)?;
    }
    Ok(())
}

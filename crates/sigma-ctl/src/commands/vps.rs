//! `sigmactl vps …`

use serde_json::json;
use sigma_types::{
    AgentMode, AgentState, EnrollmentTokenCreate, EnrollmentTokenCreated, SystemInfo, Vps,
    VpsCreate, VpsPatch, VpsPatchBody, VpsStatus,
};
use time::OffsetDateTime;

use super::Ctx;
use super::contract;
use super::keys;
use super::mesh;
use super::resolve::{self, Among};
use crate::cli::{VpsCommand, VpsCreateArgs, VpsEditArgs, VpsListArgs};
use crate::error::{Error, Result};
use crate::install;
use crate::output::{self, Cell, Details, Paint, status_cell};

fn last_seen(v: &Vps, now: OffsetDateTime) -> Cell {
    match v.last_heartbeat_at {
        Some(t) => Cell::new(output::ago(t, now)),
        None => Cell::painted("never", Paint::Dim),
    }
}

/// Columns of `vps list`.
pub const LIST_HEADERS: [&str; 10] = [
    "HOSTNAME",
    "STATUS",
    "PURPOSE",
    "PROVIDER",
    "COUNTRY",
    "PUBLIC IP",
    "TAGS",
    "COST",
    "EXPIRES",
    "LAST SEEN",
];

fn list_row(v: &Vps, now: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(v.hostname.clone()),
        status_cell(v.status),
        Cell::new(v.purpose.clone()),
        Cell::opt(v.provider.clone()),
        Cell::opt(v.country.clone()),
        Cell::opt(v.public_ip()),
        if v.tags.is_empty() {
            Cell::opt(None::<String>)
        } else {
            Cell::new(v.tags.join(","))
        },
        Cell::opt(contract::cost_text(&v.contract)),
        contract::expires_cell(&v.contract, now),
        last_seen(v, now),
    ]
}

fn system_summary(s: &SystemInfo) -> String {
    let mut parts = Vec::new();
    if let Some(os) = &s.os {
        parts.push(os.clone());
    }
    if let Some(k) = &s.kernel {
        parts.push(format!("kernel {k}"));
    }
    if let Some(c) = s.cpu_cores {
        parts.push(format!("{c} cores"));
    }
    match (s.memory_total_bytes, s.memory_available_bytes) {
        (Some(t), Some(a)) => parts.push(format!(
            "memory {} free of {}",
            output::bytes(a),
            output::bytes(t)
        )),
        (Some(t), None) => parts.push(format!("memory {}", output::bytes(t))),
        _ => {}
    }
    match (s.disk_total_bytes, s.disk_used_bytes) {
        (Some(t), Some(u)) => parts.push(format!(
            "disk {} used of {}",
            output::bytes(u),
            output::bytes(t)
        )),
        (Some(t), None) => parts.push(format!("disk {}", output::bytes(t))),
        _ => {}
    }
    if let Some(l) = s.load_average {
        parts.push(format!("load {:.2} {:.2} {:.2}", l[0], l[1], l[2]));
    }
    if let Some(u) = s.uptime_seconds {
        parts.push(format!("up {}", uptime(u)));
    }
    if let Some(a) = &s.agent_version {
        parts.push(format!("sigma-agent {a}"));
    }
    parts.join(", ")
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m")
    }
}

fn agent_summary(a: &AgentState, now: OffsetDateTime) -> Cell {
    let mut parts = Vec::new();
    match a.mode {
        Some(AgentMode::Classic) => parts.push("classic mode".to_string()),
        Some(AgentMode::Mesh) => parts.push("mesh mode".to_string()),
        None => {}
    }
    if let Some(v) = a.envoy_applied_version {
        parts.push(format!("Envoy accepted version {v}"));
    }
    if let Some(n) = a.xds_clients {
        parts.push(format!("{n} xDS client(s)"));
    }
    let mut text = parts.join(", ");
    if let Some(n) = &a.last_nack {
        text.push_str(&format!(
            "\nlast rejected: version {} of {} ({}): {}",
            n.version,
            n.type_url,
            output::ago(n.at, now),
            n.detail
        ));
        return Cell::painted(text, Paint::Yellow);
    }
    Cell::new(text)
}

/// The detail view of a VPS.
pub fn details(v: &Vps, now: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("ID", v.id.to_string())
        .field("Hostname", v.hostname.clone())
        .field("Alias", Cell::opt(v.alias.clone()))
        .field("Status", status_cell(v.status))
        .field("Purpose", v.purpose.clone())
        .field("Provider", Cell::opt(v.provider.clone()))
        .field("Country", Cell::opt(v.country.clone()))
        .field("City", Cell::opt(v.city.clone()))
        .field(
            "Addresses",
            if v.ip_addresses.is_empty() {
                Cell::opt(None::<String>)
            } else {
                Cell::new(
                    v.ip_addresses
                        .iter()
                        .map(|a| format!("{} ({})", a.ip, a.label))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            },
        )
        .field(
            "Tags",
            if v.tags.is_empty() {
                Cell::opt(None::<String>)
            } else {
                Cell::new(v.tags.join(", "))
            },
        )
        .field(
            "Monitoring",
            if v.monitoring {
                format!("node-exporter on port {}", v.node_exporter_port)
            } else {
                format!("off (node-exporter port {})", v.node_exporter_port)
            },
        )
        .field(
            "Last heartbeat",
            match v.last_heartbeat_at {
                Some(t) => Cell::new(output::time_ago(t, now)),
                None => Cell::painted("never", Paint::Dim),
            },
        )
        .field("Desired version", v.desired_version.to_string())
        .field("Envoy version", v.envoy_version.to_string());
    if let Some(s) = &v.system_info {
        d.field("System", system_summary(s));
    }
    if let Some(a) = &v.agent_state {
        d.field("Agent", agent_summary(a, now));
    }
    d.field("Mesh", mesh::sync_summary(v, now));
    if let Some(m) = v.agent_state.as_ref().and_then(|a| a.mesh_state.as_ref()) {
        d.field("Mesh proxy", mesh::proxy_summary(m, now));
    }
    let c = &v.contract;
    if *c != sigma_types::VpsContract::default() {
        d.field("Cost", Cell::opt(contract::cost_text(c)))
            .field("Expires", contract::expires_cell(c, now))
            .field("Auto-renew", if c.auto_renew { "yes" } else { "no" })
            .field(
                "Purchased",
                Cell::opt(c.purchased_on.map(|d| d.to_string())),
            )
            .field("Specs", Cell::opt(contract::specs_text(c)))
            .field("SSH port", Cell::opt(c.ssh_port.map(|p| p.to_string())))
            .field("Data centre", Cell::opt(c.data_center.clone()));
    }
    d.field("Created", output::time(v.created_at))
        .field("Updated", output::time(v.updated_at));
    if let Some(t) = v.deleted_at {
        d.field("Deleted", Cell::painted(output::time(t), Paint::Red));
    }
    d
}

fn set<T>(v: Option<T>) -> Option<Option<T>> {
    v.map(Some)
}

fn set_or_clear<T>(v: Option<T>, clear: bool) -> Option<Option<T>> {
    if clear { Some(None) } else { v.map(Some) }
}

fn create_body(a: VpsCreateArgs) -> Result<VpsCreate> {
    // Start from the type's own defaults (monitoring on, port 9100) and set what was given.
    let mut c: VpsCreate =
        serde_json::from_value(json!({"hostname": a.hostname, "purpose": a.purpose}))
            .map_err(|e| Error::Usage(e.to_string()))?;
    c.alias = a.alias;
    c.provider = a.provider;
    c.ip_addresses = a.ips;
    c.country = a.country;
    c.city = a.city;
    c.status = a.status;
    c.tags = a.tags;
    if let Some(m) = a.monitoring {
        c.monitoring = m;
    }
    if let Some(p) = a.node_exporter_port {
        c.node_exporter_port = i64::from(p);
    }
    if let Some(o) = a.mesh_opt_out {
        c.mesh_opt_out = o;
    }
    Ok(c)
}

/// The `PATCH` body of `vps edit`: only the fields given, `null` for `--clear-*`.
pub fn patch_body(a: &VpsEditArgs) -> VpsPatchBody {
    let patch = VpsPatch {
        hostname: set(a.hostname.clone()),
        alias: set_or_clear(a.alias.clone(), a.clear_alias),
        provider: set_or_clear(a.provider.clone(), a.clear_provider),
        ip_addresses: set_or_clear((!a.ips.is_empty()).then(|| a.ips.clone()), a.clear_ips),
        country: set_or_clear(a.country.clone(), a.clear_country),
        city: set_or_clear(a.city.clone(), a.clear_city),
        purpose: set(a.purpose.clone()),
        status: set(a.status),
        tags: set_or_clear((!a.tags.is_empty()).then(|| a.tags.clone()), a.clear_tags),
        monitoring: set(a.monitoring),
        node_exporter_port: set(a.node_exporter_port.map(i64::from)),
    };
    VpsPatchBody {
        patch,
        mesh_opt_out: a.mesh_opt_out,
        contract: None,
    }
}

fn list_query(a: &VpsListArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(s) = a.status {
        q.push(("status", s.as_str().to_string()));
    }
    for (k, v) in [
        ("purpose", &a.purpose),
        ("country", &a.country),
        ("provider", &a.provider),
        ("tag", &a.tag),
        ("hostname", &a.hostname),
        ("q", &a.q),
        ("currency", &a.currency),
        ("cost_min", &a.cost_min),
        ("cost_max", &a.cost_max),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if let Some(d) = a.expires_within_days {
        q.push(("expires_within_days", d.to_string()));
    }
    q
}

/// Default lifetime of a reinstall token: long enough to reinstall a host, short enough that
/// a forgotten one does not linger.
pub const REENROLL_DEFAULT_TTL_SECONDS: i64 = 3600;

/// The body of `vps reenroll`: a token bound to VPS `id`, single use, no presets.
fn reenroll_body(id: uuid::Uuid, ttl: Option<i64>) -> Result<EnrollmentTokenCreate> {
    serde_json::from_value(json!({
        "vps_id": id,
        "max_uses": 1,
        "ttl_seconds": ttl.unwrap_or(REENROLL_DEFAULT_TTL_SECONDS),
    }))
    .map_err(|e| Error::Usage(e.to_string()))
}

/// `sigmactl vps reenroll HOST`: issues a token bound to the VPS and prints the install
/// command, like `enroll create` does.
async fn reenroll(
    ctx: &mut Ctx<'_>,
    vps: &str,
    ttl: Option<i64>,
    agent_api_url: Option<String>,
) -> Result<()> {
    let id = resolve::vps(&ctx.client, vps, Among::Live).await?;
    let agent_url = agent_api_url.unwrap_or_else(|| ctx.settings.api_url.clone());
    let body = reenroll_body(id, ttl)?;
    let ans = ctx
        .client
        .post(&["api", "enrollment-tokens"], &body)
        .await?;
    if !ctx.out.human() {
        return ctx.out.value(&ans.body);
    }
    let c: EnrollmentTokenCreated = ans.parse()?;
    let head = ctx.out.paint(
        "Reinstall token, bound to this VPS (shown once):",
        Paint::Bold,
    );
    ctx.out.line(&head)?;
    ctx.out.line(&c.token)?;
    ctx.out.line("")?;
    let head = ctx
        .out
        .paint(&format!("Reinstall sigma-agent on {vps}:"), Paint::Bold);
    ctx.out.line(&head)?;
    ctx.out
        .line(&install::install_command(&agent_url, &c.token))?;
    ctx.out.line("")?;
    ctx.out.line(
        "Enrolling with it revokes the VPS's current agent key and issues a new one. It enrolls \
         this VPS only, once.",
    )?;
    ctx.out.line("")?;
    let d = keys::token_details(&c.enrollment_token, ctx.now);
    ctx.out.details(&d)
}

/// Runs `sigmactl vps …`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: VpsCommand) -> Result<()> {
    match cmd {
        VpsCommand::List(a) => {
            let ans = ctx
                .fetch_list(&["api", "vps"], list_query(&a), &a.page)
                .await?;
            ctx.list(&ans, "VPS", &a.page, &LIST_HEADERS, list_row)
        }
        VpsCommand::Show { vps } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let ans = ctx
                .client
                .get(&["api", "vps", &id.to_string()], &[])
                .await?;
            ctx.show(&ans, details)
        }
        VpsCommand::Create(a) => {
            let body = create_body(a)?;
            let ans = ctx.client.post(&["api", "vps"], &body).await?;
            ctx.show(&ans, details)
        }
        VpsCommand::Edit(a) => {
            let id = resolve::vps(&ctx.client, &a.vps, Among::Live).await?;
            let body = contract::with_patch(
                serde_json::to_value(patch_body(&a)).map_err(|e| Error::Usage(e.to_string()))?,
                contract::patch(&a.contract)?,
            );
            let ans = ctx
                .client
                .patch(&["api", "vps", &id.to_string()], &body)
                .await?;
            ctx.show(&ans, details)
        }
        VpsCommand::Export {
            format,
            file,
            filter,
        } => {
            let mut q = list_query(&filter);
            q.push(("format", format.clone()));
            let accept = if format == "csv" {
                "text/csv"
            } else {
                "application/json"
            };
            let (_, text) = ctx
                .client
                .get_text(&["api", "vps", "export"], &q, accept)
                .await?;
            match file {
                Some(path) => std::fs::write(&path, text.as_bytes())
                    .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display()))),
                None => ctx.out.text(&text),
            }
        }
        VpsCommand::Import {
            file,
            dry_run,
            partial,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
            let ctype = if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            {
                "application/json"
            } else {
                "text/csv"
            };
            let mut q = Vec::new();
            if dry_run {
                q.push(("dry_run", "true".to_string()));
            }
            if partial {
                q.push(("mode", "partial".to_string()));
            }
            let ans = ctx
                .client
                .post_bytes(&["api", "vps", "import"], &q, ctype, bytes)
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let r: sigma_types::records::ImportReport = ans.parse()?;
            contract::print_import(ctx, &r)
        }
        VpsCommand::Expiring { days } => {
            let mut ans = ctx
                .client
                .get_all(&["api", "vps"], &contract::expiring_query(days))
                .await?;
            if let Some(items) = ans.body["items"].as_array_mut() {
                contract::sort_expiring(items);
            }
            ctx.list(
                &ans,
                "VPS",
                &crate::cli::Page {
                    limit: None,
                    offset: None,
                    all: true,
                },
                &contract::EXPIRING_HEADERS,
                contract::expiring_row,
            )
        }
        VpsCommand::Retire { vps, force } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let q = if force {
                vec![("force", "true".to_string())]
            } else {
                vec![]
            };
            let ans = ctx
                .client
                .post_empty(&["api", "vps", &id.to_string(), "retire"], &q)
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let v: Vps = ans.parse()?;
            let how = match v.status {
                VpsStatus::Retiring => {
                    "; its agent stops what it manages at its next heartbeat, then it is retired"
                }
                _ => "",
            };
            ctx.out.line(&format!(
                "VPS {} is {}{how}",
                v.hostname,
                ctx.out
                    .paint(v.status.as_str(), status_cell(v.status).paint)
            ))
        }
        VpsCommand::Reenroll {
            vps,
            ttl,
            agent_api_url,
        } => reenroll(ctx, &vps, ttl, agent_api_url).await,
        VpsCommand::Restore { vps } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Deleted).await?;
            let ans = ctx
                .client
                .post_empty(&["api", "vps", &id.to_string(), "restore"], &[])
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let v: Vps = ans.parse()?;
            ctx.out.line(&format!(
                "VPS {} restored; it is {}",
                v.hostname,
                ctx.out
                    .paint(v.status.as_str(), status_cell(v.status).paint)
            ))
        }
        VpsCommand::Delete { vps } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let ans = ctx.client.delete(&["api", "vps", &id.to_string()]).await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let v: Vps = ans.parse()?;
            ctx.out.line(&format!(
                "VPS {} deleted (id {}); `sigmactl vps restore {}` brings it back",
                v.hostname, v.id, v.id
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sigma_types::Normalize;

    use super::*;
    use crate::cli::{Cli, Command};

    fn edit(args: &[&str]) -> serde_json::Value {
        let mut argv = vec!["sigmactl", "vps", "edit", "h"];
        argv.extend_from_slice(args);
        let Command::Vps(VpsCommand::Edit(a)) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not vps edit")
        };
        serde_json::to_value(patch_body(&a)).unwrap()
    }

    #[test]
    fn reenroll_binds_a_single_use_short_lived_token() {
        let Command::Vps(VpsCommand::Reenroll { vps, ttl, .. }) =
            Cli::try_parse_from(["sigmactl", "vps", "reenroll", "edge-1", "--ttl", "30m"])
                .unwrap()
                .command
        else {
            panic!("not vps reenroll")
        };
        assert_eq!((vps.as_str(), ttl), ("edge-1", Some(1800)));
        let id = uuid::Uuid::nil();
        let b = reenroll_body(id, None).unwrap();
        assert_eq!(
            (b.vps_id, b.max_uses, b.ttl_seconds),
            (Some(id), 1, REENROLL_DEFAULT_TTL_SECONDS)
        );
        assert!(b.purpose.is_none() && b.provider.is_none() && b.tags.is_empty());
        // What the server checks, the body passes.
        assert!(b.normalize().is_ok());
    }

    #[test]
    fn patches_carry_only_given_fields_and_null_for_clear() {
        assert_eq!(edit(&["--alias", "a"]), json!({"alias": "a"}));
        assert_eq!(
            edit(&[
                "--clear-alias",
                "--clear-tags",
                "--clear-ips",
                "--city",
                "Berlin"
            ]),
            json!({"alias": null, "tags": null, "ip_addresses": null, "city": "Berlin"})
        );
        assert_eq!(
            edit(&[
                "--tag",
                "b",
                "--tag",
                "a",
                "--monitoring",
                "false",
                "--status",
                "retired"
            ]),
            json!({"tags": ["b", "a"], "monitoring": false, "status": "retired"})
        );
        assert_eq!(
            edit(&["--mesh-opt-out", "true"]),
            json!({"mesh_opt_out": true})
        );
        assert_eq!(
            edit(&["--mesh-opt-out", "false", "--alias", "a"]),
            json!({"mesh_opt_out": false, "alias": "a"})
        );
        assert_eq!(
            edit(&["--ip", "10.0.0.1", "--node-exporter-port", "9200"]),
            json!({"ip_addresses": [{"ip": "10.0.0.1", "label": "public"}], "node_exporter_port": 9200})
        );
    }

    #[test]
    fn creates_keep_the_api_defaults() {
        let Command::Vps(VpsCommand::Create(a)) = Cli::try_parse_from([
            "sigmactl",
            "vps",
            "create",
            "h.example",
            "--purpose",
            "xrayr",
        ])
        .unwrap()
        .command
        else {
            panic!("not vps create")
        };
        let c = create_body(a).unwrap();
        assert!(c.monitoring);
        assert_eq!(c.node_exporter_port, 9100);
        assert_eq!(c.status, None);
    }

    #[test]
    fn uptimes() {
        assert_eq!(uptime(59), "0m");
        assert_eq!(uptime(3 * 3600 + 120), "3h 2m");
        assert_eq!(uptime(2 * 86_400 + 3600), "2d 1h");
    }
}

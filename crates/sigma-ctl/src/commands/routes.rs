//! `sigmactl routes …`: Envoy routes of a VPS.

use serde_json::Value;
use std::collections::HashMap;

use sigma_types::{
    EnvoyRoute, EnvoyRouteBatch, EnvoyRouteCreate, EnvoyRoutePatch, PlanMode, RouteListener,
    RoutePlan, RoutePlanEntry, RouteRuns, RouteStatus,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Ctx;
use super::resolve::{self, Among};
use crate::cli::{RouteAddArgs, RouteCommand, RouteEditArgs};
use crate::error::{Error, Result};
use crate::input;
use crate::output::{self, Cell, Details, Paint};

/// Fields of a listed route that a routes file may carry but the API sets itself; they are
/// dropped when a file is applied, so `routes list -o yaml` output can be applied.
pub const OUTPUT_ONLY_FIELDS: [&str; 4] = ["id", "vps_id", "created_at", "updated_at"];

/// Where a route forwards to, in one cell: `host:port`, `vps exit-1:vpn` or
/// `pool vpn-exit:vpn (DE,FI)`.
fn backend(r: &EnvoyRoute) -> String {
    r.upstream.to_string()
}

/// The cluster type of a backend route; fleet targets are resolved by sigma.
fn cluster(r: &EnvoyRoute) -> &'static str {
    r.upstream.kind_label()
}

fn status_cell(s: RouteStatus) -> Cell {
    match s {
        RouteStatus::Active => Cell::painted("active", Paint::Green),
        RouteStatus::Disabled => Cell::painted("disabled", Paint::Dim),
    }
}

fn row(r: &EnvoyRoute, _: OffsetDateTime) -> Vec<Cell> {
    vec![
        Cell::new(r.name.clone()),
        Cell::new(r.listen_port.to_string()),
        Cell::new(backend(r)),
        Cell::new(cluster(r)),
        Cell::new(format!("{}ms", r.connect_timeout_ms)),
        Cell::new(r.proxy_protocol.as_str()),
        status_cell(r.status),
    ]
}

const HEADERS: [&str; 7] = [
    "NAME", "LISTEN", "BACKEND", "CLUSTER", "TIMEOUT", "PROXY", "STATUS",
];

/// Where a route runs, painted: red when it does not forward.
fn runs_cell(r: RouteRuns) -> Cell {
    match r {
        RouteRuns::Classic => Cell::new("classic"),
        RouteRuns::Mesh => Cell::painted("mesh", Paint::Green),
        RouteRuns::NotCarried => Cell::painted("not carried", Paint::Red),
    }
}

/// Whether a route's listener is live, painted: `live` green, `not live` red, `?` dim.
fn live_cell(l: Option<&RouteListener>) -> Cell {
    match l {
        Some(RouteListener::Live) => Cell::painted("live", Paint::Green),
        Some(RouteListener::NotLive { .. }) => Cell::painted("not live", Paint::Red),
        Some(RouteListener::Unknown { .. }) | None => Cell::painted("?", Paint::Dim),
    }
}

/// `routes list` with the mode each route runs in today and whether its listener is live
/// (disabled routes run nowhere).
const LIST_HEADERS: [&str; 9] = [
    "NAME", "LISTEN", "BACKEND", "CLUSTER", "TIMEOUT", "PROXY", "STATUS", "RUNS", "LIVE",
];

fn plan_row(r: &RoutePlanEntry, _: OffsetDateTime) -> Vec<Cell> {
    let detail = match r.runs {
        RouteRuns::Classic => "sigma-agent's Envoy".to_string(),
        RouteRuns::Mesh => format!(
            "{}:{} -> {}",
            r.listen_address.as_deref().unwrap_or("?"),
            r.listen_port,
            r.mesh_host.as_deref().unwrap_or("?")
        ),
        RouteRuns::NotCarried => r
            .issues
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    };
    // A plan for today's mode also says whether the listener is live.
    let detail = match &r.listener {
        None => detail,
        Some(RouteListener::Live) => format!("{detail} (live)"),
        Some(RouteListener::NotLive { reason }) => format!("{detail} (not live: {reason})"),
        Some(RouteListener::Unknown { reason }) => format!("{detail} (live?: {reason})"),
    };
    vec![
        Cell::new(r.name.clone()),
        Cell::new(r.listen_port.to_string()),
        Cell::new(r.upstream.clone()),
        runs_cell(r.runs),
        Cell::new(detail),
    ]
}

const PLAN_HEADERS: [&str; 5] = ["NAME", "LISTEN", "BACKEND", "RUNS", "DETAIL"];

/// The plan as sent (for `-o json|yaml`) and parsed.
async fn plan(ctx: &Ctx<'_>, id: Uuid, mode: PlanMode) -> Result<(Value, RoutePlan)> {
    let ans = ctx
        .client
        .get(
            &["api", "vps", &id.to_string(), "envoy-routes", "plan"],
            &[("mode", mode.as_str().to_string())],
        )
        .await?;
    let p = ans.parse()?;
    Ok((ans.body, p))
}

fn details(r: &EnvoyRoute, _: OffsetDateTime) -> Details {
    let mut d = Details::new();
    d.field("ID", r.id.to_string())
        .field("VPS", r.vps_id.to_string())
        .field("Name", r.name.clone())
        .field("Listen port", r.listen_port.to_string())
        .field("Backend", backend(r))
        .field("Cluster type", cluster(r))
        .field("Connect timeout", format!("{} ms", r.connect_timeout_ms))
        .field("PROXY protocol", r.proxy_protocol.as_str())
        .field("Status", status_cell(r.status))
        .field("Created", output::time(r.created_at))
        .field("Updated", output::time(r.updated_at));
    d
}

fn create_body(a: RouteAddArgs) -> EnvoyRouteCreate {
    EnvoyRouteCreate {
        name: a.name,
        listen_port: i64::from(a.listen_port),
        backend_host: a.backend_host,
        backend_port: a.backend_port.map(i64::from),
        target: a.target.input(),
        cluster_type: a.cluster_type,
        connect_timeout_ms: a.connect_timeout_ms,
        proxy_protocol: a.proxy_protocol,
        status: a.status,
    }
}

/// The `PATCH` body of `routes edit`: only the fields given.
pub fn patch_body(a: &RouteEditArgs) -> EnvoyRoutePatch {
    EnvoyRoutePatch {
        name: a.rename.clone().map(Some),
        listen_port: a.listen_port.map(|p| Some(i64::from(p))),
        backend_host: a.backend_host.clone().map(Some),
        backend_port: a.backend_port.map(|p| Some(i64::from(p))),
        target: a.target_to.input().map(Some),
        cluster_type: a.cluster_type.map(Some),
        connect_timeout_ms: a.connect_timeout_ms.map(Some),
        proxy_protocol: a.proxy_protocol.map(Some),
        status: a.status.map(Some),
    }
}

/// The batch a routes document describes: a list of routes, or `{"routes": [...], "prune":
/// bool}`; `prune` is on when the document or the flag says so.
pub fn batch(doc: Value, prune_flag: bool, source: &str) -> Result<EnvoyRouteBatch> {
    let bad = |message: String| Error::Input {
        source_name: source.to_string(),
        message,
    };
    let (routes, prune) = match doc {
        Value::Array(a) => (a, false),
        Value::Object(mut o) => {
            let routes = match o.remove("routes") {
                Some(Value::Array(a)) => a,
                Some(_) => return Err(bad("`routes` must be a list".into())),
                None => return Err(bad("no `routes` list".into())),
            };
            let prune = match o.remove("prune") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(bad("`prune` must be true or false".into())),
            };
            if let Some(k) = o.keys().next() {
                return Err(bad(format!(
                    "unknown field `{k}` (expected `routes` and `prune`)"
                )));
            }
            (routes, prune)
        }
        _ => {
            return Err(bad(
                "expected a list of routes or {\"routes\": [...], \"prune\": bool}".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(routes.len());
    for (i, mut r) in routes.into_iter().enumerate() {
        if let Value::Object(o) = &mut r {
            for f in OUTPUT_ONLY_FIELDS {
                o.remove(f);
            }
            // A listed fleet target (`kind`, `vps_id`, `hostname`) is written back the way an
            // operator names one (`vps` by id).
            if let Some(Value::Object(t)) = o.get_mut("target")
                && let Some(kind) = t.remove("kind")
            {
                t.remove("hostname");
                if kind == "vps"
                    && let Some(id) = t.remove("vps_id")
                {
                    t.insert("vps".into(), id);
                }
            }
        }
        out.push(
            serde_json::from_value::<EnvoyRouteCreate>(r)
                .map_err(|e| bad(format!("routes[{i}]: {e}")))?,
        );
    }
    Ok(EnvoyRouteBatch {
        routes: out,
        prune: prune || prune_flag,
    })
}

/// Runs `sigmactl routes …`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: RouteCommand) -> Result<()> {
    match cmd {
        RouteCommand::List { vps } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let ans = ctx
                .client
                .get(&["api", "vps", &id.to_string(), "envoy-routes"], &[])
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let routes: Vec<EnvoyRoute> = ans.parse()?;
            // A sigma-api without the plan (older than this sigmactl) answers 404 for the
            // route: the list is still shown, its RUNS and LIVE cells `-`.
            let runs: HashMap<Uuid, (RouteRuns, Option<RouteListener>)> =
                match plan(ctx, id, PlanMode::Current).await {
                    Ok((_, p)) => p
                        .routes
                        .into_iter()
                        .map(|r| (r.route_id, (r.runs, r.listener)))
                        .collect(),
                    Err(e) if e.status() == Some(404) => HashMap::new(),
                    Err(e) => return Err(e),
                };
            ctx.rows(
                &routes,
                &format!("routes on {vps}"),
                &LIST_HEADERS,
                |r, now| {
                    let mut cells = row(r, now);
                    match runs.get(&r.id) {
                        Some((x, live)) => {
                            cells.push(runs_cell(*x));
                            cells.push(live_cell(live.as_ref()));
                        }
                        None => {
                            cells.push(Cell::painted("-", Paint::Dim));
                            cells.push(Cell::painted("-", Paint::Dim));
                        }
                    }
                    cells
                },
            )
        }
        RouteCommand::Plan { vps, mode } => {
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let (body, p) = plan(ctx, id, mode).await?;
            let missing = p.not_carried();
            if ctx.out.human() {
                ctx.rows(
                    &p.routes,
                    &format!("active routes on {vps}"),
                    &PLAN_HEADERS,
                    plan_row,
                )?;
                // On stderr, so the table stays a table for tools that read stdout.
                eprintln!(
                    "{}: agent runs {} mode; plan for {} mode; sigma-api mesh mode {}",
                    p.hostname,
                    match p.agent_mode {
                        sigma_types::AgentMode::Classic => "classic",
                        sigma_types::AgentMode::Mesh => "mesh",
                    },
                    p.mode.as_str(),
                    p.mesh_registrar
                );
            } else {
                ctx.out.value(&body)?;
            }
            if missing > 0 {
                return Err(Error::Checks(format!(
                    "{missing} route(s) of {vps} would not forward in {} mode",
                    p.mode.as_str()
                )));
            }
            Ok(())
        }
        RouteCommand::Add(a) => {
            let id = resolve::vps(&ctx.client, &a.vps, Among::Live).await?;
            let ans = ctx
                .client
                .post(
                    &["api", "vps", &id.to_string(), "envoy-routes"],
                    &create_body(a),
                )
                .await?;
            ctx.show(&ans, details)
        }
        RouteCommand::Edit(a) => {
            let (id, _) = resolve::route(&ctx.client, &a.target, a.name.as_deref()).await?;
            let ans = ctx
                .client
                .patch(&["api", "envoy-routes", &id.to_string()], &patch_body(&a))
                .await?;
            ctx.show(&ans, details)
        }
        RouteCommand::Rm { target, name } => {
            let (id, shown) = resolve::route(&ctx.client, &target, name.as_deref()).await?;
            ctx.client
                .delete(&["api", "envoy-routes", &id.to_string()])
                .await?;
            ctx.note(&format!("route {shown} removed"))
        }
        RouteCommand::Apply { vps, file, prune } => {
            let b = batch(input::read_document(&file)?, prune, &file)?;
            let id = resolve::vps(&ctx.client, &vps, Among::Live).await?;
            let ans = ctx
                .client
                .put(&["api", "vps", &id.to_string(), "envoy-routes"], &b)
                .await?;
            if !ctx.out.human() {
                return ctx.out.value(&ans.body);
            }
            let routes: Vec<EnvoyRoute> = ans.parse()?;
            ctx.rows(&routes, &format!("routes on {vps}"), &HEADERS, row)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use sigma_types::{RouteTarget, Upstream};

    #[test]
    fn documents_become_batches() {
        let list = json!([
            {"name": "a", "listen_port": 1000, "backend_host": "10.0.0.1", "backend_port": 80,
             "id": "x", "vps_id": "y", "created_at": "t", "updated_at": "t"},
        ]);
        let b = batch(list, false, "r.yaml").unwrap();
        assert_eq!(b.routes.len(), 1);
        assert!(!b.prune);
        let listed = json!([
            {"name": "b", "listen_port": 1001, "target": {"kind": "vps", "vps_id": "8d0c9c52-5b0e-4c39-9d55-0b1a3c2e4f61", "hostname": "exit-1", "port": "vpn"},
             "connect_timeout_ms": 5000, "proxy_protocol": "none", "status": "active"},
        ]);
        let b = batch(listed, false, "r.yaml").unwrap();
        let t = b.routes[0].target.clone().unwrap();
        assert_eq!(
            t.vps.as_deref(),
            Some("8d0c9c52-5b0e-4c39-9d55-0b1a3c2e4f61")
        );
        assert_eq!(t.port, "vpn");
        let obj = json!({"routes": [{"name": "a", "listen_port": 1, "backend_host": "h", "backend_port": 2}], "prune": true});
        assert!(batch(obj.clone(), false, "r.json").unwrap().prune);
        let obj = json!({"routes": []});
        assert!(
            batch(obj, true, "r.json").unwrap().prune,
            "the flag prunes too"
        );
        let e = batch(json!({"routes": [], "prnue": true}), false, "r.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prnue"), "{e}");
        let e = batch(
            json!([{"name": "a", "listen_port": 1, "backend_host": "h", "backend_port": 2, "colour": 1}]),
            false,
            "r.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes[0]") && e.contains("colour"), "{e}");
        assert!(batch(json!("x"), false, "r").is_err());
    }

    #[test]
    fn patches_carry_only_given_fields() {
        let a = RouteEditArgs {
            target: "id".into(),
            name: None,
            rename: None,
            listen_port: Some(8443),
            backend_host: None,
            backend_port: None,
            target_to: crate::cli::RouteTargetArgs {
                to_vps: None,
                to_pool: None,
                target_port: None,
                countries: vec![],
            },
            cluster_type: None,
            connect_timeout_ms: None,
            proxy_protocol: None,
            status: Some(RouteStatus::Disabled),
        };
        assert_eq!(
            serde_json::to_value(patch_body(&a)).unwrap(),
            json!({"listen_port": 8443, "status": "disabled"})
        );
    }

    #[test]
    fn ipv6_backends_are_bracketed() {
        let mut r = EnvoyRoute {
            id: uuid::Uuid::nil(),
            vps_id: uuid::Uuid::nil(),
            name: "r".into(),
            listen_port: 1,
            upstream: Upstream::Backend {
                backend_host: "2001:db8::1".into(),
                backend_port: 443,
                cluster_type: sigma_types::ClusterType::Static,
            },
            connect_timeout_ms: 5000,
            proxy_protocol: sigma_types::ProxyProtocol::None,
            status: RouteStatus::Active,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(backend(&r), "[2001:db8::1]:443");
        r.upstream = Upstream::Backend {
            backend_host: "db.example".into(),
            backend_port: 443,
            cluster_type: sigma_types::ClusterType::StrictDns,
        };
        assert_eq!(backend(&r), "db.example:443");
        r.upstream = Upstream::Target {
            target: RouteTarget::Pool {
                purpose: "vpn-exit".into(),
                port: "vpn".into(),
                countries: vec!["DE".into(), "FI".into()],
            },
        };
        assert_eq!(backend(&r), "pool vpn-exit:vpn (DE,FI)");
        assert_eq!(cluster(&r), "fleet");
    }
}

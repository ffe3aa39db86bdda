//! Prometheus service discovery: the fleet's scrape targets in the `file_sd` JSON format, which
//! `http_sd_configs` reads too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sigma_types::{Vps, VpsQuery, VpsStatus};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::config::EnvoyMetricsVia;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Reader};

/// Kind of scrape target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// node-exporter on the VPS.
    Node,
    /// sigma-agent's metrics port.
    Agent,
    /// Envoy's stats of a mesh-enrolled VPS.
    Envoy,
}

impl TargetKind {
    fn as_str(self) -> &'static str {
        match self {
            TargetKind::Node => "node",
            TargetKind::Agent => "agent",
            TargetKind::Envoy => "envoy",
        }
    }
}

/// Query of the targets endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TargetsQuery {
    /// Only this kind (default: all).
    // Inlined: a query parameter's enum is not registered among the document's components, so
    // a `$ref` to it would dangle.
    #[param(inline)]
    pub kind: Option<TargetKind>,
}

/// One target group of the `file_sd` format.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetGroup {
    /// `host:port` targets (IPv6 bracketed).
    pub targets: Vec<String>,
    /// Labels of these targets.
    pub labels: BTreeMap<String, String>,
}

/// Longest a rendered document is served without re-reading the inventory, even when no change
/// was signalled: a safety net for the few label sources outside the change signal (the
/// reconciler's recorded WorkloadEntry name). Prometheus refreshes every 30-60 s anyway.
const CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// The rendered targets documents, one per `kind` filter, each tagged with the inventory's
/// change generation it was built from.
///
/// Building the document for 10,000 VPS reads every VPS row (hundreds of milliseconds); the
/// store's change signal is bumped on every write that can change a target (register, retire,
/// edit, new addresses, purpose writes, other replicas' changes seen by the change poll), so a
/// cached document is reused until then. The lock makes concurrent misses build it once.
#[derive(Default)]
pub struct TargetsCache {
    docs: tokio::sync::Mutex<HashMap<Option<TargetKind>, CachedDoc>>,
}

struct CachedDoc {
    generation: u64,
    built: Instant,
    body: Bytes,
}

/// Envoy's Prometheus stats port on a mesh VPS.
const ENVOY_STATS_PORT: u16 = 15090;

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

pub(crate) fn labels(v: &Vps, kind: TargetKind) -> BTreeMap<String, String> {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    BTreeMap::from([
        ("vps_id".to_string(), v.id.to_string()),
        ("hostname".to_string(), v.hostname.clone()),
        ("alias".to_string(), opt(&v.alias)),
        ("provider".to_string(), opt(&v.provider)),
        ("country".to_string(), opt(&v.country)),
        ("city".to_string(), opt(&v.city)),
        ("purpose".to_string(), v.purpose.clone()),
        ("status".to_string(), v.status.as_str().to_string()),
        ("tags".to_string(), v.tags.join(",")),
        ("sigma_target_kind".to_string(), kind.as_str().to_string()),
    ])
}

/// Scrape targets of the fleet: node-exporter, sigma-agent and (for mesh-enrolled VPS) Envoy,
/// at each VPS's public address. Only active and provisioning VPS are listed.
#[utoipa::path(get, path = "/api/prometheus/targets", tag = "system", params(TargetsQuery),
    responses((status = 200, body = Vec<TargetGroup>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn targets(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<TargetsQuery>,
) -> ApiResult<Response> {
    let mut docs = s.targets.docs.lock().await;
    // Read the generation before building, so a change during the build makes the next request
    // build again rather than keep a document that may have missed it.
    let generation = *s.store.mesh_changes().borrow();
    let body = match docs.get(&q.kind) {
        Some(d) if d.generation == generation && d.built.elapsed() < CACHE_MAX_AGE => {
            d.body.clone()
        }
        _ => {
            let groups = build(&s, q.kind).await?;
            let body = Bytes::from(
                serde_json::to_vec(&groups).map_err(|e| crate::error::ApiError::internal(&e))?,
            );
            docs.insert(
                q.kind,
                CachedDoc {
                    generation,
                    built: Instant::now(),
                    body: body.clone(),
                },
            );
            body
        }
    };
    drop(docs);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn build(s: &AppState, kind: Option<TargetKind>) -> ApiResult<Vec<TargetGroup>> {
    let q = TargetsQuery { kind };
    let want = |k: TargetKind| q.kind.is_none_or(|w| w == k);
    let mut meshed: HashSet<String> = HashSet::new();
    let mut offset = 0;
    loop {
        let page = s
            .store
            .list_purposes(sigma_types::MAX_LIMIT, offset)
            .await?;
        for p in &page.items {
            if sigma_mesh::MeshSettings::from_json(&p.mesh).is_ok_and(|m| m.enabled) {
                meshed.insert(p.name.clone());
            }
        }
        offset += page.items.len() as i64;
        if page.items.is_empty() || offset >= page.total {
            break;
        }
    }
    let agent_port = s.mesh.template.health_port;
    let mut out = Vec::new();
    for status in [VpsStatus::Active, VpsStatus::Provisioning] {
        let mut offset = 0;
        loop {
            let page = s
                .store
                .list_vps(&VpsQuery {
                    status: Some(status),
                    limit: Some(sigma_types::MAX_LIMIT),
                    offset: Some(offset),
                    ..Default::default()
                })
                .await?;
            for v in &page.items {
                // The reachable address by the mesh's own rule: public before private, never
                // just the first one listed.
                let Some(ip) = sigma_mesh::select_address(&v.ip_addresses) else {
                    continue;
                };
                if want(TargetKind::Node) && v.monitoring {
                    out.push(TargetGroup {
                        targets: vec![host_port(ip, v.node_exporter_port)],
                        labels: labels(v, TargetKind::Node),
                    });
                }
                if want(TargetKind::Agent) {
                    out.push(TargetGroup {
                        targets: vec![host_port(ip, agent_port)],
                        labels: labels(v, TargetKind::Agent),
                    });
                }
                if want(TargetKind::Envoy)
                    && v.status == VpsStatus::Active
                    && !v.mesh_opt_out
                    && meshed.contains(&v.purpose)
                {
                    let mut l = labels(v, TargetKind::Envoy);
                    let entry = v
                        .mesh
                        .workload_entry
                        .clone()
                        .unwrap_or_else(|| sigma_mesh::model::workload_entry_name(&v.hostname));
                    l.insert("workload_entry".into(), entry);
                    let (port, path) = match s.mesh.envoy_metrics {
                        EnvoyMetricsVia::Direct => (ENVOY_STATS_PORT, "/stats/prometheus"),
                        EnvoyMetricsVia::Agent => (agent_port, "/metrics/envoy"),
                    };
                    l.insert("__metrics_path__".into(), path.into());
                    out.push(TargetGroup {
                        targets: vec![host_port(ip, port)],
                        labels: l,
                    });
                }
            }
            offset += page.items.len() as i64;
            if page.items.is_empty() || offset >= page.total {
                break;
            }
        }
    }
    Ok(out)
}

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
use sigma_store::inventory::TargetVps;
use sigma_types::VpsStatus;
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
    /// Split the fleet into this many shards (1-1024, with `shard`): each Prometheus of a
    /// sharded set asks for its own. A VPS's shard is its id's first 64 bits modulo `shards`,
    /// so it stays in one shard for its life.
    #[param(minimum = 1, maximum = 1024)]
    pub shards: Option<u16>,
    /// Which shard (0 to `shards` - 1).
    pub shard: Option<u16>,
}

/// Most shards a fleet can be split into.
pub const MAX_SHARDS: u16 = 1024;

/// One shard of one kind's document: the checked form of [`TargetsQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slice {
    kind: Option<TargetKind>,
    shard: u16,
    shards: u16,
}

impl TargetsQuery {
    fn check(&self) -> Result<Slice, sigma_types::FieldErrors> {
        let mut e = sigma_types::FieldErrors::new();
        let (shard, shards) = match (self.shard, self.shards) {
            (None, None) => (0, 1),
            (Some(shard), Some(shards)) => {
                if !(1..=MAX_SHARDS).contains(&shards) {
                    e.add("shards", format!("must be 1-{MAX_SHARDS}"));
                } else if shard >= shards {
                    e.add("shard", format!("must be below shards ({shards})"));
                }
                (shard, shards)
            }
            (Some(_), None) => {
                e.add("shards", "is required with shard");
                (0, 1)
            }
            (None, Some(_)) => {
                e.add("shard", "is required with shards");
                (0, 1)
            }
        };
        e.into_result()?;
        Ok(Slice {
            kind: self.kind,
            shard,
            shards,
        })
    }
}

/// The shard of a VPS among `shards`.
fn shard_of(id: uuid::Uuid, shards: u16) -> u16 {
    let b = id.as_bytes();
    let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    (hi % u64::from(shards)) as u16
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

/// The rendered targets documents, per `kind` filter and shard count (every shard of a count is
/// rendered by the one read that renders any), each tagged with the inventory's change
/// generation it was built from.
///
/// Building the documents reads every VPS row (seconds at a million VPS); the store's change
/// signal is bumped on every write that can change a target (register, retire, edit, new
/// addresses, purpose writes, other replicas' changes seen by the change poll), so cached
/// documents are reused until then. The lock makes concurrent misses build them once.
#[derive(Default)]
pub struct TargetsCache {
    docs: tokio::sync::Mutex<HashMap<(Option<TargetKind>, u16), CachedDocs>>,
}

struct CachedDocs {
    generation: u64,
    built: Instant,
    /// One document per shard.
    bodies: Vec<Bytes>,
}

/// Envoy's Prometheus stats port on a mesh VPS.
const ENVOY_STATS_PORT: u16 = 15090;

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

pub(crate) fn labels(v: &TargetVps, kind: TargetKind) -> BTreeMap<String, String> {
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

/// Scrape targets of the fleet: node-exporter, sigma-agent and (for mesh-enabled VPS) Envoy,
/// at each VPS's public address. Only active and provisioning VPS are listed. A large fleet is
/// split among several Prometheus servers with `shards` and `shard`.
#[utoipa::path(get, path = "/api/prometheus/targets", tag = "system", params(TargetsQuery),
    responses((status = 200, body = Vec<TargetGroup>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn targets(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<TargetsQuery>,
) -> ApiResult<Response> {
    let slice = q.check()?;
    let mut docs = s.targets.docs.lock().await;
    // Read the generation before building, so a change during the build makes the next request
    // build again rather than keep a document that may have missed it.
    let generation = *s.store.mesh_changes().borrow();
    let key = (slice.kind, slice.shards);
    let body = match docs.get(&key) {
        Some(d) if d.generation == generation && d.built.elapsed() < CACHE_MAX_AGE => {
            d.bodies[usize::from(slice.shard)].clone()
        }
        _ => {
            let bodies = build(&s, slice.kind, slice.shards).await?;
            let body = bodies[usize::from(slice.shard)].clone();
            docs.insert(
                key,
                CachedDocs {
                    generation,
                    built: Instant::now(),
                    bodies,
                },
            );
            body
        }
    };
    drop(docs);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Appends one target group to a shard's JSON array.
fn push_group(doc: &mut Vec<u8>, target: String, labels: &BTreeMap<String, String>) {
    doc.push(if doc.is_empty() { b'[' } else { b',' });
    let group = TargetGroupRef {
        targets: [target],
        labels,
    };
    // Serializing strings and a map into a Vec cannot fail.
    serde_json::to_writer(&mut *doc, &group).expect("serialize a target group");
}

#[derive(Serialize)]
struct TargetGroupRef<'a> {
    targets: [String; 1],
    labels: &'a BTreeMap<String, String>,
}

/// Renders every shard's document in one streaming read of the fleet.
async fn build(s: &AppState, kind: Option<TargetKind>, shards: u16) -> ApiResult<Vec<Bytes>> {
    let want = |k: TargetKind| kind.is_none_or(|w| w == k);
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
    let mut docs: Vec<Vec<u8>> = vec![Vec::new(); usize::from(shards)];
    s.store
        .for_each_target(&[VpsStatus::Active, VpsStatus::Provisioning], |v| {
            // The reachable address by the mesh's own rule: public before private, never
            // just the first one listed.
            let Some(ip) = sigma_mesh::select_address(&v.ip_addresses) else {
                return;
            };
            let doc = &mut docs[usize::from(shard_of(v.id, shards))];
            if want(TargetKind::Node) && v.monitoring {
                push_group(
                    doc,
                    host_port(ip, v.node_exporter_port),
                    &labels(&v, TargetKind::Node),
                );
            }
            if want(TargetKind::Agent) {
                push_group(
                    doc,
                    host_port(ip, agent_port),
                    &labels(&v, TargetKind::Agent),
                );
            }
            if want(TargetKind::Envoy)
                && v.status == VpsStatus::Active
                && !v.mesh_opt_out
                && meshed.contains(&v.purpose)
            {
                let mut l = labels(&v, TargetKind::Envoy);
                let entry = v
                    .workload_entry
                    .clone()
                    .unwrap_or_else(|| sigma_mesh::model::workload_entry_name(&v.hostname));
                l.insert("workload_entry".into(), entry);
                let (port, path) = match s.mesh.envoy_metrics {
                    EnvoyMetricsVia::Direct => (ENVOY_STATS_PORT, "/stats/prometheus"),
                    EnvoyMetricsVia::Agent => (agent_port, "/metrics/envoy"),
                };
                l.insert("__metrics_path__".into(), path.into());
                push_group(doc, host_port(ip, port), &l);
            }
        })
        .await?;
    Ok(docs
        .into_iter()
        .map(|mut d| {
            if d.is_empty() {
                d.push(b'[');
            }
            d.push(b']');
            Bytes::from(d)
        })
        .collect())
}

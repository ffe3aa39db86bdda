//! Fleet targets of routes: checked against the inventory when a route is written (the VPS or
//! purpose exists, its purpose serves the named port, the route does not lead back to its own
//! VPS or purpose) and resolved into addresses when a classic-mode agent reads its config.

use std::collections::HashMap;

use sigma_types::{
    IpAddress, RouteEndpoint, RouteSpec, RouteTarget, TargetSpec, UpstreamSpec, VpsRef,
};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::Store;
use crate::error::{Error, Result};

/// Most endpoints one fleet-target route resolves to (a pool larger than this is cut, by
/// hostname order, and the cut logged).
pub const MAX_ROUTE_ENDPOINTS: usize = 4096;

impl Store {
    /// Checks a route's fleet target against the inventory (named fields under `prefix`) and
    /// names its VPS by id, so specs compare equal however the operator named the VPS.
    pub(crate) async fn resolve_spec(
        &self,
        tx: &mut Transaction<'_, Any>,
        vps_id: Uuid,
        spec: &RouteSpec,
        prefix: &str,
    ) -> Result<RouteSpec> {
        let UpstreamSpec::Target(t) = &spec.upstream else {
            return Ok(spec.clone());
        };
        let f = |n: &str| format!("{prefix}target.{n}");
        let own_purpose: String = sqlx::query("SELECT purpose FROM vps WHERE id = $1")
            .bind(vps_id.to_string())
            .fetch_one(&mut **tx)
            .await?
            .try_get("purpose")?;
        let resolved = match t {
            TargetSpec::Vps { vps, port } => {
                let q = match vps {
                    VpsRef::Id(id) => sqlx::query(
                        "SELECT id, hostname, purpose FROM vps WHERE id = $1 AND deleted_at IS NULL",
                    )
                    .bind(id.to_string()),
                    VpsRef::Hostname(h) => sqlx::query(
                        "SELECT id, hostname, purpose FROM vps WHERE hostname = $1 AND deleted_at IS NULL",
                    )
                    .bind(h.clone()),
                };
                let row = q.fetch_optional(&mut **tx).await?.ok_or_else(|| {
                    Error::invalid(
                        &f("vps"),
                        "no VPS of that id or hostname (deleted ones excluded)",
                    )
                })?;
                let id: String = row.try_get("id")?;
                let id =
                    Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
                if id == vps_id {
                    return Err(Error::invalid(
                        &f("vps"),
                        "is this route's own VPS: the route would forward to itself",
                    ));
                }
                let purpose: String = row.try_get("purpose")?;
                let hostname: String = row.try_get("hostname")?;
                self.check_served_port(tx, &purpose, port, &f("port"))
                    .await
                    .map_err(|e| match e {
                        Error::Invalid(mut fe) => {
                            let reason = fe.0.remove(&f("port")).unwrap_or_default();
                            Error::invalid(&f("port"), format!("VPS {hostname}: {reason}"))
                        }
                        e => e,
                    })?;
                TargetSpec::Vps {
                    vps: VpsRef::Id(id),
                    port: port.clone(),
                }
            }
            TargetSpec::Pool { purpose, port, .. } => {
                let exists = sqlx::query("SELECT name FROM purposes WHERE name = $1")
                    .bind(purpose.clone())
                    .fetch_optional(&mut **tx)
                    .await?;
                if exists.is_none() {
                    return Err(Error::invalid(&f("purpose"), "no such purpose"));
                }
                if *purpose == own_purpose {
                    return Err(Error::invalid(
                        &f("purpose"),
                        "is this VPS's own purpose: the pool would hold VPS that forward back into it",
                    ));
                }
                self.check_served_port(tx, purpose, port, &f("port"))
                    .await?;
                t.clone()
            }
        };
        Ok(RouteSpec {
            upstream: UpstreamSpec::Target(resolved),
            ..spec.clone()
        })
    }

    /// The application port a purpose serves under `port_name`, or a 422 naming `field`.
    async fn check_served_port(
        &self,
        tx: &mut Transaction<'_, Any>,
        purpose: &str,
        port_name: &str,
        field: &str,
    ) -> Result<u16> {
        let settings = purpose_settings(&mut **tx, purpose).await?;
        served_port(&settings, port_name).ok_or_else(|| {
            let names: Vec<&str> = settings.ports.iter().map(|p| p.name.as_str()).collect();
            Error::invalid(
                field,
                if names.is_empty() {
                    format!(
                        "purpose {purpose} serves no ports (name them in the purpose's mesh.ports)"
                    )
                } else {
                    format!(
                        "purpose {purpose} serves no port named {port_name} (it serves {})",
                        names.join(", ")
                    )
                },
            )
        })
    }

    /// The addresses a fleet target stands for now: its VPS (or the pool's) that are active,
    /// not deleted and heard from since `healthy_since`, never the route's own VPS, each at
    /// its public address (as its WorkloadEntry would have it) and its purpose's application
    /// port of that name. A purpose that no longer serves the port gives no addresses.
    pub(crate) async fn target_endpoints(
        &self,
        tx: &mut Transaction<'_, Any>,
        own: Uuid,
        target: &RouteTarget,
        healthy_since: i64,
        settings: &mut HashMap<String, Option<sigma_mesh::MeshSettings>>,
    ) -> Result<Vec<RouteEndpoint>> {
        const COLS: &str = "id, hostname, purpose, ip_addresses";
        const LIVE: &str = "deleted_at IS NULL AND status = 'active' AND last_heartbeat_at >= $1";
        let rows = match target {
            RouteTarget::Vps { vps_id, .. } => {
                sqlx::query(dynsql!("SELECT {COLS} FROM vps WHERE {LIVE} AND id = $2"))
                    .bind(healthy_since)
                    .bind(vps_id.to_string())
                    .fetch_all(&mut **tx)
                    .await?
            }
            RouteTarget::Pool {
                purpose, countries, ..
            } => {
                let mut sql =
                    format!("SELECT {COLS} FROM vps WHERE {LIVE} AND purpose = $2 AND id <> $3");
                if !countries.is_empty() {
                    let marks: Vec<String> = (0..countries.len())
                        .map(|i| format!("${}", i + 4))
                        .collect();
                    sql.push_str(&format!(" AND country IN ({})", marks.join(", ")));
                }
                sql.push_str(&format!(
                    " ORDER BY hostname LIMIT {}",
                    MAX_ROUTE_ENDPOINTS + 1
                ));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(healthy_since)
                    .bind(purpose.clone())
                    .bind(own.to_string());
                for c in countries {
                    q = q.bind(c.clone());
                }
                q.fetch_all(&mut **tx).await?
            }
        };
        if rows.len() > MAX_ROUTE_ENDPOINTS {
            tracing::warn!(
                vps = %own,
                max = MAX_ROUTE_ENDPOINTS,
                "a route's pool is larger than the endpoints one route carries; the first by hostname are used"
            );
        }
        let mut out = Vec::new();
        for r in rows.iter().take(MAX_ROUTE_ENDPOINTS) {
            let purpose: String = r.try_get("purpose")?;
            if !settings.contains_key(&purpose) {
                let s = purpose_settings(&mut **tx, &purpose).await.ok();
                settings.insert(purpose.clone(), s);
            }
            let Some(port) = settings[&purpose]
                .as_ref()
                .and_then(|s| served_port(s, target.port()))
            else {
                continue;
            };
            let ips: Vec<IpAddress> = crate::inventory::json_col(r, "ip_addresses")?;
            let Some(address) = sigma_mesh::select_address(&ips) else {
                continue;
            };
            out.push(RouteEndpoint {
                address,
                port,
                hostname: r.try_get("hostname")?,
            });
        }
        out.sort();
        Ok(out)
    }
}

/// A purpose's mesh settings (its served ports), as stored.
pub(crate) async fn purpose_settings<'c, E>(
    exec: E,
    purpose: &str,
) -> Result<sigma_mesh::MeshSettings>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let mesh: String = sqlx::query("SELECT mesh FROM purposes WHERE name = $1")
        .bind(purpose.to_string())
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no purpose {purpose:?}")))?
        .try_get("mesh")?;
    let value: serde_json::Value = serde_json::from_str(&mesh)
        .map_err(|_| Error::Corrupt(format!("purpose {purpose} mesh settings")))?;
    sigma_mesh::MeshSettings::from_json(&value)
        .map_err(|e| Error::Corrupt(format!("purpose {purpose} mesh settings: {e:?}")))
}

/// The application port of a purpose's port named `name` (where the application listens on
/// the VPS: `target_port`, else the service port).
fn served_port(s: &sigma_mesh::MeshSettings, name: &str) -> Option<u16> {
    s.ports
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.target_port.unwrap_or(p.number))
}

//! What the mesh is computed from, and where the mesh reconciler records its results.
//!
//! The store validates every purpose's `mesh` object on write, hands the reconciler (and the
//! GitOps export) a consistent snapshot of purposes and VPS, and keeps the reconciler's result
//! per VPS in the database so that every replica shows the same status.

use std::collections::HashMap;

use sigma_mesh::{MeshPurpose, MeshSettings, MeshVps};
use sigma_types::{
    EnvoyRoute, FieldErrors, IpAddress, MeshSyncStatus, RouteTarget, Upstream, VpsMeshStatus,
    VpsStatus,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::Store;
use crate::db::{Sql, from_ms};
use crate::error::{Error, Result};

/// Rows per batched status UPDATE (6 bound values each, well under both backends' limits).
const BATCH: usize = 1000;

/// Checks a purpose's `mesh` object, naming bad fields under `mesh` (`mesh.ports[1].protocol`).
pub fn check_mesh_settings(mesh: &serde_json::Value) -> Result<MeshSettings> {
    MeshSettings::from_json(mesh).map_err(|errors| Error::Invalid(prefixed("mesh", errors)))
}

/// `errors` with every field put under `prefix`.
pub fn prefixed(prefix: &str, errors: FieldErrors) -> FieldErrors {
    let mut out = FieldErrors::new();
    for (k, v) in errors.0 {
        let field = if k.is_empty() {
            prefix.to_string()
        } else if k.starts_with('[') {
            format!("{prefix}{k}")
        } else {
            format!("{prefix}.{k}")
        };
        out.add(field, v);
    }
    out
}

/// A stored purpose whose `mesh` object no longer passes validation (stored before validation
/// existed, or edited in the database by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPurpose {
    /// Purpose name.
    pub name: String,
    /// Problems, with fields under `mesh`.
    pub errors: FieldErrors,
}

/// A VPS as the mesh sees it, with the reconciler's last stored result for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshVpsRow {
    /// The model's view.
    pub vps: MeshVps,
    /// Last stored result.
    pub status: VpsMeshStatus,
    /// `updated_at` when read (Unix ms): a status is only written if the row has not changed
    /// since, so a result computed from stale data never hides a newer change.
    pub updated_at: i64,
}

/// Everything the desired mesh state is computed from, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct MeshInputs {
    /// Purposes with valid mesh settings (disabled ones included).
    pub purposes: Vec<MeshPurpose>,
    /// Purposes whose stored settings are invalid.
    pub invalid: Vec<InvalidPurpose>,
    /// Every VPS, deleted ones included (they are never meshed, but their status is kept
    /// current), ordered by id.
    pub vps: Vec<MeshVpsRow>,
    /// Every active Envoy route, by VPS and listen port: routes of meshed VPS become Istio
    /// configuration.
    pub routes: Vec<EnvoyRoute>,
}

/// What a route plan for one VPS is computed from: the purposes, the VPS and the VPS its
/// routes target, and its active routes.
#[derive(Debug, Clone, Default)]
pub struct RoutePlanInputs {
    /// Purposes with valid mesh settings (a purpose whose stored settings no longer validate
    /// is left out: its VPS count as not in the mesh).
    pub purposes: Vec<MeshPurpose>,
    /// The VPS and every VPS one of its routes targets.
    pub vps: Vec<MeshVps>,
    /// Its active routes.
    pub routes: Vec<EnvoyRoute>,
}

/// A result to store for one VPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshStatusUpdate {
    /// The VPS.
    pub id: Uuid,
    /// Its `updated_at` when the result was computed; the write is skipped if it moved.
    pub seen_updated_at: i64,
    /// The result.
    pub status: MeshSyncStatus,
    /// Why, for `error` and `not_meshed`.
    pub message: Option<String>,
    /// Its WorkloadEntry, once applied.
    pub workload_entry: Option<String>,
}

pub(crate) fn mesh_status_from_row(r: &AnyRow) -> Result<VpsMeshStatus> {
    let status: String = r.try_get("mesh_status")?;
    Ok(VpsMeshStatus {
        status: MeshSyncStatus::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("vps mesh_status {status:?}")))?,
        message: r.try_get("mesh_message")?,
        last_attempt_at: r.try_get::<Option<i64>, _>("mesh_attempt_at")?.map(from_ms),
        workload_entry: r.try_get("mesh_entry")?,
    })
}

/// A stored purpose's settings, checked again: they may predate validation.
fn stored_purpose(name: String, mesh: &str) -> std::result::Result<MeshPurpose, InvalidPurpose> {
    let parsed = serde_json::from_str::<serde_json::Value>(mesh)
        .map_err(|e| {
            let mut f = FieldErrors::new();
            f.add("mesh", format!("stored value is not JSON: {e}"));
            f
        })
        .and_then(|v| MeshSettings::from_json(&v).map_err(|errors| prefixed("mesh", errors)));
    match parsed {
        Ok(settings) => Ok(MeshPurpose { name, settings }),
        Err(errors) => Err(InvalidPurpose { name, errors }),
    }
}

/// One VPS as the mesh sees it, with its purpose: what its Istio bootstrap bundle is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSubject {
    /// The VPS (status `deleted` when soft-deleted).
    pub vps: MeshVps,
    /// Its purpose, or why the purpose's stored settings no longer validate.
    pub purpose: std::result::Result<MeshPurpose, InvalidPurpose>,
    /// The reconciler's last stored result for it.
    pub status: VpsMeshStatus,
}

const MESH_SUBJECT_SELECT: &str = "SELECT v.id, v.hostname, v.status, v.purpose, pr.name AS provider, \
     v.country, v.city, v.ip_addresses, v.mesh_opt_out, v.mesh_status, v.mesh_message, \
     v.mesh_attempt_at, v.mesh_entry, v.updated_at, p.mesh AS purpose_mesh \
     FROM vps v JOIN purposes p ON p.name = v.purpose \
     LEFT JOIN providers pr ON pr.id = v.provider_id WHERE ";

const MESH_VPS_SELECT: &str = "SELECT v.id, v.hostname, v.status, v.purpose, pr.name AS provider, \
     v.country, v.city, v.ip_addresses, v.mesh_opt_out, v.mesh_status, v.mesh_message, \
     v.mesh_attempt_at, v.mesh_entry, v.updated_at \
     FROM vps v LEFT JOIN providers pr ON pr.id = v.provider_id ORDER BY v.id";

impl Store {
    /// A receiver that is marked changed whenever the mesh's inputs may have changed on this
    /// replica (a VPS registered, retired, restored, deleted or edited, a heartbeat that
    /// reported new addresses, a purpose written) or, through the change poll, on another one.
    pub fn mesh_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fleet.subscribe_mesh()
    }

    /// Purposes and VPS as the mesh sees them. Addresses reported by heartbeats not yet
    /// written are included, as in every other read.
    pub async fn mesh_inputs(&self) -> Result<MeshInputs> {
        use futures_util::TryStreamExt;
        // One transaction so purposes and VPS are read at the same moment on PostgreSQL.
        let mut tx = self.pools.read.begin().await?;
        let rows = sqlx::query("SELECT name, mesh FROM purposes ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let mut inputs = MeshInputs::default();
        for r in rows {
            match stored_purpose(r.try_get("name")?, &r.try_get::<String, _>("mesh")?) {
                Ok(p) => inputs.purposes.push(p),
                Err(p) => inputs.invalid.push(p),
            }
        }
        let mut stream = sqlx::query(MESH_VPS_SELECT).fetch(&mut *tx);
        while let Some(r) = stream.try_next().await? {
            inputs.vps.push(self.mesh_vps_from_row(&r)?);
        }
        drop(stream);
        let rows = sqlx::query(dynsql!(
            "SELECT {} FROM envoy_routes r WHERE r.status = 'active' ORDER BY r.vps_id, r.listen_port",
            crate::routes::route_cols("r")
        ))
        .fetch_all(&mut *tx)
        .await?;
        inputs.routes = rows
            .iter()
            .map(crate::routes::route_from_row)
            .collect::<Result<_>>()?;
        tx.commit().await?;
        Ok(inputs)
    }

    /// The inputs of a route plan for one VPS (see [`RoutePlanInputs`]).
    pub async fn route_plan_inputs(&self, vps_id: Uuid) -> Result<RoutePlanInputs> {
        let mut tx = self.pools.read.begin().await?;
        let rows = sqlx::query("SELECT name, mesh FROM purposes ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let mut out = RoutePlanInputs::default();
        for r in rows {
            if let Ok(p) = stored_purpose(r.try_get("name")?, &r.try_get::<String, _>("mesh")?) {
                out.purposes.push(p);
            }
        }
        let rows = sqlx::query(dynsql!(
            "SELECT {} FROM envoy_routes r WHERE r.vps_id = $1 AND r.status = 'active' ORDER BY r.listen_port",
            crate::routes::route_cols("r")
        ))
        .bind(vps_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        out.routes = rows
            .iter()
            .map(crate::routes::route_from_row)
            .collect::<Result<_>>()?;
        let mut ids: Vec<Uuid> = vec![vps_id];
        for r in &out.routes {
            if let Upstream::Target {
                target: RouteTarget::Vps { vps_id, .. },
            } = &r.upstream
                && !ids.contains(vps_id)
            {
                ids.push(*vps_id);
            }
        }
        for id in ids {
            let row = sqlx::query(dynsql!("{MESH_SUBJECT_SELECT}v.id = $1"))
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                out.vps.push(self.mesh_vps_from_row(&row)?.vps);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    fn mesh_vps_from_row(&self, r: &AnyRow) -> Result<MeshVpsRow> {
        let id: String = r.try_get("id")?;
        let id = Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
        let status: String = r.try_get("status")?;
        // An address change not yet written is already the VPS's address.
        let pending: Option<Vec<IpAddress>> = self
            .fleet
            .pending_ips_json(id)
            .and_then(|s| serde_json::from_str(&s).ok());
        let ip_addresses = match pending {
            Some(ips) => ips,
            None => crate::inventory::json_col(r, "ip_addresses")?,
        };
        Ok(MeshVpsRow {
            vps: MeshVps {
                id,
                hostname: r.try_get("hostname")?,
                status: VpsStatus::parse(&status)
                    .ok_or_else(|| Error::Corrupt(format!("vps status {status:?}")))?,
                purpose: r.try_get("purpose")?,
                provider: r.try_get("provider")?,
                country: r.try_get("country")?,
                city: r.try_get("city")?,
                ip_addresses,
                mesh_opt_out: r.try_get::<i64, _>("mesh_opt_out")? != 0,
            },
            status: mesh_status_from_row(r)?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    /// The VPS with this id and its purpose, deleted or not.
    pub async fn mesh_subject(&self, id: Uuid) -> Result<MeshSubject> {
        let row = sqlx::query(dynsql!("{MESH_SUBJECT_SELECT}v.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pools.read)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no VPS with id {id}")))?;
        self.mesh_subject_from_row(&row)
    }

    /// The VPS (not deleted) with this hostname, in canonical (lower-case) form, and its
    /// purpose.
    pub async fn mesh_subject_by_hostname(&self, hostname: &str) -> Result<MeshSubject> {
        let row = sqlx::query(dynsql!(
            "{MESH_SUBJECT_SELECT}v.hostname = $1 AND v.deleted_at IS NULL"
        ))
        .bind(hostname.to_string())
        .fetch_optional(&self.pools.read)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no VPS with hostname {hostname}")))?;
        self.mesh_subject_from_row(&row)
    }

    fn mesh_subject_from_row(&self, r: &AnyRow) -> Result<MeshSubject> {
        let row = self.mesh_vps_from_row(r)?;
        let mesh: String = r.try_get("purpose_mesh")?;
        Ok(MeshSubject {
            purpose: stored_purpose(row.vps.purpose.clone(), &mesh),
            vps: row.vps,
            status: row.status,
        })
    }

    /// Records in the audit log that a person's key fetched a VPS's Istio bootstrap bundle:
    /// the bundle holds a credential of the VPS's mesh identity, so who took one matters even
    /// though nothing changed. `details` is stored as the entry's `after` and must never hold
    /// the token itself.
    pub async fn audit_bootstrap_issued(
        &self,
        actor: &str,
        vps_id: Uuid,
        details: &serde_json::Value,
    ) -> Result<()> {
        crate::audit::record(
            &self.pools.write,
            crate::audit::Record {
                actor,
                action: "vps.istio_bootstrap",
                resource_type: "vps",
                resource_id: vps_id.to_string(),
            },
            None::<&serde_json::Value>,
            Some(details),
        )
        .await
    }

    /// Stores the reconciler's results, `at` being when they were reached (Unix ms). A row
    /// changed since its result was computed is left as it is (it is `pending` again, and the
    /// reconciler will come back to it). Does not touch `updated_at`, so these writes wake no
    /// change poll. Returns how many rows were written.
    pub async fn write_mesh_statuses(&self, updates: &[MeshStatusUpdate], at: i64) -> Result<u64> {
        if updates.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let mut tx = self.pools.write.begin().await?;
        for chunk in updates.chunks(BATCH) {
            let mut sql = Sql::bulk(
                self.pools.backend,
                "WITH m(id, seen, st, msg, entry) AS (VALUES ",
            );
            for (i, u) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(u.id)
                    .push(", ")
                    .bind(u.seen_updated_at)
                    .push(", ")
                    .bind(u.status.as_str())
                    .push(", ")
                    .bind(u.message.clone())
                    .push(", ")
                    .bind(u.workload_entry.clone())
                    .push(")");
            }
            sql.push(") UPDATE vps SET mesh_status = m.st, mesh_message = m.msg, mesh_entry = m.entry, mesh_attempt_at = ")
                .bind(at)
                .push(" FROM m WHERE vps.id = m.id AND vps.updated_at = m.seen");
            written += sql.query().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// How many VPS are in each mesh status (for metrics).
    pub async fn count_vps_by_mesh_status(&self) -> Result<HashMap<MeshSyncStatus, i64>> {
        let rows = sqlx::query(
            "SELECT mesh_status, COUNT(*) AS n FROM vps WHERE deleted_at IS NULL GROUP BY mesh_status",
        )
        .fetch_all(&self.pools.read)
        .await?;
        let mut out: HashMap<MeshSyncStatus, i64> =
            MeshSyncStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for r in rows {
            let s: String = r.try_get("mesh_status")?;
            if let Some(st) = MeshSyncStatus::parse(&s) {
                out.insert(st, r.try_get("n")?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_put_under_mesh() {
        let e = check_mesh_settings(&serde_json::json!({"ports": [
            {"name": "a", "number": 80, "protocol": "HTTP"},
            {"name": "b", "number": "10000-30000", "protocol": "TCP"}
        ]}))
        .unwrap_err();
        let Error::Invalid(f) = e else {
            panic!("{e:?}")
        };
        assert!(f.0["mesh.ports[1].number"].contains("port range"), "{f:?}");
        let Error::Invalid(f) = check_mesh_settings(&serde_json::json!([1])).unwrap_err() else {
            panic!()
        };
        assert!(f.0.contains_key("mesh"), "{f:?}");
        assert!(check_mesh_settings(&serde_json::json!({})).is_ok());
    }
}

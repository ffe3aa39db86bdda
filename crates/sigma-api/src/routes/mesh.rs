//! The mesh registry: the desired Istio objects as YAML for GitOps, and one VPS's place in the
//! mesh, desired against actual.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sigma_mesh::objects::VPS_ID_LABEL;
use sigma_mesh::{MeshObject, MeshTemplate};
use sigma_reconciler::inspect;
use sigma_store::mesh::MeshSubject;
use sigma_types::FieldErrors;
use sigma_types::mesh::VpsMeshReport;

use crate::AppState;
use crate::config::MeshMode;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, Reader, uuid_param};

/// Every Istio object the inventory implies, as multi-document YAML (`application/yaml`), for
/// `kubectl apply -f` or a GitOps repository. Deterministic: the same inventory gives the same
/// bytes. A comment header lists the VPS that qualify for the mesh but have no WorkloadEntry,
/// and why. Served in every mesh mode; never contacts Kubernetes.
#[utoipa::path(get, path = "/api/mesh/manifests", tag = "mesh",
    responses((status = 200, body = String, content_type = "application/yaml"),
    (status = 409, description = "a stored purpose has invalid mesh settings", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn manifests(
    State(s): State<AppState>,
    Reader(_): Reader,
) -> ApiResult<impl IntoResponse> {
    let inputs = s.store.mesh_inputs().await?;
    let yaml = sigma_reconciler::export_yaml(&s.mesh.template, &inputs).map_err(|e| match e {
        sigma_reconciler::Error::InvalidPurposes(list) => {
            let mut fields = FieldErrors::new();
            for p in list {
                for (k, v) in p.errors.0 {
                    fields.add(format!("purposes.{}.{k}", p.name), v);
                }
            }
            ApiError {
                status: StatusCode::CONFLICT,
                code: "mesh_invalid",
                message: "stored mesh settings of some purposes are invalid; fix them with PATCH /api/purposes/{name}".into(),
                fields,
            }
        }
        other => ApiError::internal(&other),
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        yaml,
    ))
}

/// One VPS's place in the mesh: whether it belongs there and why not, the reconciler's stored
/// result, the WorkloadEntry sigma wants for it (computed by the same model code as the
/// reconciler's and the bootstrap bundle's), and in kubernetes mode the entry the cluster holds,
/// whether the two agree (the reconciler's own comparison) and istiod's `Healthy` condition.
///
/// A cluster that cannot be read (unreachable, forbidden, too slow) does not fail the request:
/// the answer is still 200, with `cluster_error` saying why `actual` is missing. `off` and
/// `export` modes never contact Kubernetes.
#[utoipa::path(get, path = "/api/vps/{id}/mesh", tag = "mesh",
    params(("id" = String, Path, description = "VPS id (UUID)")),
    responses((status = 200, body = VpsMeshReport),
    (status = 401, body = sigma_types::ErrorBody),
    (status = 403, description = "an agent key", body = sigma_types::ErrorBody),
    (status = 404, description = "no VPS with this id", body = sigma_types::ErrorBody),
    (status = 422, description = "the id is not a UUID", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn vps_mesh(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<VpsMeshReport>> {
    let id = uuid_param(&id)?;
    let subject = s.store.mesh_subject(id).await?;
    let desired = desired_entry(&s.mesh.template, &subject)?;

    let mut report = VpsMeshReport {
        vps_id: subject.vps.id,
        hostname: subject.vps.hostname.clone(),
        mode: s.mesh.mode.as_str().into(),
        meshed: desired.is_ok(),
        reason: desired.as_ref().err().cloned(),
        sync: subject.status.clone(),
        desired: None,
        actual: None,
        in_sync: None,
        health: None,
        cluster_error: None,
    };
    if let Ok(d) = &desired {
        report.desired = Some(serde_json::to_value(d).map_err(|e| ApiError::internal(&e))?);
    }
    if s.mesh.mode != MeshMode::Kubernetes {
        return Ok(Json(report));
    }
    let Some((_, cluster)) = &s.mesh.reconciler else {
        report.cluster_error =
            Some("sigma-api runs in kubernetes mode without a cluster client".into());
        return Ok(Json(report));
    };
    // The entry a meshed VPS should have; otherwise the one the reconciler last recorded (a
    // removal may have failed), else the name the model would give it.
    let name = match &desired {
        Ok(d) => d.name().to_string(),
        Err(_) => subject
            .status
            .workload_entry
            .clone()
            .unwrap_or_else(|| sigma_mesh::model::workload_entry_name(&subject.vps.hostname)),
    };
    match cluster.workload_entry(&name).await {
        Ok(actual) => {
            let own = id.to_string();
            // A VPS that should have no entry only claims one labelled with its own id: a
            // deleted VPS's hostname may since belong to another VPS, whose entry it is.
            let actual = actual.filter(|a| {
                desired.is_ok()
                    || a.pointer("/metadata/labels")
                        .and_then(|l| l.get(VPS_ID_LABEL))
                        .and_then(serde_json::Value::as_str)
                        == Some(own.as_str())
            });
            if let Some(a) = &actual {
                report.health = inspect::entry_health(a);
                if let Ok(d) = &desired {
                    report.in_sync = Some(inspect::entry_in_sync(d, a));
                }
            }
            report.actual = actual;
        }
        Err(e) => {
            tracing::debug!(vps = %id, error = %e, "reading the VPS's WorkloadEntry failed");
            report.cluster_error = Some(format!(
                "reading WorkloadEntry {}/{name}: {e}",
                cluster.namespace()
            ));
        }
    }
    Ok(Json(report))
}

/// The WorkloadEntry sigma wants for the VPS, or why it wants none. Inventory reasons are
/// answers, not errors; only a model failure that no input explains (a bug) is an error.
fn desired_entry(
    template: &MeshTemplate,
    subject: &MeshSubject,
) -> ApiResult<Result<MeshObject, String>> {
    let purpose = match &subject.purpose {
        Ok(p) => p,
        Err(invalid) => {
            // Its own state first: a retired VPS stays out whatever its purpose holds.
            if let Some(r) = inspect::not_meshed_reason(&subject.vps, true) {
                return Ok(Err(r));
            }
            let fields: Vec<String> = invalid
                .errors
                .0
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            return Ok(Err(format!(
                "the stored mesh settings of purpose {} are invalid ({}); fix them with PATCH /api/purposes/{}",
                invalid.name,
                fields.join("; "),
                invalid.name
            )));
        }
    };
    if let Some(r) = inspect::not_meshed_reason(&subject.vps, purpose.settings.enabled) {
        return Ok(Err(r));
    }
    match sigma_mesh::bootstrap::bundle_workload(template, purpose, &subject.vps) {
        Ok(w) => Ok(Ok(MeshObject::WorkloadEntry(w.entry))),
        Err(sigma_mesh::Error::NotMeshed(m)) => Ok(Err(m)),
        Err(sigma_mesh::Error::InvalidPurpose { purpose, errors }) => {
            let fields: Vec<String> = errors.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            Ok(Err(format!(
                "the mesh settings of purpose {purpose} are invalid ({})",
                fields.join("; ")
            )))
        }
        Err(other) => Err(ApiError::internal(&other)),
    }
}

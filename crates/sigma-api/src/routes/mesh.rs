//! The mesh registry: the desired Istio objects as YAML for GitOps, and one VPS's place in the
//! mesh, desired against actual.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sigma_types::FieldErrors;
use sigma_types::mesh::VpsMeshReport;

use crate::AppState;
use crate::error::{ApiError, ApiResult, fields_under};
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
                fields
                    .0
                    .extend(fields_under(&format!("purposes.{}", p.name), p.errors).0);
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
    Ok(Json(s.mesh.diagnose(&s.store, id).await?))
}

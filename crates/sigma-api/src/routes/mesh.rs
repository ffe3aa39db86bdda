//! The mesh registry: the desired Istio objects as YAML for GitOps.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sigma_types::FieldErrors;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;

/// Every Istio object the inventory implies, as multi-document YAML (`application/yaml`), for
/// `kubectl apply -f` or a GitOps repository. Deterministic: the same inventory gives the same
/// bytes. A comment header lists the VPS that qualify for the mesh but have no WorkloadEntry,
/// and why. Served in every mesh mode; never contacts Kubernetes.
#[utoipa::path(get, path = "/api/mesh/manifests", tag = "mesh",
    responses((status = 200, body = String, content_type = "application/yaml"),
    (status = 409, description = "a stored purpose has invalid mesh settings", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn manifests(State(s): State<AppState>, auth: Auth) -> ApiResult<impl IntoResponse> {
    auth.reader()?;
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

//! Liveness, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Reader};

/// The process is alive (no database check; no credentials needed).
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database answers (no credentials needed).
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = String), (status = 503, body = sigma_types::ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> ApiResult<&'static str> {
    s.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "database unreachable",
        )
    })?;
    Ok("ready")
}

/// Prometheus metrics (any reader key).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, body = String, content_type = "text/plain")), security(("bearer" = [])))]
pub async fn metrics(State(s): State<AppState>, Reader(_): Reader) -> ApiResult<impl IntoResponse> {
    s.metrics.inventory.refresh(&s.store).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    ))
}

/// This API's OpenAPI 3 document (any key).
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn openapi(State(s): State<AppState>, _auth: Auth) -> Json<serde_json::Value> {
    Json(s.openapi.as_ref().clone())
}

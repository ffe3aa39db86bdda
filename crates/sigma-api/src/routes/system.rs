//! Liveness, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Reader};
use crate::metrics::{ResultLabels, StatusLabels, VerbLabels};

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
    for (status, n) in s.store.count_vps_by_status().await? {
        s.metrics
            .vps
            .get_or_create(&StatusLabels {
                status: status.as_str().into(),
            })
            .set(n);
    }
    for (status, n) in s.store.count_vps_by_mesh_status().await? {
        s.metrics
            .mesh_vps
            .get_or_create(&StatusLabels {
                status: status.as_str().into(),
            })
            .set(n);
    }
    if let Some((stats, cluster)) = &s.mesh.reconciler {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &s.metrics;
        m.mesh_leader.set(stats.leader.load(Relaxed));
        m.mesh_last_success.set(stats.last_success.load(Relaxed));
        for (result, n) in [
            ("ok", stats.passes_ok.load(Relaxed)),
            ("failed", stats.passes_failed.load(Relaxed)),
        ] {
            m.mesh_passes
                .get_or_create(&ResultLabels {
                    result: result.into(),
                })
                .set(n as i64);
        }
        let c = &cluster.calls;
        for (verb, n) in [
            ("list", c.list.load(Relaxed)),
            ("apply", c.apply.load(Relaxed)),
            ("delete", c.delete.load(Relaxed)),
            ("failed", c.failed.load(Relaxed)),
        ] {
            m.mesh_api_calls
                .get_or_create(&VerbLabels { verb: verb.into() })
                .set(n as i64);
        }
    }
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

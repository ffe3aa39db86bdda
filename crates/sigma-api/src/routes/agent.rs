//! Agent endpoints: register (first contact or after a restart) and heartbeat.

use axum::Json;
use axum::extract::State;
use sigma_types::{
    HeartbeatRequest, HeartbeatResponse, Normalize, RegisterRequest, RegisterResponse,
};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Auth, Bearer};
use crate::metrics::Metrics;

/// Registers an agent. With an enrollment token (first contact) the VPS is matched by hostname
/// or created, and the answer carries a new agent key bound to it (shown once); with the agent
/// key it refreshes what the VPS reports. A retired or deleted VPS is refused (409).
#[utoipa::path(post, path = "/api/agent/register", tag = "agent", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 401, body = sigma_types::ErrorBody),
    (status = 403, body = sigma_types::ErrorBody), (status = 409, body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(s): State<AppState>,
    Bearer(secret): Bearer,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    let r = async {
        let req = req.normalize()?;
        if secret.starts_with("sge_") {
            Ok(s.store.register_with_token(&secret, &req).await?)
        } else {
            let p = s.store.authenticate(&secret).await?;
            Ok(s.store.register_with_key(&p, &req).await?)
        }
    }
    .await;
    Metrics::outcome(&s.metrics.registrations, &r);
    r.map(Json)
}

/// A heartbeat; the answer is the VPS's desired state.
#[utoipa::path(post, path = "/api/agent/heartbeat", tag = "agent", request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 401, body = sigma_types::ErrorBody),
    (status = 403, body = sigma_types::ErrorBody), (status = 409, body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let r = async {
        let req = req.normalize()?;
        Ok(s.store.heartbeat(&auth.0, &req).await?)
    }
    .await;
    Metrics::outcome(&s.metrics.heartbeats, &r);
    r.map(Json)
}

//! Agent endpoints: register (first contact or after a restart) and heartbeat.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use sigma_types::{
    HeartbeatRequest, HeartbeatResponse, Normalize, RegisterRequest, RegisterResponse,
};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AgentKey, ApiJson, Registrant};
use crate::metrics::Metrics;

/// Registers an agent. With an enrollment token (first contact) the VPS is matched by hostname
/// or created, and the answer carries a new agent key bound to it (shown once); with the agent
/// key it refreshes what the VPS reports. A retired or deleted VPS is refused (409).
#[utoipa::path(post, path = "/api/agent/register", tag = "agent", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 401, body = sigma_types::ErrorBody),
    (status = 403, body = sigma_types::ErrorBody), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(s): State<AppState>,
    who: Result<Registrant, ApiError>,
    body: Request,
) -> ApiResult<Json<RegisterResponse>> {
    let r = async {
        // The credential first: the body is read only for a caller that may send it, so a
        // body error tells an unknown caller nothing.
        let who = who?;
        let ApiJson(req) = ApiJson::<RegisterRequest>::from_request(body, &s).await?;
        let req = req.normalize()?;
        match who {
            Registrant::Token(secret) => Ok(s.store.register_with_token(&secret, &req).await?),
            Registrant::Agent(p) => Ok(s.store.register_with_key(&p, &req).await?),
        }
    }
    .await;
    Metrics::outcome(&s.metrics.registrations, &r);
    r.map(Json)
}

/// A heartbeat (agent keys only); the answer is the VPS's desired state.
#[utoipa::path(post, path = "/api/agent/heartbeat", tag = "agent", request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 401, body = sigma_types::ErrorBody),
    (status = 403, body = sigma_types::ErrorBody), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(s): State<AppState>,
    who: Result<AgentKey, ApiError>,
    body: Request,
) -> ApiResult<Json<HeartbeatResponse>> {
    let r = async {
        let AgentKey(p) = who?;
        let ApiJson(req) = ApiJson::<HeartbeatRequest>::from_request(body, &s).await?;
        let req = req.normalize()?;
        Ok(s.store.heartbeat(&p, &req).await?)
    }
    .await;
    Metrics::outcome(&s.metrics.heartbeats, &r);
    r.map(Json)
}

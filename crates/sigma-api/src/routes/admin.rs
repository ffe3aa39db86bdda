//! API keys, enrollment tokens and the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sigma_types::{
    ApiKey, ApiKeyCreate, ApiKeyCreated, AuditEntry, AuditQuery, EnrollmentToken,
    EnrollmentTokenCreated, List, Normalize, PageQuery,
};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Admin, ApiJson, ApiPath, ApiQuery, Operator, uuid_param};

/// Lists API keys (never their secrets).
#[utoipa::path(get, path = "/api/api-keys", tag = "keys", params(PageQuery),
    responses((status = 200, body = List<ApiKey>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn list_api_keys(
    State(s): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<ApiKey>>> {
    let (limit, offset) = q.checked()?;
    Ok(Json(s.store.list_api_keys(limit, offset).await?))
}

/// Issues an API key; its secret is in this answer only.
#[utoipa::path(post, path = "/api/api-keys", tag = "keys", request_body = ApiKeyCreate,
    responses((status = 201, body = ApiKeyCreated), (status = 422, body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    State(s): State<AppState>,
    Admin(p): Admin,
    ApiJson(c): ApiJson<ApiKeyCreate>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    let c = c.normalize()?;
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_api_key(&p.actor(), &c).await?),
    ))
}

/// Revokes an API key at once.
#[utoipa::path(post, path = "/api/api-keys/{id}/revoke", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_api_key(
    State(s): State<AppState>,
    Admin(p): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApiKey>> {
    let id = uuid_param(&id)?;
    Ok(Json(s.store.revoke_api_key(&p, id).await?))
}

/// Lists enrollment tokens (never their secrets).
#[utoipa::path(get, path = "/api/enrollment-tokens", tag = "keys", params(PageQuery),
    responses((status = 200, body = List<EnrollmentToken>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn list_enrollment_tokens(
    State(s): State<AppState>,
    Operator(_): Operator,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<EnrollmentToken>>> {
    let (limit, offset) = q.checked()?;
    Ok(Json(s.store.list_enrollment_tokens(limit, offset).await?))
}

/// Issues an enrollment token; its secret is in this answer only.
#[utoipa::path(post, path = "/api/enrollment-tokens", tag = "keys", request_body = sigma_types::contract::EnrollmentTokenCreateBody,
    responses((status = 201, body = EnrollmentTokenCreated), (status = 422, body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_enrollment_token(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<EnrollmentTokenCreated>)> {
    let b = sigma_types::contract::EnrollmentTokenCreateBody::from_json_with(
        body,
        crate::json::decode_value,
        crate::json::decode_value,
    )?;
    Ok((
        StatusCode::CREATED,
        Json(
            s.store
                .create_enrollment_token_with(&p.actor(), &b.create, b.contract.as_ref())
                .await?,
        ),
    ))
}

/// Revokes an enrollment token.
#[utoipa::path(post, path = "/api/enrollment-tokens/{id}/revoke", tag = "keys",
    params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentToken), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_enrollment_token(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EnrollmentToken>> {
    let id = uuid_param(&id)?;
    Ok(Json(s.store.revoke_enrollment_token(&p.actor(), id).await?))
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = List<AuditEntry>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn list_audit(
    State(s): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<List<AuditEntry>>> {
    let f = q.filter()?;
    Ok(Json(s.store.list_audit(&f).await?))
}

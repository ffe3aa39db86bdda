//! Providers, purposes and VPS.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sigma_types::{
    List, Normalize, PageQuery, Provider, ProviderCreate, ProviderPatch, Purpose, PurposeCreate,
    PurposePatch, RetireQuery, Vps, VpsCreateBody, VpsListQuery, VpsPatchBody,
};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Operator, Reader, uuid_param};

// ---------------------------------------------------------------------------------------------
// Providers

/// Lists providers.
#[utoipa::path(get, path = "/api/providers", tag = "providers", params(PageQuery),
    responses((status = 200, body = List<Provider>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn list_providers(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<Provider>>> {
    let (limit, offset) = q.checked()?;
    Ok(Json(s.store.list_providers(limit, offset).await?))
}

/// Adds a provider.
#[utoipa::path(post, path = "/api/providers", tag = "providers", request_body = ProviderCreate,
    responses((status = 201, body = Provider), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn create_provider(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(c): ApiJson<ProviderCreate>,
) -> ApiResult<(StatusCode, Json<Provider>)> {
    let c = c.normalize()?;
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_provider(&p.actor(), &c).await?),
    ))
}

/// A provider by id or name.
#[utoipa::path(get, path = "/api/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = Provider), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_provider(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Provider>> {
    Ok(Json(s.store.get_provider(&id).await?))
}

/// Changes a provider.
#[utoipa::path(patch, path = "/api/providers/{id}", tag = "providers", request_body = ProviderPatch,
    params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = Provider),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn update_provider(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<ProviderPatch>,
) -> ApiResult<Json<Provider>> {
    let patch = patch.normalize()?;
    Ok(Json(
        s.store.update_provider(&p.actor(), &id, &patch).await?,
    ))
}

/// Removes a provider no live VPS uses.
#[utoipa::path(delete, path = "/api/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "id or name")),
    responses((status = 204), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_provider(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_provider(&p.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Purposes

/// Lists purposes.
#[utoipa::path(get, path = "/api/purposes", tag = "purposes", params(PageQuery),
    responses((status = 200, body = List<Purpose>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn list_purposes(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<Purpose>>> {
    let (limit, offset) = q.checked()?;
    Ok(Json(s.store.list_purposes(limit, offset).await?))
}

/// Adds a purpose.
#[utoipa::path(post, path = "/api/purposes", tag = "purposes", request_body = PurposeCreate,
    responses((status = 201, body = Purpose), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_purpose(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(c): ApiJson<PurposeCreate>,
) -> ApiResult<(StatusCode, Json<Purpose>)> {
    let c = c.normalize()?;
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_purpose(&p.actor(), &c).await?),
    ))
}

/// A purpose.
#[utoipa::path(get, path = "/api/purposes/{name}", tag = "purposes",
    params(("name" = String, Path)), responses((status = 200, body = Purpose),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_purpose(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Purpose>> {
    Ok(Json(s.store.get_purpose(&name).await?))
}

/// Changes a purpose.
#[utoipa::path(patch, path = "/api/purposes/{name}", tag = "purposes", request_body = PurposePatch,
    params(("name" = String, Path)), responses((status = 200, body = Purpose),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_purpose(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<PurposePatch>,
) -> ApiResult<Json<Purpose>> {
    let patch = patch.normalize()?;
    Ok(Json(
        s.store.update_purpose(&p.actor(), &name, &patch).await?,
    ))
}

/// Removes a purpose no VPS has.
#[utoipa::path(delete, path = "/api/purposes/{name}", tag = "purposes",
    params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_purpose(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_purpose(&p.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// VPS

/// Lists VPS (not deleted ones unless `status=deleted`).
#[utoipa::path(get, path = "/api/vps", tag = "vps", params(VpsListQuery),
    responses((status = 200, body = List<Vps>), (status = 422, body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_vps(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<VpsListQuery>,
) -> ApiResult<Json<List<Vps>>> {
    let (q, f) = q.checked()?;
    Ok(Json(s.store.list_vps_filtered(&q, &f).await?))
}

/// Adds a VPS, with its contract terms in `contract` if known.
#[utoipa::path(post, path = "/api/vps", tag = "vps", request_body = VpsCreateBody,
    responses((status = 201, body = Vps), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn create_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<Vps>)> {
    let body =
        VpsCreateBody::from_json_with(body, crate::json::decode_value, crate::json::decode_value)?;
    let contract = body.contract.unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(
            s.store
                .create_vps_with(&p.actor(), &body.create, &contract)
                .await?,
        ),
    ))
}

/// A VPS by id.
#[utoipa::path(get, path = "/api/vps/{id}", tag = "vps", params(("id" = String, Path)),
    responses((status = 200, body = Vps), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_vps(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vps>> {
    Ok(Json(s.store.get_vps(uuid_param(&id)?).await?))
}

/// Changes a VPS: absent fields stay, `null` clears.
#[utoipa::path(patch, path = "/api/vps/{id}", tag = "vps", request_body = VpsPatchBody,
    params(("id" = String, Path)),
    responses((status = 200, body = Vps), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn update_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<Vps>> {
    let id = uuid_param(&id)?;
    let body = VpsPatchBody::from_json_with(body, crate::json::decode_value)?;
    Ok(Json(
        s.store
            .update_vps_with(
                &p.actor(),
                id,
                &body.patch,
                body.mesh_opt_out,
                body.contract.as_ref(),
            )
            .await?,
    ))
}

/// Retires a VPS: `retiring` until its agent has stopped what it manages, or `retired` at
/// once with `force=true`.
#[utoipa::path(post, path = "/api/vps/{id}/retire", tag = "vps",
    params(("id" = String, Path), RetireQuery),
    responses((status = 200, body = Vps), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn retire_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RetireQuery>,
) -> ApiResult<Json<Vps>> {
    let id = uuid_param(&id)?;
    Ok(Json(s.store.retire_vps(&p.actor(), id, q.force).await?))
}

/// Soft-deletes a VPS.
#[utoipa::path(delete, path = "/api/vps/{id}", tag = "vps", params(("id" = String, Path)),
    responses((status = 200, body = Vps),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vps>> {
    let id = uuid_param(&id)?;
    Ok(Json(s.store.delete_vps(&p.actor(), id).await?))
}

/// Restores a soft-deleted VPS.
#[utoipa::path(post, path = "/api/vps/{id}/restore", tag = "vps", params(("id" = String, Path)),
    responses((status = 200, body = Vps), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn restore_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vps>> {
    let id = uuid_param(&id)?;
    Ok(Json(s.store.restore_vps(&p.actor(), id).await?))
}

//! Envoy routes (classic mode): operators manage them per VPS; agents read their own.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use sigma_mesh::Placement;
use sigma_types::{
    AgentMode, AgentState, EnvoyConfig, EnvoyRoute, EnvoyRouteBatch, EnvoyRouteCreate,
    EnvoyRoutePatch, FieldErrors, PlanMode, RouteIssueReport, RouteListener, RoutePlan,
    RoutePlanEntry, RouteRuns, Vps,
};
use time::OffsetDateTime;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AgentKey, ApiJson, ApiPath, ApiQuery, Operator, Reader, uuid_param};

/// Lists a VPS's routes (disabled ones too).
#[utoipa::path(get, path = "/api/vps/{id}/envoy-routes", tag = "envoy", params(("id" = String, Path)),
    responses((status = 200, body = Vec<EnvoyRoute>), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_routes(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<EnvoyRoute>>> {
    Ok(Json(s.store.list_routes(uuid_param(&id)?).await?))
}

/// Adds a route to a VPS.
#[utoipa::path(post, path = "/api/vps/{id}/envoy-routes", tag = "envoy", params(("id" = String, Path)),
    request_body = EnvoyRouteCreate,
    responses((status = 201, body = EnvoyRoute), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn create_route(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(c): ApiJson<EnvoyRouteCreate>,
) -> ApiResult<(StatusCode, Json<EnvoyRoute>)> {
    let vps = uuid_param(&id)?;
    let mut e = FieldErrors::new();
    let spec = c.spec("", &mut e);
    e.into_result()?;
    let spec = spec.ok_or_else(FieldErrors::new)?;
    Ok((
        StatusCode::CREATED,
        Json(s.store.create_route(&p.actor(), vps, &spec).await?),
    ))
}

/// Creates or replaces a VPS's routes by name in one step (one version change); with
/// `prune: true` the routes not named are deleted.
#[utoipa::path(put, path = "/api/vps/{id}/envoy-routes", tag = "envoy", params(("id" = String, Path)),
    request_body = EnvoyRouteBatch,
    responses((status = 200, body = Vec<EnvoyRoute>), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn upsert_routes(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<EnvoyRouteBatch>,
) -> ApiResult<Json<Vec<EnvoyRoute>>> {
    let vps = uuid_param(&id)?;
    let specs = b.specs()?;
    Ok(Json(
        s.store
            .upsert_routes(&p.actor(), vps, &specs, b.prune)
            .await?,
    ))
}

/// A route.
#[utoipa::path(get, path = "/api/envoy-routes/{id}", tag = "envoy", params(("id" = String, Path)),
    responses((status = 200, body = EnvoyRoute), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_route(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EnvoyRoute>> {
    Ok(Json(s.store.get_route(uuid_param(&id)?).await?))
}

/// Changes a route.
#[utoipa::path(patch, path = "/api/envoy-routes/{id}", tag = "envoy", params(("id" = String, Path)),
    request_body = EnvoyRoutePatch,
    responses((status = 200, body = EnvoyRoute), (status = 409, body = sigma_types::ErrorBody),
    (status = 422, body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn update_route(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<EnvoyRoutePatch>,
) -> ApiResult<Json<EnvoyRoute>> {
    let id = uuid_param(&id)?;
    Ok(Json(
        s.store
            .update_route(&p.actor(), id, |r| patch.apply(r))
            .await?,
    ))
}

/// Removes a route.
#[utoipa::path(delete, path = "/api/envoy-routes/{id}", tag = "envoy", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_route(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_route(&p.actor(), uuid_param(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the agent's config endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// The agent's hostname (must be its key's VPS).
    pub hostname: String,
    /// The version the agent has: the answer waits until the version differs (long poll).
    pub known_version: Option<i64>,
    /// How long to wait at most, in seconds (1-60, default 25).
    #[param(minimum = 1, maximum = 60)]
    pub wait_seconds: Option<u64>,
}

/// The agent's Envoy config (active routes and version). With `known_version` it is a long
/// poll: it answers as soon as the version differs, or after `wait_seconds`.
#[utoipa::path(get, path = "/api/agent/envoy-config", tag = "agent", params(ConfigQuery),
    responses((status = 200, body = EnvoyConfig), (status = 403, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn agent_config(
    State(s): State<AppState>,
    AgentKey(p): AgentKey,
    ApiQuery(q): ApiQuery<ConfigQuery>,
) -> ApiResult<Json<EnvoyConfig>> {
    let mut e = FieldErrors::new();
    let hostname = e.check("hostname", sigma_types::validate::hostname(&q.hostname));
    let wait = q.wait_seconds.unwrap_or(25);
    if !(1..=60).contains(&wait) {
        e.add("wait_seconds", "must be 1-60");
    }
    e.into_result()?;
    let hostname = hostname.unwrap_or_default();
    Ok(Json(
        s.store
            .agent_envoy_config(&p, &hostname, q.known_version, Duration::from_secs(wait))
            .await?,
    ))
}

/// Query of [`route_plan`].
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PlanQuery {
    /// `current` (default: the mode the VPS's agent reports), `mesh` or `classic`.
    pub mode: Option<PlanMode>,
}

/// What the agent's last report says about its Envoy's listeners.
enum Liveness {
    /// Classic mode: one answer for every route (Envoy accepted the current routes or not).
    Classic(RouteListener),
    /// Mesh mode: the listeners Envoy has bound, or why that is unknown.
    Mesh(Result<sigma_types::mesh::dataplane::BoundListeners, RouteListener>),
}

/// The agent's report, unless it is missing or older than `silence`.
fn fresh_state(vps: &Vps, silence: Duration) -> Result<&AgentState, RouteListener> {
    let unknown = |reason: String| RouteListener::Unknown { reason };
    let state = vps
        .agent_state
        .as_ref()
        .ok_or_else(|| unknown("its agent has not reported".into()))?;
    match vps.last_heartbeat_at {
        Some(at) if OffsetDateTime::now_utc() - at <= silence => Ok(state),
        Some(at) => Err(unknown(format!(
            "its agent has not reported since {}",
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ))),
        None => Err(unknown("its agent has not reported".into())),
    }
}

/// Classic mode: live when the agent's Envoy accepted the routes version sigma-api serves now.
fn classic_listener(vps: &Vps, current: i64, silence: Duration) -> RouteListener {
    let state = match fresh_state(vps, silence) {
        Ok(s) => s,
        Err(unknown) => return unknown,
    };
    let not_live = |reason: &str| RouteListener::NotLive {
        reason: reason.into(),
    };
    match (state.xds_clients, state.envoy_applied_version) {
        (Some(0), _) => not_live("no Envoy is connected to sigma-agent's xDS server"),
        (_, Some(v)) if v == current => RouteListener::Live,
        (_, Some(_)) if state.last_nack.is_some() => {
            not_live("Envoy refused the current routes (see the VPS's agent_state.last_nack)")
        }
        (_, Some(_)) => not_live("Envoy has not accepted the current routes yet"),
        (_, None) => RouteListener::Unknown {
            reason: "its agent reports no routes version accepted by Envoy".into(),
        },
    }
}

/// Mesh mode: the listeners the agent last read from its Envoy.
fn mesh_listeners(
    vps: &Vps,
    silence: Duration,
) -> Result<sigma_types::mesh::dataplane::BoundListeners, RouteListener> {
    let unknown = |reason: &str| RouteListener::Unknown {
        reason: reason.into(),
    };
    let state = fresh_state(vps, silence)?;
    let m = state
        .mesh_state
        .as_ref()
        .ok_or_else(|| unknown("its agent reports no pilot-agent state"))?;
    let d = m.dataplane.as_ref().ok_or_else(|| {
        unknown(
            "its agent reports no data-plane reading (Envoy not running yet, or an older agent)",
        )
    })?;
    d.listeners.clone().ok_or_else(|| {
        unknown("its agent could not read Envoy's listeners (or is older than this report)")
    })
}

/// Where a VPS's active routes run in a mode, and what the mesh cannot carry: what switching
/// the VPS to mesh mode (or back) does to each route, before it is done.
#[utoipa::path(get, path = "/api/vps/{id}/envoy-routes/plan", tag = "envoy",
    params(("id" = String, Path), PlanQuery),
    responses((status = 200, body = RoutePlan), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path or query value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn route_plan(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> ApiResult<Json<RoutePlan>> {
    let id = uuid_param(&id)?;
    Ok(Json(
        plan(&s.store, &s.mesh, id, q.mode.unwrap_or(PlanMode::Current)).await?,
    ))
}

/// The route plan of VPS `id` for `mode`: the endpoint's answer, and the console's.
pub(crate) async fn plan(
    store: &sigma_store::Store,
    mesh_state: &crate::mesh::MeshState,
    id: Uuid,
    mode: PlanMode,
) -> ApiResult<RoutePlan> {
    let vps = store.get_vps(id).await?;
    let agent_mode = vps
        .agent_state
        .as_ref()
        .and_then(|a| a.mode)
        .unwrap_or(AgentMode::Classic);
    let inputs = store.route_plan_inputs(id).await?;
    // Classic mode carries every route; mesh mode what the model renders. Today's mode is the
    // agent's: a meshed VPS whose agent still runs classic is served by sigma-agent's Envoy.
    let mesh = match mode {
        PlanMode::Classic => false,
        PlanMode::Mesh => true,
        PlanMode::Current => agent_mode == AgentMode::Mesh,
    };
    let placements = sigma_mesh::plan_routes(
        &mesh_state.template,
        &inputs.purposes,
        &inputs.vps,
        &inputs.routes,
        mesh,
    )
    .map_err(|e| match e {
        // A purpose whose stored settings the model refuses (an explicit mesh port on the
        // template's health port, which the settings alone cannot know): the mesh cannot be
        // computed until the purpose is fixed, as the reconciler reports too.
        sigma_mesh::Error::InvalidPurpose { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        e => ApiError::internal(&e),
    })?;
    // Today's mode: whether each route's listener is live, from the agent's last report.
    let live = match (mode, agent_mode) {
        (PlanMode::Current, AgentMode::Classic) => {
            let current = store.envoy_config_version(id).await?;
            Some(Liveness::Classic(classic_listener(
                &vps,
                current,
                store.target_silence(),
            )))
        }
        (PlanMode::Current, AgentMode::Mesh) => {
            Some(Liveness::Mesh(mesh_listeners(&vps, store.target_silence())))
        }
        _ => None,
    };
    let mut placements: HashMap<Uuid, Placement> = placements
        .into_iter()
        .map(|p| (p.route_id, p.placement))
        .collect();
    let routes =
        inputs
            .routes
            .iter()
            .map(|r| {
                let placement = placements.remove(&r.id).unwrap_or(Placement::Classic);
                let (runs, mesh_host, listen_address, issues) = match placement {
                    _ if !mesh => (RouteRuns::Classic, None, None, Vec::new()),
                    Placement::Classic => (RouteRuns::Classic, None, None, Vec::new()),
                    Placement::Mesh { host, bind } => (
                        RouteRuns::Mesh,
                        Some(host),
                        Some(bind.to_string()),
                        Vec::new(),
                    ),
                    Placement::NotCarried(issues) => (
                        RouteRuns::NotCarried,
                        None,
                        None,
                        issues
                            .iter()
                            .map(|i| RouteIssueReport {
                                code: i.code().to_string(),
                                message: i.to_string(),
                            })
                            .collect(),
                    ),
                };
                let listener =
                    live.as_ref().map(|l| match l {
                        Liveness::Classic(state) => state.clone(),
                        Liveness::Mesh(Err(unknown)) => unknown.clone(),
                        Liveness::Mesh(Ok(bound)) => {
                            match listen_address.as_deref().map(str::parse::<std::net::IpAddr>) {
                        Some(Ok(addr)) => match bound.has(addr, r.listen_port) {
                            Some(true) => RouteListener::Live,
                            Some(false) => RouteListener::NotLive {
                                reason: format!(
                                    "Envoy has no listener bound at {addr}:{}",
                                    r.listen_port
                                ),
                            },
                            None => RouteListener::Unknown {
                                reason: "the agent's report lists only part of Envoy's listeners"
                                    .into(),
                            },
                        },
                        _ => RouteListener::NotLive {
                            reason: "the mesh does not carry it".into(),
                        },
                    }
                        }
                    });
                RoutePlanEntry {
                    route_id: r.id,
                    name: r.name.clone(),
                    listen_port: r.listen_port,
                    upstream: r.upstream.to_string(),
                    runs,
                    mesh_host,
                    listen_address,
                    listener,
                    issues,
                }
            })
            .collect();
    Ok(RoutePlan {
        vps_id: id,
        hostname: vps.hostname,
        mode,
        agent_mode,
        mesh_registrar: mesh_state.mode().as_str().to_string(),
        routes,
    })
}

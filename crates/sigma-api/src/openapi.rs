//! The OpenAPI document, generated from the handlers themselves: every route is registered
//! through [`api_router`], so a route cannot exist without its documentation.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::routes::{
    admin, agent, bundle, costs, envoy, export, install, inventory, mesh, prometheus, renewals,
    system,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "sigma-api", description = "Fleet inventory and mesh registrar for VPS hosts."),
    modifiers(&BearerAuth),
    tags(
        (name = "vps", description = "The fleet"),
        (name = "providers"), (name = "purposes"),
        (name = "agent", description = "Called by sigma-agent"),
        (name = "keys", description = "API keys and enrollment tokens"),
        (name = "audit"), (name = "system"),
        (name = "envoy", description = "Envoy routes of the classic mode"),
        (name = "mesh", description = "The mesh registry"),
        (name = "costs", description = "Exchange rates and the fleet's monthly cost")
    )
)]
struct ApiDoc;

/// Every route, with its documentation.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(install::install_script))
        .routes(routes!(prometheus::targets))
        .routes(routes!(renewals::contracts))
        .routes(routes!(costs::list_rates))
        .routes(routes!(costs::set_rate, costs::delete_rate))
        .routes(routes!(costs::summary))
        .routes(routes!(export::export_vps))
        .routes(routes!(export::import_vps))
        .routes(routes!(
            inventory::list_providers,
            inventory::create_provider
        ))
        .routes(routes!(
            inventory::get_provider,
            inventory::update_provider,
            inventory::delete_provider
        ))
        .routes(routes!(inventory::list_purposes, inventory::create_purpose))
        .routes(routes!(
            inventory::get_purpose,
            inventory::update_purpose,
            inventory::delete_purpose
        ))
        .routes(routes!(inventory::list_vps, inventory::create_vps))
        .routes(routes!(
            inventory::get_vps,
            inventory::update_vps,
            inventory::delete_vps
        ))
        .routes(routes!(inventory::retire_vps))
        .routes(routes!(inventory::restore_vps))
        .routes(routes!(agent::register))
        .routes(routes!(agent::heartbeat))
        .routes(routes!(admin::list_api_keys, admin::create_api_key))
        .routes(routes!(admin::revoke_api_key))
        .routes(routes!(
            admin::list_enrollment_tokens,
            admin::create_enrollment_token
        ))
        .routes(routes!(admin::revoke_enrollment_token))
        .routes(routes!(admin::list_audit))
        .routes(routes!(
            envoy::list_routes,
            envoy::create_route,
            envoy::upsert_routes
        ))
        .routes(routes!(
            envoy::get_route,
            envoy::update_route,
            envoy::delete_route
        ))
        .routes(routes!(envoy::route_plan))
        .routes(routes!(envoy::agent_config))
        .routes(routes!(mesh::manifests))
        .routes(routes!(mesh::vps_mesh))
        .routes(routes!(bundle::istio_bootstrap))
}

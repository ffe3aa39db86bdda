//! sigma-web: the operator's web console, served by sigma-api on its own port under `/`.
//!
//! Pages are HTML rendered on the server with [`maud`], whose templates escape every value
//! they interpolate, so a hostname, tag or system-info string an agent reported is text on the
//! page and never markup. The browser gets one hand-written CSS file and one small JS file from
//! this crate (compiled into the binary); a strict Content-Security-Policy forbids everything
//! else, inline script and style included.
//!
//! Sign-in exchanges an API key for a server-side session ([`sigma_store::sessions`]): the
//! browser keeps only a random id in an HttpOnly, `SameSite=Strict` cookie. Every mutation is a
//! form POST checked twice against cross-site requests: its `Origin` (or `Referer`) must be this
//! server, and it must carry the session's CSRF token.

mod auth;
mod error;
mod layout;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sigma_store::Store;
use sigma_store::sessions::SessionLimits;

pub use error::WebError;

/// How the console is set up (from sigma-api's flags).
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Kiali's base URL, linked from the overview.
    pub kiali_url: Option<String>,
    /// Grafana's base URL, linked from the overview.
    pub grafana_url: Option<String>,
    /// sigma-api's URL as VPS reach it (`--public-url`), for the install command; without it
    /// the request's own origin is used.
    pub public_url: Option<String>,
    /// Believe `X-Forwarded-Proto` (set only behind a proxy that overwrites it): it decides
    /// whether the session cookie is `Secure` and what this server's origin is.
    pub trust_forwarded_proto: bool,
    /// Session lifetimes.
    pub sessions: SessionLimits,
    /// An active VPS whose agent has been quiet this long counts as silent (three of the
    /// agent's default 30 s heartbeat intervals).
    pub silent_after: Duration,
    /// The overview flags workload certificates that expire within this (Istio's default 24 h
    /// certificates are renewed at about half their life, so a healthy proxy's never gets
    /// this close).
    pub cert_warning: Duration,
    /// The overview flags istio tokens that expire within this (agents refresh a token at
    /// 50-70% of its life, 1 h by default: a healthy agent's keeps 18 minutes or more).
    pub token_warning: Duration,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            kiali_url: None,
            grafana_url: None,
            public_url: None,
            trust_forwarded_proto: false,
            sessions: SessionLimits::default(),
            silent_after: Duration::from_secs(90),
            cert_warning: Duration::from_secs(6 * 3600),
            token_warning: Duration::from_secs(10 * 60),
        }
    }
}

/// A boxed future, as [`MeshReports`] returns it.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the console gets one VPS's mesh report: sigma-api implements it with the code of
/// `GET /api/vps/{id}/mesh` (the desired WorkloadEntry, the cluster's, istiod's verdict), which
/// needs the mesh template and cluster client this crate does not have.
pub trait MeshReports: Send + Sync + 'static {
    /// The report for VPS `id`, asked by `who`; `Err` says why there is none.
    fn report<'a>(
        &'a self,
        who: &'a sigma_store::Principal,
        id: uuid::Uuid,
    ) -> BoxFuture<'a, Result<sigma_types::mesh::VpsMeshReport, String>>;

    /// Where VPS `id`'s routes run today and whether each listener is live (the answer of
    /// `GET /api/vps/{id}/envoy-routes/plan`); `Err` says why there is none.
    fn route_plan(&self, id: uuid::Uuid) -> BoxFuture<'_, Result<sigma_types::RoutePlan, String>>;
}

/// What every console handler shares.
#[derive(Clone)]
pub(crate) struct Web {
    pub store: Store,
    pub settings: Arc<WebSettings>,
    /// `None` outside sigma-api (tests, benches): the mesh section then shows the stored facts.
    pub mesh: Option<Arc<dyn MeshReports>>,
}

/// Forms are small; anything larger is not from the console.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

/// The policy of every console response: only this origin's script, style and images; no
/// inline code, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The console's routes, to be merged into sigma-api's router (they use no path under `/api`),
/// without a mesh report source.
pub fn router(store: Store, settings: WebSettings) -> Router {
    router_with_mesh(store, settings, None)
}

/// The console's routes with sigma-api's mesh reports on the VPS page.
pub fn router_with_mesh(
    store: Store,
    settings: WebSettings,
    mesh: Option<Arc<dyn MeshReports>>,
) -> Router {
    let state = Web {
        store,
        settings: Arc::new(settings),
        mesh,
    };
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/vps", get(pages::vps::list))
        .route(
            "/vps/{id}",
            get(pages::vps_detail::detail).post(pages::vps_detail::edit),
        )
        .route(
            "/vps/{id}/retire",
            get(pages::lifecycle::retire_confirm).post(pages::lifecycle::retire),
        )
        .route(
            "/vps/{id}/delete",
            get(pages::lifecycle::delete_confirm).post(pages::lifecycle::delete),
        )
        .route(
            "/vps/{id}/restore",
            get(pages::lifecycle::restore_confirm).post(pages::lifecycle::restore),
        )
        .route("/vps/{id}/routes", post(pages::routes::create))
        .route("/vps/{id}/routes/new", get(pages::routes::new_form))
        .route(
            "/vps/{id}/routes/{rid}",
            get(pages::routes::edit_form).post(pages::routes::update),
        )
        .route("/vps/{id}/routes/{rid}/toggle", post(pages::routes::toggle))
        .route(
            "/vps/{id}/routes/{rid}/delete",
            get(pages::routes::delete_confirm).post(pages::routes::delete),
        )
        .route(
            "/enrollment",
            get(pages::enroll::page).post(pages::enroll::create),
        )
        .route("/enrollment/{id}/revoke", post(pages::enroll::revoke))
        .route(
            "/purposes",
            get(pages::purposes::list).post(pages::purposes::create),
        )
        .route(
            "/purposes/{name}",
            get(pages::purposes::show).post(pages::purposes::update),
        )
        .route(
            "/providers",
            get(pages::admin::providers).post(pages::admin::create_provider),
        )
        .route(
            "/providers/{id}",
            get(pages::admin::provider).post(pages::admin::update_provider),
        )
        .route(
            "/providers/{id}/delete",
            post(pages::admin::delete_provider),
        )
        .route(
            "/api-keys",
            get(pages::admin::keys).post(pages::admin::create_key),
        )
        .route("/api-keys/{id}/revoke", post(pages::admin::revoke_key))
        .route("/audit", get(pages::admin::audit))
        .route("/chains", get(pages::chains::page))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
}

/// Headers every console response carries.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show inventory and secrets (a new token); no cache keeps them.
        set(h, header::CACHE_CONTROL, "no-store");
    }
    r
}

//! sigma-api: the fleet inventory HTTP service.
//!
//! [`router`] builds the whole HTTP interface over a [`sigma_store::Store`]; [`run`] is the
//! service's life: open the store, install the admin key, serve until shut down, then write
//! what is pending.

pub mod config;
pub mod error;
pub mod extract;
pub mod json;
pub mod mesh;
pub mod metrics;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use sigma_store::auth::AdminBootstrap;
use sigma_store::{ConnectSettings, Store, StoreSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::Config;
use error::ApiError;
pub use mesh::{MeshRuntime, MeshState};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The inventory.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The OpenAPI document, rendered once.
    pub openapi: Arc<serde_json::Value>,
    /// The mesh registry.
    pub mesh: Arc<MeshState>,
    /// Rendered Prometheus service-discovery documents.
    pub targets: Arc<routes::prometheus::TargetsCache>,
    /// What `GET /install.sh` writes into the agent installer.
    pub installer: Arc<routes::install::InstallerDefaults>,
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    axum::response::IntoResponse::into_response(ApiError::internal(&"handler panicked"))
}

/// The whole HTTP interface, with the mesh off and the default template.
pub fn router(store: Store, max_body_bytes: usize) -> Router {
    router_with_mesh(store, max_body_bytes, Arc::new(MeshState::default()))
}

/// The whole HTTP interface, with no installer defaults.
pub fn router_with_mesh(store: Store, max_body_bytes: usize, mesh: Arc<MeshState>) -> Router {
    router_with(store, max_body_bytes, mesh, Arc::default())
}

/// The whole HTTP interface.
pub fn router_with(
    store: Store,
    max_body_bytes: usize,
    mesh: Arc<MeshState>,
    installer: Arc<routes::install::InstallerDefaults>,
) -> Router {
    let (api, doc) = openapi::api_router().split_for_parts();
    let mut metrics = metrics::Metrics::default();
    mesh.register_metrics(metrics.registry_mut());
    let state = AppState {
        store,
        metrics: Arc::new(metrics),
        openapi: Arc::new(serde_json::to_value(&doc).unwrap_or_default()),
        mesh,
        targets: Arc::default(),
        installer,
    };
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Runs sigma-api until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let url = cfg.database_url()?;
    let admin_key = cfg.admin_key()?;
    let template = cfg.mesh_template().context("mesh settings")?;
    let bundle_settings = cfg
        .bundle_settings(&template)
        .context("Istio bootstrap settings")?;
    let mesh_mode = cfg.effective_mesh_mode();
    let installer = cfg
        .installer_defaults()
        .context("agent installer settings")?;
    let web = cfg
        .web_settings(&installer)
        .context("web console settings")?;
    // Read the Kubernetes configuration before anything else, so a broken kubeconfig stops the
    // start instead of a reconciler that can never run. The API server is not contacted here.
    let kube_client = match mesh_mode {
        config::MeshMode::Kubernetes => Some(
            cfg.kube_access()
                .client()
                .await
                .context("mesh mode kubernetes")?,
        ),
        _ => None,
    };
    let store = Store::open(
        &ConnectSettings {
            url,
            max_connections: cfg.database_max_connections,
            acquire_timeout: std::time::Duration::from_secs(5),
        },
        StoreSettings {
            flush_interval: cfg.heartbeat_flush_interval,
            refresh_interval: cfg.change_poll_interval,
            target_silence: cfg.route_target_silence,
        },
    )
    .await
    .context("opening the database")?;
    tracing::info!(backend = ?store.backend(), "database ready");
    match store
        .bootstrap_admin(admin_key.as_deref())
        .await
        .context("installing the admin key")?
    {
        AdminBootstrap::Generated { key } => {
            println!("sigma-api: first run; the initial admin key (shown once, store it now):");
            println!("{key}");
        }
        AdminBootstrap::FromEnvironment { prefix } => {
            tracing::info!(%prefix, "admin key from SIGMA_ADMIN_KEY installed");
        }
        AdminBootstrap::AlreadyInitialised => {}
    }

    let started = std::time::Instant::now();
    let (keys, vps) = store.warm_caches().await.context("loading keys and VPS")?;
    tracing::info!(
        keys,
        vps,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "caches warm"
    );

    let tracker = TaskTracker::new();
    store.spawn_background(&tracker, shutdown.clone());

    tracing::info!(mode = ?mesh_mode, namespace = %template.namespace, "mesh registry");
    // A client exists exactly in kubernetes mode (read above, or the start stopped there).
    let mesh = match kube_client {
        Some(client) => MeshState::start_kubernetes(
            &cfg,
            &store,
            client,
            template,
            bundle_settings,
            &tracker,
            &shutdown,
        ),
        None => MeshState {
            template,
            envoy_metrics: cfg.prometheus_envoy_metrics,
            runtime: if mesh_mode == config::MeshMode::Export {
                MeshRuntime::Export
            } else {
                MeshRuntime::Off
            },
        },
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sigma-api listening on http://{addr}");

    let mesh = Arc::new(mesh);
    let console_mesh = ConsoleMeshReports {
        store: store.clone(),
        mesh: mesh.clone(),
    };
    let app = router_with(
        store.clone(),
        cfg.max_body_bytes as usize,
        mesh,
        Arc::new(installer),
    )
    .merge(sigma_web::router_with_mesh(
        store.clone(),
        web,
        Some(Arc::new(console_mesh)),
    ));
    let grace = cfg.shutdown_grace;
    let stop = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
    });
    let served = tokio::select! {
        r = server => r.context("serving HTTP"),
        // Graceful shutdown waits for in-flight requests; a stuck client must not hold the
        // process (and the final heartbeat flush) hostage.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    store.close().await;
    tracing::info!("stopped");
    served
}

/// The console's mesh reports: the same diagnosis `GET /api/vps/{id}/mesh` answers (the
/// console has checked its user's session; the diagnosis needs no principal).
struct ConsoleMeshReports {
    store: Store,
    mesh: Arc<MeshState>,
}

impl sigma_web::MeshReports for ConsoleMeshReports {
    fn report<'a>(
        &'a self,
        _who: &'a sigma_store::Principal,
        id: uuid::Uuid,
    ) -> sigma_web::BoxFuture<'a, Result<sigma_types::mesh::VpsMeshReport, String>> {
        Box::pin(async move {
            self.mesh
                .diagnose(&self.store, id)
                .await
                .map_err(|e| e.message)
        })
    }

    fn route_plan(
        &self,
        id: uuid::Uuid,
    ) -> sigma_web::BoxFuture<'_, Result<sigma_types::RoutePlan, String>> {
        Box::pin(async move {
            routes::envoy::plan(&self.store, &self.mesh, id, sigma_types::PlanMode::Current)
                .await
                .map_err(|e| e.message)
        })
    }
}

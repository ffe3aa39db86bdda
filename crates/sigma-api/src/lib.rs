//! sigma-api: the fleet inventory HTTP service.
//!
//! [`router`] builds the whole HTTP interface over a [`sigma_store::Store`]; [`run`] is the
//! service's life: open the store, install the admin key, serve until shut down, then write
//! what is pending.

pub mod config;
pub mod error;
pub mod extract;
pub mod json;
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

/// The mesh registry as the handlers see it.
pub struct MeshState {
    /// Mode this replica runs in.
    pub mode: config::MeshMode,
    /// The template every object is generated from.
    pub template: sigma_mesh::MeshTemplate,
    /// The reconciler's counters and its API call counters (kubernetes mode only).
    pub reconciler: Option<(Arc<sigma_reconciler::Stats>, Arc<sigma_reconciler::Cluster>)>,
    /// Where Prometheus scrapes Envoy on mesh VPS.
    pub envoy_metrics: config::EnvoyMetricsVia,
    /// Istio bootstrap bundle issuance (kubernetes mode only).
    pub bootstrap: Option<Arc<sigma_reconciler::Bootstrap>>,
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState {
            mode: config::MeshMode::Off,
            template: sigma_mesh::MeshTemplate::default(),
            reconciler: None,
            envoy_metrics: config::EnvoyMetricsVia::Direct,
            bootstrap: None,
        }
    }
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
    let state = AppState {
        store,
        metrics: Arc::new(metrics::Metrics::default()),
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
    let bootstrap_settings = cfg
        .bootstrap_settings(&template)
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
    let mut mesh = MeshState {
        mode: mesh_mode,
        template: template.clone(),
        reconciler: None,
        envoy_metrics: cfg.prometheus_envoy_metrics,
        bootstrap: None,
    };
    if let Some(client) = kube_client {
        tracing::info!(
            istiod = %bootstrap_settings.control_plane.istiod_address(),
            mesh_config = %bootstrap_settings.control_plane.mesh_config_map(),
            eastwest = ?bootstrap_settings.eastwest_address,
            token_ttl = ?bootstrap_settings.token_ttl,
            "Istio bootstrap bundles"
        );
        mesh.bootstrap = Some(Arc::new(sigma_reconciler::Bootstrap::new(
            client.clone(),
            bootstrap_settings,
        )));
        mesh.reconciler = Some(spawn_reconciler(
            &cfg, &store, client, template, &tracker, &shutdown,
        ));
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sigma-api listening on http://{addr}");

    let mesh = Arc::new(mesh);
    let console_mesh = ConsoleMeshReports(AppState {
        store: store.clone(),
        metrics: Arc::default(),
        openapi: Arc::default(),
        mesh: mesh.clone(),
        targets: Arc::default(),
        installer: Arc::default(),
    });
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

/// The console's mesh reports: the handler of `GET /api/vps/{id}/mesh` itself, called with the
/// console user's principal (only the store and the mesh state of `AppState` are read).
struct ConsoleMeshReports(AppState);

impl sigma_web::MeshReports for ConsoleMeshReports {
    fn report<'a>(
        &'a self,
        who: &'a sigma_store::Principal,
        id: uuid::Uuid,
    ) -> sigma_web::BoxFuture<'a, Result<sigma_types::mesh::VpsMeshReport, String>> {
        Box::pin(async move {
            routes::mesh::vps_mesh(
                axum::extract::State(self.0.clone()),
                extract::Reader(who.clone()),
                extract::ApiPath(id.to_string()),
            )
            .await
            .map(|axum::Json(r)| r)
            .map_err(|e| e.message)
        })
    }
}

/// Starts the mesh reconciler and, unless disabled, the leader election that decides whether
/// this replica runs it. Both stop on `shutdown`.
fn spawn_reconciler(
    cfg: &Config,
    store: &Store,
    client: kube::Client,
    template: sigma_mesh::MeshTemplate,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> (Arc<sigma_reconciler::Stats>, Arc<sigma_reconciler::Cluster>) {
    use tracing::Instrument;
    let cluster = Arc::new(sigma_reconciler::Cluster::new(
        client.clone(),
        sigma_reconciler::ClusterSettings {
            namespace: template.namespace.clone(),
            qps: f64::from(cfg.mesh_api_qps),
            burst: cfg.mesh_api_burst,
            timeout: cfg.kube_timeout,
            ..sigma_reconciler::ClusterSettings::default()
        },
    ));
    let leadership = match cfg.mesh_leader_election {
        config::LeaderElection::Lease => sigma_reconciler::Leadership::Lease {
            client,
            settings: sigma_reconciler::LeaseSettings::new(
                &cfg.mesh_lease_name,
                &template.namespace,
            ),
        },
        config::LeaderElection::None => sigma_reconciler::Leadership::Always,
    };
    let (leader, hold) = leadership.start(shutdown.clone());
    if let Some(hold) = hold {
        tracker.spawn(hold.instrument(tracing::info_span!("mesh_leader_election")));
    }
    let reconciler = sigma_reconciler::Reconciler::new(
        store.clone(),
        cluster.clone(),
        sigma_reconciler::ReconcilerSettings {
            template,
            resync: cfg.mesh_resync_interval,
            ..sigma_reconciler::ReconcilerSettings::default()
        },
    );
    let stats = reconciler.stats.clone();
    tracker.spawn(
        reconciler
            .run(leader, shutdown.clone())
            .instrument(tracing::info_span!("mesh_reconciler")),
    );
    (stats, cluster)
}

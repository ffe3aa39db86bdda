//! The `sigma-agent` binary: configuration, logging, signals and wiring; the logic is in the
//! library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sigma_agent::{Cli, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGMA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::EnvoyBootstrap { node_id, admin }) = &cli.command {
        let node = node_id
            .clone()
            .or_else(|| cli.config.hostname.clone())
            .or_else(sigma_agent::host::hostname)
            .unwrap_or_else(|| "sigma-agent".into());
        println!(
            "{}",
            sigma_xds::bootstrap(cli.config.xds_listen, &node, "sigma-classic", *admin)
        );
        return ExitCode::SUCCESS;
    }
    // One thread: the agent mostly sleeps, and a small footprint matters on small VPS.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sigma-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sigma-agent failed");
            eprintln!("sigma-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let prepared = sigma_agent::prepare(cli.config)?;
    // Checked before anything starts, so a bad mesh setting is a clear error at once.
    let mesh_settings = if prepared.config.istio_enabled {
        Some(sigma_agent::mesh::MeshSettings::from_config(
            &prepared.config,
        )?)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let signals = shutdown.clone();
    tracker.spawn(
        async move {
            tokio::select! {
                _ = wait_for_signal() => {
                    tracing::info!("shutdown requested");
                    signals.cancel();
                }
                _ = signals.cancelled() => {}
            }
        }
        .instrument(tracing::info_span!("signals")),
    );

    let result = match mesh_settings {
        Some(settings) => run_mesh(prepared, settings, shutdown.clone(), &tracker).await,
        None => run_classic(prepared, shutdown.clone(), &tracker).await,
    };
    shutdown.cancel();
    tracker.close();
    // Every task stops within a few seconds; do not hang on one that does not.
    if tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5 s");
    }
    result
}

/// Mesh mode: pilot-agent and Envoy under istiod; no xDS server.
async fn run_mesh(
    prepared: sigma_agent::Prepared,
    settings: sigma_agent::mesh::MeshSettings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let metrics = Arc::new(sigma_agent::metrics::Metrics::with_mesh());
    let envoy_stats = settings.envoy_stats()?;
    tracing::info!(root = %settings.root.display(), pilot_agent = %settings.agent_path.display(), "mesh mode");
    let mesh = sigma_agent::mesh::Mesh::new(
        settings,
        prepared.client.clone(),
        prepared.hostname.clone(),
        prepared.state.clone(),
        metrics.clone(),
        shutdown.clone(),
        tracker.clone(),
    )?;
    sigma_agent::run(
        prepared,
        mesh,
        metrics,
        Some(envoy_stats),
        shutdown,
        tracker,
    )
    .await
    .map_err(Into::into)
}

/// Classic mode: the agent's xDS server feeds the local Envoy the routes from sigma-api.
async fn run_classic(
    prepared: sigma_agent::Prepared,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let xds = sigma_xds::XdsServer::new(sigma_xds::ResourceOptions {
        listen_address: prepared.config.route_listen_address,
    });
    let metrics = Arc::new(sigma_agent::metrics::Metrics::classic(&xds.handle()));
    let sink = Arc::new(sigma_agent::xds::XdsSink::new(xds.handle()));
    let addr = prepared.config.xds_listen;
    let stop = shutdown.clone();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("xDS listen {addr}: {e}"))?;
    tracing::info!(%addr, "xDS server listening");
    tracker.spawn(
        async move {
            if let Err(e) = xds.serve(listener, stop).await {
                tracing::error!(error = %e, "xDS server failed");
            }
        }
        .instrument(tracing::info_span!("xds_server")),
    );
    let classic = sigma_agent::classic::Classic::new(
        sink,
        prepared.client.clone(),
        prepared.hostname.clone(),
        prepared.config.max_backoff,
    );
    sigma_agent::run(prepared, classic, metrics, None, shutdown, tracker)
        .await
        .map_err(Into::into)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

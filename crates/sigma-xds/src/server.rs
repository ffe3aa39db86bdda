//! The gRPC side: the aggregated discovery service and the handle the agent publishes into.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sigma_types::{EnvoyRoute, NackReport, RouteEndpoint};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::Result;
use crate::resources::{ResourceOptions, Snapshot};
use crate::state::{AdsStream, RequestKind};
use crate::stats::{Stats, StatsSnapshot};

/// Responses queued per stream before the stream task waits for Envoy to read: a publish
/// queues at most two (CDS, LDS), so a few publishes fit.
const STREAM_QUEUE: usize = 8;

/// Largest request accepted from Envoy; requests are small, NACK details included.
const MAX_REQUEST_BYTES: usize = 4 << 20;

struct Shared {
    options: ResourceOptions,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    stats: Stats,
    next_stream: AtomicU64,
}

/// Cloneable handle to an [`XdsServer`]: publishes snapshots and reads the counters.
#[derive(Clone)]
pub struct XdsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsHandle")
            .field("options", &self.shared.options)
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl XdsHandle {
    /// Replaces the served routes with `routes` at `version` and pushes them to every
    /// connected Envoy (clusters, then listeners). Disabled routes are left out.
    ///
    /// A version names one set of routes: publishing the version a stream already has sends
    /// nothing to it.
    pub fn publish(&self, version: i64, routes: Vec<EnvoyRoute>) {
        self.publish_with(version, routes, BTreeMap::new());
    }

    /// [`XdsHandle::publish`] with the resolved addresses of fleet routes, by route name.
    pub fn publish_with(
        &self,
        version: i64,
        routes: Vec<EnvoyRoute>,
        endpoints: BTreeMap<String, Vec<RouteEndpoint>>,
    ) {
        let snapshot = Snapshot::build_with(version, &routes, &endpoints, &self.shared.options);
        tracing::info!(
            version,
            listeners = snapshot.listeners.len(),
            "xDS snapshot published"
        );
        self.shared.stats.published(version);
        // send_replace: the value is stored even while no stream is subscribed.
        self.shared.snapshot.send_replace(Some(Arc::new(snapshot)));
    }

    /// The snapshot being served, if one was published.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.shared.snapshot.borrow().clone()
    }

    /// Envoys connected (ADS streams open).
    pub fn clients(&self) -> u32 {
        self.shared.stats.clients()
    }

    /// Latest version Envoy ACKed on both listeners and clusters.
    pub fn accepted_version(&self) -> Option<i64> {
        self.shared.stats.accepted_version()
    }

    /// The last NACK, while no later ACK of its type has cleared it.
    pub fn last_nack(&self) -> Option<NackReport> {
        self.shared.stats.current_nack()
    }

    /// All counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Registers the server's Prometheus metrics (see [`crate::Stats::register`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.stats.register(registry);
    }
}

/// The ADS server. Its snapshot and counters live as long as any [`XdsHandle`], across
/// [`serve`](XdsServer::serve) calls.
#[derive(Debug, Clone)]
pub struct XdsServer {
    handle: XdsHandle,
}

impl XdsServer {
    /// A server with no snapshot yet: Envoys that connect wait for the first publish.
    pub fn new(options: ResourceOptions) -> Self {
        let (snapshot, _) = watch::channel(None);
        XdsServer {
            handle: XdsHandle {
                shared: Arc::new(Shared {
                    options,
                    snapshot,
                    stats: Stats::default(),
                    next_stream: AtomicU64::new(0),
                }),
            },
        }
    }

    /// The handle to publish with.
    pub fn handle(&self) -> XdsHandle {
        self.handle.clone()
    }

    /// Binds `addr` and serves until `cancel` is cancelled.
    pub async fn bind_and_serve(&self, addr: SocketAddr, cancel: CancellationToken) -> Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.serve(listener, cancel).await
    }

    /// Serves ADS on `listener` until `cancel` is cancelled, then ends every stream and
    /// waits for their tasks.
    pub async fn serve(&self, listener: TcpListener, cancel: CancellationToken) -> Result<()> {
        let addr = listener.local_addr()?;
        let tracker = TaskTracker::new();
        let ads = Ads {
            shared: self.handle.shared.clone(),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        };
        let service =
            AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(MAX_REQUEST_BYTES);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tracing::info!(%addr, "xDS server listening");
        let served = tonic::transport::Server::builder()
            .trace_fn(|req| tracing::debug_span!("xds_grpc", path = %req.uri().path()))
            .serve_with_incoming_shutdown(service, incoming, cancel.cancelled_owned())
            .await;
        tracker.close();
        tracker.wait().await;
        tracing::info!(%addr, "xDS server stopped");
        Ok(served?)
    }
}

struct Ads {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("ads_stream", id, peer = ?peer, node = tracing::field::Empty);
        self.tracker.spawn(
            run_stream(self.shared.clone(), inbound, tx, self.cancel.clone()).instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        // The bootstrap asks for state of the world (api_type GRPC); an Envoy configured for
        // delta gets a clear error instead of an empty config.
        Err(Status::unimplemented(
            "sigma-agent serves ADS state of the world only (api_type GRPC)",
        ))
    }
}

/// Counts the stream as a connected client for as long as it lives.
struct ClientGuard<'a>(&'a Stats);

impl<'a> ClientGuard<'a> {
    fn new(stats: &'a Stats) -> Self {
        stats.client_connected();
        ClientGuard(stats)
    }
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.0.client_disconnected();
    }
}

async fn run_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    cancel: CancellationToken,
) {
    let stats = &shared.stats;
    let _client = ClientGuard::new(stats);
    let mut snapshots = shared.snapshot.subscribe();
    let mut stream = AdsStream::new();
    tracing::info!("Envoy connected");
    loop {
        let responses = tokio::select! {
            _ = cancel.cancelled() => break,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Some(node) = &req.node {
                        tracing::Span::current().record("node", node.id.as_str());
                    }
                    // The latest snapshot, marked seen: on_request brings every subscribed
                    // type up to it, so the change notification would add nothing.
                    let snapshot = snapshots.borrow_and_update().clone();
                    let step = stream.on_request(&req, snapshot.as_deref());
                    record(stats, &step.type_url, &step.kind);
                    step.responses
                }
                Ok(None) => {
                    tracing::info!("Envoy closed the stream");
                    break;
                }
                Err(status) => {
                    tracing::info!(code = ?status.code(), message = status.message(), "ADS stream ended");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                snapshot.map(|s| stream.on_publish(&s)).unwrap_or_default()
            }
        };
        for response in responses {
            tracing::debug!(
                type_url = %response.type_url,
                version = %response.version_info,
                nonce = %response.nonce,
                resources = response.resources.len(),
                "push"
            );
            // Envoy may stop reading; shutdown must not wait on it.
            let sent = tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(Ok(response)) => sent,
            };
            if sent.is_err() {
                tracing::info!("Envoy went away");
                return;
            }
            stats.pushed();
        }
    }
}

fn record(stats: &Stats, type_url: &str, kind: &RequestKind) {
    match kind {
        RequestKind::Subscribe { known_version } => {
            tracing::info!(type_url, known_version = %known_version, "subscribed");
        }
        RequestKind::Ack { version } => {
            tracing::debug!(type_url, version = %version, "ACK");
            stats.ack(type_url, version);
        }
        RequestKind::Nack {
            rejected_version,
            kept_version,
            detail,
        } => {
            tracing::warn!(
                type_url,
                rejected_version = %rejected_version,
                kept_version = %kept_version,
                detail = %detail,
                "Envoy rejected the config (NACK); it keeps its last good config"
            );
            stats.nack(type_url, rejected_version, detail);
        }
        RequestKind::Stale { nonce } => {
            tracing::debug!(type_url, nonce = %nonce, "stale request ignored");
            stats.stale();
        }
        RequestKind::UnknownType => {
            tracing::warn!(
                type_url,
                "request for a type this server does not serve; ignored"
            );
        }
    }
}

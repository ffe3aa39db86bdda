//! Classic mode: the agent follows its VPS's Envoy routes in sigma-api (long poll) and hands
//! each new version to the local xDS server, which pushes it to Envoy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sigma_types::{AgentMode, AgentState, EnvoyRoute, NackReport, RouteEndpoint};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Result;
use crate::client::Client;
use crate::runner::{Desired, Managed};
use sigma_types::backoff::Backoff;

/// Where route snapshots go (the xDS server), and what it tells back.
pub trait RoutesSink: Send + Sync + 'static {
    /// Replaces the served routes.
    fn publish(
        &self,
        version: i64,
        routes: Vec<EnvoyRoute>,
        endpoints: BTreeMap<String, Vec<RouteEndpoint>>,
    );
    /// Envoys connected.
    fn clients(&self) -> u32;
    /// Latest version Envoy accepted (both listeners and clusters), if any.
    fn accepted_version(&self) -> Option<i64>;
    /// The last rejection, if the latest push was rejected.
    fn last_nack(&self) -> Option<NackReport>;
}

/// How long one long poll of the routes waits on sigma-api.
const LONG_POLL: Duration = Duration::from_secs(25);

/// The classic-mode manager.
pub struct Classic<S: RoutesSink> {
    sink: Arc<S>,
    client: Client,
    hostname: String,
    max_backoff: Duration,
    follower: Option<(CancellationToken, JoinHandle<()>)>,
}

impl<S: RoutesSink> Classic<S> {
    /// A manager publishing into `sink`.
    pub fn new(sink: Arc<S>, client: Client, hostname: String, max_backoff: Duration) -> Self {
        Classic {
            sink,
            client,
            hostname,
            max_backoff,
            follower: None,
        }
    }

    fn start(&mut self, key: String) {
        if self
            .follower
            .as_ref()
            .is_some_and(|(_, h)| !h.is_finished())
        {
            return;
        }
        let stop = CancellationToken::new();
        let (sink, client, hostname, max_backoff, token) = (
            self.sink.clone(),
            self.client.clone(),
            self.hostname.clone(),
            self.max_backoff,
            stop.clone(),
        );
        let handle = tokio::spawn(
            async move {
                let mut known: Option<i64> = None;
                let mut backoff = Backoff::new(Duration::from_millis(200), max_backoff);
                loop {
                    let poll = client.envoy_config(&key, &hostname, known, LONG_POLL);
                    let r = tokio::select! {
                        _ = token.cancelled() => return,
                        r = poll => r,
                    };
                    match r {
                        Ok(cfg) => {
                            backoff.reset();
                            if known != Some(cfg.version) {
                                tracing::info!(version = cfg.version, routes = cfg.routes.len(), "Envoy routes changed");
                                sink.publish(cfg.version, cfg.routes, cfg.endpoints);
                                known = Some(cfg.version);
                            }
                        }
                        Err(e) => {
                            // The last good routes keep being served while sigma-api is away.
                            tracing::warn!(error = %e, "fetching Envoy routes failed; serving the last ones");
                            tokio::select! {
                                _ = token.cancelled() => return,
                                _ = tokio::time::sleep(backoff.next_delay()) => {}
                            }
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("routes_follower")),
        );
        self.follower = Some((stop, handle));
    }

    async fn stop(&mut self) {
        if let Some((stop, handle)) = self.follower.take() {
            stop.cancel();
            let _ = handle.await;
        }
    }
}

impl<S: RoutesSink> Managed for Classic<S> {
    async fn apply(&mut self, run: bool, desired: &Desired) -> Result<()> {
        if run {
            self.start(desired.key.clone());
        } else {
            self.stop().await;
            // No listeners: Envoy stops forwarding, user traffic to these ports ends here.
            self.sink.publish(-1, Vec::new(), BTreeMap::new());
        }
        Ok(())
    }

    fn report(&self) -> AgentState {
        AgentState {
            mode: Some(AgentMode::Classic),
            envoy_applied_version: self.sink.accepted_version(),
            xds_clients: Some(self.sink.clients()),
            last_nack: self.sink.last_nack(),
            mesh_state: None,
            extra: Default::default(),
        }
    }
}

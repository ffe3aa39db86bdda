//! The classic-mode sink: routes go to the local xDS server (sigma-xds), which pushes them to
//! Envoy; its counters feed the agent's metrics.

use std::collections::BTreeMap;

use sigma_types::{EnvoyRoute, NackReport, RouteEndpoint};

use crate::classic::RoutesSink;
use crate::metrics::Metrics;

/// The xDS server's handle, mirrored into the agent's metrics.
pub struct XdsSink {
    handle: sigma_xds::XdsHandle,
    metrics: std::sync::Arc<Metrics>,
}

impl XdsSink {
    /// Wraps a handle.
    pub fn new(handle: sigma_xds::XdsHandle, metrics: std::sync::Arc<Metrics>) -> Self {
        XdsSink { handle, metrics }
    }

    /// Copies the xDS server's counters into the agent's metrics.
    pub fn sync_metrics(&self) {
        let s = self.handle.stats();
        self.metrics.xds_clients.set(i64::from(s.clients));
        self.metrics
            .xds_config_version
            .set(s.version_served.unwrap_or(0));
        let pushed = self.metrics.xds_pushes.get();
        if s.pushes > pushed {
            self.metrics.xds_pushes.inc_by(s.pushes - pushed);
        }
        let nacked = self.metrics.xds_nacks.get();
        if s.nacks > nacked {
            self.metrics.xds_nacks.inc_by(s.nacks - nacked);
        }
    }
}

impl RoutesSink for XdsSink {
    fn publish(
        &self,
        version: i64,
        routes: Vec<EnvoyRoute>,
        endpoints: BTreeMap<String, Vec<RouteEndpoint>>,
    ) {
        self.handle.publish_with(version, routes, endpoints);
        self.sync_metrics();
    }

    fn clients(&self) -> u32 {
        self.sync_metrics();
        self.handle.clients()
    }

    fn accepted_version(&self) -> Option<i64> {
        self.handle.accepted_version()
    }

    fn last_nack(&self) -> Option<NackReport> {
        self.handle.last_nack()
    }
}

//! The classic-mode sink: routes go to the local xDS server (sigma-xds), which pushes them to
//! Envoy. The server's counters are in the agent's registry already
//! ([`crate::metrics::Metrics::classic`]).

use std::collections::BTreeMap;

use sigma_types::{EnvoyRoute, NackReport, RouteEndpoint};

use crate::classic::RoutesSink;

/// The xDS server's handle.
pub struct XdsSink {
    handle: sigma_xds::XdsHandle,
}

impl XdsSink {
    /// Wraps a handle.
    pub fn new(handle: sigma_xds::XdsHandle) -> Self {
        XdsSink { handle }
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
    }

    fn clients(&self) -> u32 {
        self.handle.clients()
    }

    fn accepted_version(&self) -> Option<i64> {
        self.handle.accepted_version()
    }

    fn last_nack(&self) -> Option<NackReport> {
        self.handle.last_nack()
    }
}

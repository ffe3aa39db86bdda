//! The xDS server sigma-agent runs in classic mode to drive the VPS's local Envoy.
//!
//! The agent fetches the VPS's Envoy routes from sigma-api and hands each version to
//! [`XdsHandle::publish`]. [`XdsServer`] serves them to Envoy over ADS (the aggregated
//! discovery service, state of the world): per active route one TCP-proxy listener (LDS) and
//! one cluster (CDS). Every connected Envoy gets a new snapshot pushed at once, clusters before
//! listeners. ACKs and NACKs are tracked per stream and type; a NACK is logged with Envoy's
//! error detail and kept for the agent to report ([`XdsHandle::last_nack`]), while Envoy keeps
//! its last good config and the next publish is pushed as usual.
//!
//! [`bootstrap`] writes the Envoy bootstrap that points Envoy's ADS at this server.

mod bootstrap;
mod resources;
mod server;
mod state;
mod stats;

pub use bootstrap::bootstrap;
pub use resources::{
    CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ResourceOptions, Snapshot, build_cluster, build_listener,
    resource_name,
};
pub use server::{XdsHandle, XdsServer};
pub use state::{AdsStream, RequestKind, Step};
pub use stats::{MAX_NACK_DETAIL_CHARS, Stats, StatsSnapshot};

/// What can go wrong serving xDS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or inspecting the listening socket failed.
    #[error("xDS listen socket: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server stopped with an error.
    #[error("xDS gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

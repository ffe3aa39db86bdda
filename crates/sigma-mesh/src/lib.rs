//! sigma's Istio model: from the inventory (purposes with their `mesh` settings, VPS) to the
//! Istio objects (`networking.istio.io/v1`) that put each VPS into the mesh as a workload Kiali
//! can show, and from desired and actual objects to the writes that reconcile them.
//!
//! Everything here is pure: no network, no files, no Kubernetes client. The storage layer maps
//! its rows onto [`MeshPurpose`] and [`MeshVps`]; a reconciler reads the cluster, decodes with
//! [`MeshObject::from_json`], and applies the [`Plan`] returned by [`diff`].
//!
//! * [`desired_state`] — ServiceEntry and Sidecar (egress listeners for what the purpose
//!   calls, ingress listeners for the ports it serves) per mesh-enabled purpose, DestinationRule
//!   (ISTIO_MUTUAL) per called service, and per meshed VPS a WorkloadEntry and a WorkloadGroup
//!   of the same name (the workload Kiali lists, holding exactly that entry).
//! * [`desired_state_with_routes`] — the same with the fleet's Envoy routes: routes of meshed
//!   VPS become Istio configuration ([`routes`]); [`plan_routes`] says where routes run, or
//!   would run after a switch to mesh mode.
//! * [`diff`] — apply/delete plan, zero writes in steady state, never touching objects sigma
//!   does not manage.
//! * [`to_yaml`] — deterministic multi-document YAML for GitOps.
//! * [`MeshSettings::from_json`] — parsing and validation of a purpose's `mesh` object with
//!   errors per field path.
//! * [`bundle`] — a VPS's Istio bootstrap bundle (`cluster.env`, `mesh.yaml`, `hosts`) from
//!   its WorkloadEntry and what was read from the cluster.

pub mod bundle;
mod diff;
pub mod ingress;
pub mod model;
pub mod names;
pub mod objects;
pub mod routes;
pub mod settings;
mod yaml;

use std::fmt;

pub use diff::{Plan, diff, up_to_date};
pub use ingress::{IngressBinding, ingress_bindings};
pub use model::{
    DesiredState, EgressBinding, MeshPurpose, MeshVps, SkipReason, SkippedVps, desired_state,
    desired_state_with_routes, egress_bindings, plan_routes, select_address,
};
pub use objects::{Kind, MeshObject, ObjectKey, check_object};
pub use routes::{Placement, RouteIssue, RoutePlacement};
pub use settings::{
    Egress, Interception, MeshSettings, MeshTemplate, NetworkMode, Probe, Protocol, ServicePort,
};
pub use sigma_types::FieldErrors;
pub use yaml::to_yaml;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh template is invalid.
    #[error("invalid mesh template: {}", Fields(.0))]
    InvalidTemplate(FieldErrors),
    /// A purpose's name or mesh settings are invalid.
    #[error("purpose {purpose:?} has invalid mesh settings: {}", Fields(.errors))]
    InvalidPurpose {
        /// The purpose.
        purpose: String,
        /// Problems by field.
        errors: FieldErrors,
    },
    /// The same purpose name appears twice in the input.
    #[error("purpose {0:?} is listed twice")]
    DuplicatePurpose(String),
    /// An object read from the cluster is not one sigma manages.
    #[error("unsupported object: {0}")]
    UnsupportedObject(String),
    /// An object read from the cluster does not decode.
    #[error("cannot decode {kind}: {reason}")]
    Decode {
        /// Its kind.
        kind: Kind,
        /// The decoder's message.
        reason: String,
    },
    /// YAML encoding failed.
    #[error("cannot encode YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    /// The model produced an object that breaks an Istio rule (a bug in this crate).
    #[error("internal error: {0}")]
    Internal(String),
    /// A VPS gets no mesh proxy (not active, opted out, its purpose not mesh-enabled, no
    /// usable address), so it has no bootstrap bundle.
    #[error("{0}")]
    NotMeshed(String),
    /// An object read from the cluster holds data a bootstrap bundle cannot be made from.
    #[error("{what}: {reason}")]
    BadClusterData {
        /// The object and key (`ConfigMap istio-system/istio key mesh`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats field errors as `field: reason; field: reason`.
struct Fields<'a>(&'a FieldErrors);

impl fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if k.is_empty() {
                f.write_str(v)?;
            } else {
                write!(f, "{k}: {v}")?;
            }
        }
        Ok(())
    }
}

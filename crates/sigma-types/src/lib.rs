//! Shared types of sigma: the JSON bodies of sigma-api, the enums they use, and the input
//! validation every component applies to data that comes from outside.
//!
//! Everything here is pure (no I/O), so the storage layer, the HTTP service, the agent and the
//! CLI agree on one definition of "a valid hostname" or "a valid country".

pub mod api;
pub mod backoff;
pub mod cert;
pub mod contract;
pub mod costs;
pub mod country;
pub mod envoy;
pub mod mesh;
pub mod money;
pub mod patch;
pub mod records;
pub mod route_plan;
pub mod route_target;
pub mod validate;

pub use api::*;
pub use contract::{
    BillingCycle, ContractFilter, Day, VpsContract, VpsContractPatch, VpsListQuery,
};
pub use envoy::*;
pub use money::{Amount, Rate};
pub use route_plan::{
    PlanMode, RouteIssueReport, RouteListener, RoutePlan, RoutePlanEntry, RouteRuns,
};
pub use route_target::*;
pub use validate::{FieldErrors, Normalize};

//! HTTP handlers, grouped by resource.

pub mod admin;
pub mod agent;
pub mod bundle;
pub mod costs;
pub mod envoy;
pub mod export;
pub mod install;
pub mod inventory;
pub mod mesh;
pub mod prometheus;
pub mod renewals;
pub mod system;

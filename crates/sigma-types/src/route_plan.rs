//! Where a VPS's Envoy routes run — sigma-agent's own Envoy (classic mode) or the
//! istiod-managed Envoy (mesh mode) — and what the mesh cannot carry, per route: the answer of
//! `GET /api/vps/{id}/envoy-routes/plan` and `sigmactl routes plan`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Which mode a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanMode {
    /// The mode the VPS's agent reports now.
    Current,
    /// As if the VPS ran in mesh mode.
    Mesh,
    /// As if the VPS ran in classic mode.
    Classic,
}

impl PlanMode {
    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanMode::Current => "current",
            PlanMode::Mesh => "mesh",
            PlanMode::Classic => "classic",
        }
    }
}

/// Where a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteRuns {
    /// sigma-agent's Envoy, from sigma-api's routes (classic mode).
    Classic,
    /// The istiod-managed Envoy, from the Istio objects sigma renders (mesh mode).
    Mesh,
    /// Mesh mode, but the mesh cannot carry it: the route does not forward.
    NotCarried,
}

impl RouteRuns {
    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteRuns::Classic => "classic",
            RouteRuns::Mesh => "mesh",
            RouteRuns::NotCarried => "not_carried",
        }
    }
}

/// Whether a route's listener is live on the VPS now, from its agent's last report (plans for
/// the current mode only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RouteListener {
    /// Forwarding: in mesh mode Envoy has a listener bound at the route's address and port; in
    /// classic mode Envoy accepted the routes version that has it.
    Live,
    /// Not forwarding yet (or any more): the reason says what the agent reported.
    NotLive {
        /// What is missing.
        reason: String,
    },
    /// The agent's report does not say (no report, an older agent, Envoy's listeners not
    /// readable, or more listeners than one report lists).
    Unknown {
        /// Why.
        reason: String,
    },
}

impl RouteListener {
    /// The serialized state name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteListener::Live => "live",
            RouteListener::NotLive { .. } => "not_live",
            RouteListener::Unknown { .. } => "unknown",
        }
    }
}

/// Something the mesh cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteIssueReport {
    /// Stable code: `vps_not_meshed`, `proxy_protocol_to_fleet`, `reserved_port`,
    /// `egress_port`, `ingress_port`, `target_not_meshed`, `target_port`, `many_countries`,
    /// `invalid`.
    pub code: String,
    /// What it means for this route.
    pub message: String,
}

/// One active route in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoutePlanEntry {
    /// The route.
    pub route_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its listen port.
    pub listen_port: u16,
    /// Where it forwards to, as shown in lists.
    pub upstream: String,
    /// Where it runs.
    pub runs: RouteRuns,
    /// Mesh mode: the route's mesh service host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_host: Option<String>,
    /// Mesh mode: the address the listener binds (with `listen_port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    /// Plans for the current mode: whether its listener is live now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<RouteListener>,
    /// Why the mesh cannot carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<RouteIssueReport>,
}

/// Where a VPS's active routes run in a mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoutePlan {
    /// The VPS.
    pub vps_id: Uuid,
    /// Its hostname.
    pub hostname: String,
    /// The mode asked about.
    pub mode: PlanMode,
    /// The mode its agent reports now (`classic` when it reports none).
    pub agent_mode: crate::AgentMode,
    /// sigma-api's mesh mode (`off`, `export`, `kubernetes`): with `off` nothing renders the
    /// routes' Istio configuration.
    pub mesh_registrar: String,
    /// Its active routes, by listen port.
    pub routes: Vec<RoutePlanEntry>,
}

impl RoutePlan {
    /// Routes that would not forward in this mode.
    pub fn not_carried(&self) -> usize {
        self.routes
            .iter()
            .filter(|r| r.runs == RouteRuns::NotCarried)
            .count()
    }
}

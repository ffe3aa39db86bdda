//! The `route-listeners` link: whether each active Envoy route (relay hop) of the VPS is carried
//! in its mode and its listener is live, from the route plan.

use sigma_types::{AgentMode, RouteListener, RoutePlan, RoutePlanEntry, RouteRuns};

use super::{Inputs, Link, LinkKind, failed, ok, warning};

/// Whether every active route of the VPS forwards now, each named `name:port`.
pub(super) fn route_listeners(i: &Inputs<'_>, plan: &RoutePlan) -> Link {
    let k = LinkKind::RouteListeners;
    let h = &i.vps.hostname;
    if plan.routes.is_empty() {
        return ok(k, "no active routes");
    }
    let named = |rs: &[&RoutePlanEntry]| {
        rs.iter()
            .map(|r| format!("{}:{}", r.name, r.listen_port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let not_carried: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| r.runs == RouteRuns::NotCarried)
        .collect();
    if !not_carried.is_empty() {
        return failed(
            k,
            format!(
                "not carried in mesh mode, so not forwarding: {} ({})",
                named(&not_carried),
                not_carried
                    .iter()
                    .flat_map(|r| r.issues.iter().map(|x| x.message.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "`sigmactl routes plan {h} --mode mesh` says what each needs; fix the route or its target, or run {h} in classic mode"
            ),
        );
    }
    let not_live: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| matches!(r.listener, Some(RouteListener::NotLive { .. })))
        .collect();
    if !not_live.is_empty() {
        let why = not_live
            .iter()
            .filter_map(|r| match &r.listener {
                Some(RouteListener::NotLive { reason }) => Some(format!("{}: {reason}", r.name)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ");
        let fix = match plan.agent_mode {
            AgentMode::Mesh => format!(
                "istiod builds each from the VPS's Sidecar (`sigmactl mesh export`, `kubectl -n sigma get sidecar -o yaml`); on {h} `ss -ltnp` shows what holds a port"
            ),
            AgentMode::Classic => format!(
                "check the Envoy of {h} is running and connected to sigma-agent's xDS (the VPS's agent_state: xds_clients, last_nack)"
            ),
        };
        return failed(k, format!("not live: {why}"), fix);
    }
    let unknown: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| !matches!(r.listener, Some(RouteListener::Live)))
        .collect();
    if let Some(first) = unknown.first() {
        let why = match &first.listener {
            Some(RouteListener::Unknown { reason }) => reason.clone(),
            _ => "the plan does not say".to_string(),
        };
        return warning(
            k,
            format!("unknown for {}: {why}", named(&unknown)),
            "see the agent heartbeat and proxy links",
        );
    }
    let all: Vec<_> = plan.routes.iter().collect();
    ok(
        k,
        format!(
            "{} route(s) live in {} mode: {}",
            all.len(),
            match plan.agent_mode {
                AgentMode::Mesh => "mesh",
                AgentMode::Classic => "classic",
            },
            named(&all)
        ),
    )
}

//! Chains: the relay chains the Envoy routes define. A route on VPS A whose backend is another
//! VPS B (by hostname or one of B's addresses) makes A forward to B; following the routes from
//! a VPS no other VPS forwards to (the entry) through relays to the last VPS (the exit) gives a
//! chain. Chains are grouped by the entry's purpose and the exit's country (where the traffic
//! leaves), and every hop shows whether its route is live and its target healthy.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::State;
use maud::{Markup, html};
use sigma_store::console::{ChainRoutes, ChainVps, MAX_CHAIN_ROUTES};
use sigma_types::{EnvoyRoute, RouteStatus, RouteTarget, Upstream, VpsStatus};
use uuid::Uuid;

use crate::Web;
use crate::auth::Signed;
use crate::error::WebResult;
use crate::layout::{self, Section};

/// Longest chain followed (a loop of routes stops here too).
const MAX_HOPS: usize = 8;

/// Where a hop's route sends traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A VPS of the inventory.
    Vps(Uuid),
    /// A host that is not a live VPS (the exit's own service, or something outside sigma).
    External(String),
    /// A pool of a purpose's VPS (`pool vpn-exit:vpn (DE)`), resolved when forwarding.
    Pool(String),
    /// A VPS already on this chain: the routes form a loop.
    Loop(Uuid),
}

/// One hop: a route on a VPS and where it leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// The VPS the route runs on.
    pub vps: Uuid,
    /// The route.
    pub route: Uuid,
    /// Where it leads.
    pub target: Target,
}

/// A chain from an entry VPS along routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The hops, entry first.
    pub hops: Vec<Hop>,
}

impl Chain {
    /// The last VPS traffic reaches: the final hop's target VPS, else the VPS the final hop
    /// runs on.
    pub fn exit(&self) -> Option<Uuid> {
        let last = self.hops.last()?;
        Some(match last.target {
            Target::Vps(v) => v,
            _ => last.vps,
        })
    }
}

/// The chains `c` defines: every path from an entry (a VPS with routes that no route of
/// another VPS leads to) along routes, one chain per path. A VPS reached by another's route
/// only continues the chains through it; a loop ends the chain at the repeated VPS.
pub fn build(c: &ChainRoutes) -> Vec<Chain> {
    let mut by_host: HashMap<&str, Uuid> = HashMap::new();
    for v in &c.vps {
        by_host.insert(v.hostname.as_str(), v.id);
        for ip in &v.ips {
            by_host.entry(ip.as_str()).or_insert(v.id);
        }
    }
    let mut routes_of: HashMap<Uuid, Vec<&EnvoyRoute>> = HashMap::new();
    for r in &c.routes {
        routes_of.entry(r.vps_id).or_default().push(r);
    }
    let target_of = |r: &EnvoyRoute| {
        match &r.upstream {
            Upstream::Backend { backend_host, .. } => by_host.get(backend_host.as_str()).copied(),
            Upstream::Target {
                target: RouteTarget::Vps { vps_id, .. },
            } => Some(*vps_id),
            Upstream::Target { .. } => None,
        }
        .filter(|t| *t != r.vps_id)
    };
    let reached: HashSet<Uuid> = c.routes.iter().filter_map(target_of).collect();
    let mut entries: Vec<Uuid> = routes_of
        .keys()
        .copied()
        .filter(|v| !reached.contains(v))
        .collect();
    let name = |id: &Uuid| {
        c.vps
            .iter()
            .find(|v| v.id == *id)
            .map(|v| v.hostname.clone())
            .unwrap_or_default()
    };
    entries.sort_by_key(name);
    let mut out = Vec::new();
    for e in entries {
        walk(e, &mut Vec::new(), &routes_of, &target_of, &mut out);
    }
    out
}

fn walk<'a>(
    at: Uuid,
    path: &mut Vec<Hop>,
    routes_of: &HashMap<Uuid, Vec<&'a EnvoyRoute>>,
    target_of: &dyn Fn(&EnvoyRoute) -> Option<Uuid>,
    out: &mut Vec<Chain>,
) {
    let Some(routes) = routes_of.get(&at) else {
        out.push(Chain { hops: path.clone() });
        return;
    };
    for r in routes {
        let target = match target_of(r) {
            Some(t) if t == at || path.iter().any(|h| h.vps == t) => Target::Loop(t),
            Some(t) => Target::Vps(t),
            None => match &r.upstream {
                Upstream::Backend { backend_host, .. } => Target::External(backend_host.clone()),
                u @ Upstream::Target { .. } => Target::Pool(u.to_string()),
            },
        };
        path.push(Hop {
            vps: at,
            route: r.id,
            target: target.clone(),
        });
        match target {
            Target::Vps(t) if path.len() < MAX_HOPS && routes_of.contains_key(&t) => {
                walk(t, path, routes_of, target_of, out);
            }
            _ => out.push(Chain { hops: path.clone() }),
        }
        path.pop();
    }
}

/// A VPS's health as a chain's target: what is wrong, or `None` when it is healthy.
fn unhealthy(v: &ChainVps, silent_after: Duration, now_ms: i64) -> Option<String> {
    if v.status != VpsStatus::Active {
        return Some(v.status.as_str().to_string());
    }
    let limit = i64::try_from(silent_after.as_millis()).unwrap_or(i64::MAX);
    match v.last_heartbeat_ms {
        None => Some("never heard from".into()),
        Some(t) if now_ms.saturating_sub(t) > limit => {
            Some(format!("silent for {} s", (now_ms - t) / 1000))
        }
        _ => None,
    }
}

/// `GET /chains`.
pub async fn page(State(web): State<Web>, Signed(s): Signed) -> WebResult<maud::Markup> {
    let c = web.store.chain_routes().await?;
    let chains = build(&c);
    let vps: HashMap<Uuid, &ChainVps> = c.vps.iter().map(|v| (v.id, v)).collect();
    let routes: HashMap<Uuid, &EnvoyRoute> = c.routes.iter().map(|r| (r.id, r)).collect();
    let now = sigma_store::db::now_ms();
    let silent = web.settings.silent_after;
    // Groups: (entry purpose, exit country), in name order.
    let mut groups: Vec<((String, String), Vec<&Chain>)> = Vec::new();
    for ch in &chains {
        let purpose = ch
            .hops
            .first()
            .and_then(|h| vps.get(&h.vps))
            .map(|v| v.purpose.clone())
            .unwrap_or_default();
        let country = ch
            .exit()
            .and_then(|x| vps.get(&x))
            .and_then(|v| v.country.clone())
            .unwrap_or_else(|| "(no country)".into());
        let key = (purpose, country);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(ch),
            None => groups.push((key, vec![ch])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let vps_link = |id: &Uuid| -> Markup {
        match vps.get(id) {
            Some(v) => html! { a href={ "/vps/" (v.id) } { (v.hostname) } },
            None => html! { span.mono { (id) } },
        }
    };
    let body = html! {
        h1 { "Relay chains" }
        p.hint { "A route whose backend is another VPS (by hostname or address) forwards to it. Chains run from an entry VPS through relays to an exit, grouped by the entry's purpose and the exit's country." }
        @if c.truncated { p.notice { "Only the first " (MAX_CHAIN_ROUTES) " routes are shown." } }
        @if chains.is_empty() {
            p.empty { "No routes yet, so no chains. Add a route on a VPS page (Routes → Add route) with another VPS's address as its backend to link them." }
        }
        @for ((purpose, country), list) in &groups {
            section.card.chain-group {
                h2 { (purpose) " → " (country) " (" (list.len()) ")" }
                ol.chains { @for ch in list {
                    li.chain {
                        @for (i, h) in ch.hops.iter().enumerate() {
                            @let r = routes.get(&h.route);
                            @if i == 0 { span.hop-vps { (vps_link(&h.vps)) } }
                            span.hop {
                                @if let Some(r) = r {
                                    @let live = r.status == RouteStatus::Active && vps.get(&h.vps).is_some_and(|v| v.status == VpsStatus::Active);
                                    " — " span.mono { (r.name) ":" (r.listen_port) }
                                    @if live { span.badge.doctor-ok title="route active on an active VPS" { "live" } }
                                    @else if r.status != RouteStatus::Active { span.badge.doctor-failed { "route disabled" } }
                                    @else { span.badge.doctor-failed { "VPS not active" } }
                                    "→ "
                                }
                                @match &h.target {
                                    Target::Vps(t) => {
                                        (vps_link(t))
                                        @match vps.get(t).and_then(|v| unhealthy(v, silent, now)) {
                                            None => span.badge.doctor-ok { "healthy" },
                                            Some(why) => span.badge.doctor-failed { (why) },
                                        }
                                    }
                                    Target::Loop(t) => { (vps_link(t)) span.badge.doctor-warning { "loop" } }
                                    Target::External(_) => {
                                        span.mono { @if let Some(r) = r { (r.upstream.to_string()) } }
                                        span.badge title="not a VPS of the inventory; its health is not known here" { "outside" }
                                    }
                                    Target::Pool(pool) => {
                                        span.mono { (pool) }
                                        span.badge title="every active VPS of the purpose whose agent is heard from" { "pool" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page("Chains", Section::Chains, &s, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_types::{ClusterType, ProxyProtocol};
    use time::OffsetDateTime;

    fn vps(n: u128, host: &str, ip: &str) -> ChainVps {
        ChainVps {
            id: Uuid::from_u128(n),
            hostname: host.into(),
            purpose: "vpn-entry".into(),
            country: Some("DE".into()),
            status: VpsStatus::Active,
            last_heartbeat_ms: Some(0),
            ips: vec![ip.into()],
        }
    }

    fn route(n: u128, on: u128, backend: &str) -> EnvoyRoute {
        EnvoyRoute {
            id: Uuid::from_u128(1000 + n),
            vps_id: Uuid::from_u128(on),
            name: format!("r{n}"),
            listen_port: 443,
            upstream: Upstream::Backend {
                backend_host: backend.into(),
                backend_port: 443,
                cluster_type: ClusterType::Static,
            },
            connect_timeout_ms: 5000,
            proxy_protocol: ProxyProtocol::None,
            status: RouteStatus::Active,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn routes_make_entry_relay_exit_chains() {
        // entry(1) → relay(2) by address → exit(3) by hostname → its own service; a second
        // entry(4) → exit(3) directly; a loop 5 ↔ 6 (neither is an entry, so no chain).
        let c = ChainRoutes {
            routes: vec![
                route(1, 1, "10.0.0.2"),
                route(2, 2, "exit.example.net"),
                route(3, 3, "127.0.0.1"),
                route(4, 4, "10.0.0.3"),
                route(5, 5, "10.0.0.6"),
                route(6, 6, "10.0.0.5"),
            ],
            vps: vec![
                vps(1, "entry.example.net", "10.0.0.1"),
                vps(2, "relay.example.net", "10.0.0.2"),
                vps(3, "exit.example.net", "10.0.0.3"),
                vps(4, "entry2.example.net", "10.0.0.4"),
                vps(5, "a.example.net", "10.0.0.5"),
                vps(6, "b.example.net", "10.0.0.6"),
            ],
            truncated: false,
        };
        let chains = build(&c);
        let vps_path = |ch: &Chain| -> Vec<u128> {
            let mut p: Vec<u128> = ch.hops.iter().map(|h| h.vps.as_u128()).collect();
            if let Target::Vps(t) = ch.hops.last().unwrap().target {
                p.push(t.as_u128());
            }
            p
        };
        let paths: Vec<Vec<u128>> = chains.iter().map(vps_path).collect();
        assert_eq!(paths, vec![vec![1, 2, 3], vec![4, 3]], "{chains:?}");
        assert_eq!(
            chains[0].hops[2].target,
            Target::External("127.0.0.1".into())
        );
        assert_eq!(chains[0].exit(), Some(Uuid::from_u128(3)));
        // A loop reachable from an entry ends at the repeated VPS.
        let mut c2 = c.clone();
        c2.routes.push(route(7, 7, "10.0.0.5"));
        c2.vps.push(vps(7, "c.example.net", "10.0.0.7"));
        let chains = build(&c2);
        let looped = chains
            .iter()
            .find(|ch| ch.hops[0].vps == Uuid::from_u128(7))
            .unwrap();
        assert_eq!(
            looped.hops.last().unwrap().target,
            Target::Loop(Uuid::from_u128(5))
        );
    }

    #[test]
    fn targets_are_healthy_only_when_active_and_heard_from() {
        let mut v = vps(1, "x", "10.0.0.1");
        let quiet = Duration::from_secs(90);
        v.last_heartbeat_ms = Some(100_000);
        assert_eq!(unhealthy(&v, quiet, 150_000), None);
        assert!(unhealthy(&v, quiet, 500_000).unwrap().contains("silent"));
        v.status = VpsStatus::Retired;
        assert_eq!(unhealthy(&v, quiet, 150_000).as_deref(), Some("retired"));
    }
}

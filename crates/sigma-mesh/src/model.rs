//! From the inventory to the desired set of Istio objects.
//!
//! Addresses and names (egress listeners, a VPS's address, locality and network, object names
//! and labels) are in the submodule `addressing`. The rest stays one file (about 780 lines)
//! because it is one computation: purposes prepared once, then each VPS's objects, then the
//! routes, all sharing the prepared purposes and the per-computation cache.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use sigma_types::{EnvoyRoute, IpAddress, Normalize, VpsStatus};
use uuid::Uuid;

use crate::ingress::{IngressBinding, ingress_bindings, ingress_listeners};
use crate::names;
use crate::objects::*;
use crate::routes::{self, Meshed, Placement, RoutePlacement};
use crate::settings::{MeshSettings, MeshTemplate, NetworkMode, Probe};
use crate::{Error, Result};

mod addressing;

pub use addressing::*;

/// A purpose as the mesh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPurpose {
    /// DNS-1123 label; the `app` of its workloads.
    pub name: String,
    /// Its `mesh` object.
    pub settings: MeshSettings,
}

/// A VPS as the mesh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshVps {
    /// Inventory id.
    pub id: Uuid,
    /// Hostname.
    pub hostname: String,
    /// Lifecycle status; only active VPS join the mesh.
    pub status: VpsStatus,
    /// Purpose name.
    pub purpose: String,
    /// Provider name.
    pub provider: Option<String>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Addresses with their labels (`public`, `private`, …).
    pub ip_addresses: Vec<IpAddress>,
    /// Kept out of the mesh by the operator.
    pub mesh_opt_out: bool,
}

/// Why a VPS that should be in the mesh has no WorkloadEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// None of its addresses can be an endpoint (none, unparsable, loopback, link-local, …).
    NoUsableAddress,
    /// Its purpose is not among the purposes given.
    UnknownPurpose(String),
    /// Its object name is already taken by another VPS (only possible through a hash
    /// collision of two hostnames that clean to the same name).
    NameCollision {
        /// The contested name.
        name: String,
        /// The VPS that kept it (the one with the smaller id).
        with: Uuid,
    },
    /// Another VPS in the input has the same id.
    DuplicateId,
    /// The generated entry breaks an Istio rule (a bug in the model; reported, not applied).
    Invalid(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NoUsableAddress => f.write_str("no address usable as a mesh endpoint"),
            SkipReason::UnknownPurpose(p) => write!(f, "unknown purpose {p:?}"),
            SkipReason::NameCollision { name, with } => {
                write!(f, "object name {name:?} is already used by VPS {with}")
            }
            SkipReason::DuplicateId => f.write_str("id listed twice"),
            SkipReason::Invalid(r) => write!(f, "generated entry is invalid: {r}"),
        }
    }
}

/// A VPS left out of the mesh although it qualifies, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedVps {
    /// Its id.
    pub id: Uuid,
    /// Its hostname.
    pub hostname: String,
    /// Why.
    pub reason: SkipReason,
}

/// The objects the mesh should hold, plus the VPS that could not be represented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Every object, sorted by kind then name.
    pub objects: Vec<MeshObject>,
    /// Active, mesh-enabled, not opted-out VPS without a WorkloadEntry, sorted by id.
    pub skipped: Vec<SkippedVps>,
    /// Every active route given, and where it runs, by VPS id then listen port.
    pub routes: Vec<RoutePlacement>,
}

/// A mesh-enabled purpose with everything its objects are made from computed once.
pub(crate) struct Prepared<'a> {
    pub(crate) name: &'a str,
    pub(crate) settings: MeshSettings,
    service_account: String,
    /// The purpose's part of each of its VPS's WorkloadGroups: template and probe.
    group: WorkloadGroupSpec,
    /// Mesh-facing listeners of its ports.
    pub(crate) ingress: Vec<IngressBinding>,
    /// The WorkloadEntry `ports` of each of its VPS: port name → mesh-facing port.
    entry_ports: BTreeMap<String, u32>,
}

/// Mesh-enabled purposes by name, and the names of the disabled ones.
type PreparedPurposes<'a> = (HashMap<&'a str, Prepared<'a>>, HashSet<&'a str>);

/// Validates the template and every purpose and prepares the enabled ones; fails on the first
/// purpose that cannot be read (see [`desired_state`]).
fn prepare<'a>(
    template: &MeshTemplate,
    purposes: &'a [MeshPurpose],
) -> Result<PreparedPurposes<'a>> {
    template.validate().map_err(Error::InvalidTemplate)?;
    let mut prepared: HashMap<&str, Prepared<'_>> = HashMap::with_capacity(purposes.len());
    let mut disabled: HashSet<&str> = HashSet::new();
    for p in purposes {
        if !names::is_dns_label(&p.name) {
            let mut errors = sigma_types::FieldErrors::new();
            errors.add("name", "must be a DNS-1123 label");
            return Err(Error::InvalidPurpose {
                purpose: p.name.clone(),
                errors,
            });
        }
        if prepared.contains_key(p.name.as_str()) || disabled.contains(p.name.as_str()) {
            return Err(Error::DuplicatePurpose(p.name.clone()));
        }
        if !p.settings.enabled {
            disabled.insert(&p.name);
            continue;
        }
        let settings = p
            .settings
            .clone()
            .normalize()
            .map_err(|errors| Error::InvalidPurpose {
                purpose: p.name.clone(),
                errors,
            })?;
        let service_account = settings
            .service_account
            .clone()
            .unwrap_or_else(|| template.service_account.clone());
        let group = group_template(template, &settings, &service_account);
        let ingress = ingress_bindings(&settings, template.health_port).map_err(|errors| {
            Error::InvalidPurpose {
                purpose: p.name.clone(),
                errors,
            }
        })?;
        let entry_ports = ingress
            .iter()
            .map(|b| (b.name.clone(), u32::from(b.mesh_port)))
            .collect();
        prepared.insert(
            &p.name,
            Prepared {
                name: &p.name,
                settings,
                service_account,
                group,
                ingress,
                entry_ports,
            },
        );
    }
    Ok((prepared, disabled))
}

/// Whether a VPS gets a WorkloadEntry (its address, entry name and purpose), or why not.
fn meshable<'a>(
    v: &'a MeshVps,
    prepared: &HashMap<&str, Prepared<'_>>,
) -> Result<Meshed<'a>, String> {
    if v.status != VpsStatus::Active {
        return Err(format!("it is {}", v.status.as_str()));
    }
    if v.mesh_opt_out {
        return Err("it is opted out of the mesh".into());
    }
    if !prepared.contains_key(v.purpose.as_str()) {
        return Err(format!(
            "its purpose {:?} does not have the mesh enabled",
            v.purpose
        ));
    }
    let Some(address) = select_address(&v.ip_addresses) else {
        return Err("it has no address usable as a mesh endpoint".into());
    };
    Ok(Meshed {
        address,
        entry_name: workload_entry_name(&v.hostname),
        purpose: &v.purpose,
        hostname: &v.hostname,
    })
}

/// Where each active route of `routes` runs, from the VPS given (the routes' VPS and the VPS
/// they target; a target not given counts as not in the mesh).
///
/// With `assume_mesh`, a route whose VPS is not in the mesh is judged as if it were: the
/// answer to "what happens to these routes when this VPS switches to mesh mode", including
/// [`routes::RouteIssue::VpsNotMeshed`] when it cannot be. Without it, such routes are
/// [`Placement::Classic`], as in [`desired_state_with_routes`].
pub fn plan_routes(
    template: &MeshTemplate,
    purposes: &[MeshPurpose],
    vps: &[MeshVps],
    routes: &[EnvoyRoute],
    assume_mesh: bool,
) -> Result<Vec<RoutePlacement>> {
    let (prepared, _) = prepare(template, purposes)?;
    let by_id: HashMap<Uuid, &MeshVps> = vps.iter().map(|v| (v.id, v)).collect();
    let target = |id: Uuid| match by_id.get(&id) {
        Some(v) => meshable(v, &prepared),
        None => Err("no such VPS".to_string()),
    };
    let mut out = Vec::new();
    for (vps_id, rs) in routes::active_by_vps(routes) {
        let owner = match by_id.get(&vps_id) {
            Some(v) => meshable(v, &prepared),
            None => Err("no such VPS".to_string()),
        };
        for r in rs {
            let placement = match &owner {
                Err(reason) if assume_mesh => {
                    Placement::NotCarried(vec![routes::RouteIssue::VpsNotMeshed(reason.clone())])
                }
                Err(_) => Placement::Classic,
                Ok(m) => match routes::carry(template, &prepared, m, r, &target) {
                    Ok(c) => Placement::Mesh {
                        host: c.host,
                        bind: c.bind,
                    },
                    Err(issues) => Placement::NotCarried(issues),
                },
            };
            out.push(routes::placed(r, placement));
        }
    }
    Ok(out)
}

/// Computes every object the mesh should hold.
///
/// Fails when the template is invalid, a purpose name is not a DNS-1123 label, a purpose is
/// listed twice or a purpose's settings are invalid: the reconciler must then change nothing,
/// rather than delete the objects of a purpose it can no longer read. Problems of single VPS
/// never fail the whole computation; they are listed in [`DesiredState::skipped`].
///
/// A Sidecar is generated for each enabled purpose, a ServiceEntry for each enabled purpose
/// that serves ports (Istio requires ports on a ServiceEntry; a purpose that only calls other
/// services is a client and has nothing to publish), a DestinationRule per distinct called
/// host, and a WorkloadGroup and a WorkloadEntry of the same name per VPS that is active, not
/// opted out and of an enabled purpose (one group per VPS: Kiali lists each WorkloadGroup as a
/// workload, and each VPS is a workload of its own).
pub fn desired_state(
    template: &MeshTemplate,
    purposes: &[MeshPurpose],
    vps: &[MeshVps],
) -> Result<DesiredState> {
    desired_state_with_routes(template, purposes, vps, &[])
}

/// [`desired_state`] with the fleet's Envoy routes: each active route of a VPS that gets a
/// WorkloadEntry is rendered as Istio configuration when the mesh can carry it (see
/// [`crate::routes`]), and [`DesiredState::routes`] says where every active route runs.
pub fn desired_state_with_routes(
    template: &MeshTemplate,
    purposes: &[MeshPurpose],
    vps: &[MeshVps],
    routes: &[EnvoyRoute],
) -> Result<DesiredState> {
    let (prepared, disabled) = prepare(template, purposes)?;

    let mut objects = Vec::with_capacity(2 * vps.len() + purposes.len() * 3);
    let mut called_hosts = BTreeSet::new();
    // Each purpose's Sidecar, pushed once it is known whether its VPS carry routes.
    let mut sidecars: BTreeMap<&str, SidecarSpec> = BTreeMap::new();
    for p in prepared.values() {
        let spec = purpose_objects(template, p, &mut objects, &mut called_hosts);
        sidecars.insert(p.name, spec);
    }
    for host in called_hosts {
        objects.push(MeshObject::DestinationRule(resource(
            Kind::DestinationRule,
            managed_meta(destination_rule_name(&host), template, BTreeMap::new()),
            DestinationRuleSpec {
                host,
                traffic_policy: Some(TrafficPolicy {
                    tls: Some(ClientTlsSettings {
                        mode: Some(TlsMode::IstioMutual),
                    }),
                    connection_pool: None,
                    proxy_protocol: None,
                }),
                // Only sigma's own namespace (the VPS proxies) follows the rule, so it cannot
                // change how workloads elsewhere in the cluster reach the service.
                export_to: vec![".".into()],
            },
        )));
    }

    // Ids decide who keeps a contested name, so process in id order.
    let mut order: Vec<&MeshVps> = vps.iter().collect();
    order.sort_by_key(|v| v.id);
    let mut skipped = Vec::new();
    // The VPS behind each object (None for the purposes' objects), by position.
    let mut owner: Vec<Option<&MeshVps>> = vec![None; objects.len()];
    let mut cache = Cache::default();
    let mut prev_id: Option<Uuid> = None;
    // VPS that got a WorkloadEntry, for their routes and for routes that target them.
    let mut meshed: HashMap<Uuid, (Meshed<'_>, &MeshVps)> = HashMap::new();
    for v in order {
        if prev_id == Some(v.id) {
            skipped.push(skip(v, SkipReason::DuplicateId));
            continue;
        }
        prev_id = Some(v.id);
        if v.status != VpsStatus::Active || v.mesh_opt_out {
            continue;
        }
        let Some(p) = prepared.get(v.purpose.as_str()) else {
            if !disabled.contains(v.purpose.as_str()) {
                skipped.push(skip(v, SkipReason::UnknownPurpose(v.purpose.clone())));
            }
            continue;
        };
        let Some(address) = select_address(&v.ip_addresses) else {
            skipped.push(skip(v, SkipReason::NoUsableAddress));
            continue;
        };
        let entry = workload_entry(template, p, v, address, &mut cache);
        let group = workload_group(template, p, v);
        if let Err(r) = check_object(&entry).and_then(|()| check_object(&group)) {
            skipped.push(skip(v, SkipReason::Invalid(r.join("; "))));
            continue;
        }
        owner.push(Some(v));
        objects.push(group);
        owner.push(Some(v));
        objects.push(entry);
        // Only routes read this map: without them, 100,000 VPS cost no extra names.
        if !routes.is_empty() {
            let m = Meshed {
                address,
                entry_name: workload_entry_name(&v.hostname),
                purpose: p.name,
                hostname: &v.hostname,
            };
            meshed.insert(v.id, (m, v));
        }
    }

    let placements = route_objects(
        template,
        &prepared,
        vps,
        routes,
        &meshed,
        &mut sidecars,
        &mut objects,
        &mut owner,
    );
    for (name, spec) in sidecars {
        let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
        owner.push(None);
        objects.push(MeshObject::Sidecar(resource(
            Kind::Sidecar,
            managed_meta(name.to_string(), template, labels),
            spec,
        )));
    }

    for (o, v) in objects.iter().zip(&owner) {
        if v.is_none()
            && let Err(r) = check_object(o)
        {
            return Err(Error::Internal(format!("{}: {}", o.key(), r.join("; "))));
        }
    }

    // Sort an index rather than the objects: a MeshObject is a few hundred bytes, and moving
    // 10,000 of them through every merge pass costs more than the comparisons.
    let mut idx: Vec<usize> = (0..objects.len()).collect();
    // Stable, so of two entries with the same name the one pushed first (smaller id) leads.
    idx.sort_by(|&a, &b| objects[a].sort_key().cmp(&objects[b].sort_key()));
    let mut slots: Vec<Option<MeshObject>> = objects.into_iter().map(Some).collect();
    let mut sorted: Vec<MeshObject> = Vec::with_capacity(slots.len());
    // The id of the VPS whose entry was kept last, for reporting who holds a contested name.
    let mut kept: Option<Uuid> = None;
    for i in idx {
        let Some(o) = slots[i].take() else { continue };
        if let (Some(last), Some(v)) = (sorted.last(), owner[i])
            && last.sort_key() == o.sort_key()
            && let Some(with) = kept
        {
            // A VPS's group and entry share their name, so two VPS that collide do so in
            // both kinds, and the same VPS (the smaller id) keeps both: the loser is
            // reported once, at its entry.
            if o.kind() == Kind::WorkloadEntry {
                let reason = SkipReason::NameCollision {
                    name: o.name().to_string(),
                    with,
                };
                skipped.push(skip(v, reason));
            }
            continue;
        }
        kept = owner[i].map(|v| v.id);
        sorted.push(o);
    }
    skipped.sort_by_key(|s| s.id);
    Ok(DesiredState {
        objects: sorted,
        skipped,
        routes: placements,
    })
}

/// Renders the routes of meshed VPS (see [`crate::routes`]): each carried route's
/// ServiceEntry and DestinationRule, and for every purpose whose VPS carry routes one Sidecar
/// per meshed VPS in place of the purpose's (removed from `sidecars`). Returns where every
/// active route runs.
#[allow(clippy::too_many_arguments)]
fn route_objects<'a>(
    template: &MeshTemplate,
    prepared: &HashMap<&str, Prepared<'_>>,
    vps: &'a [MeshVps],
    all_routes: &[EnvoyRoute],
    meshed: &HashMap<Uuid, (Meshed<'a>, &'a MeshVps)>,
    sidecars: &mut BTreeMap<&str, SidecarSpec>,
    objects: &mut Vec<MeshObject>,
    owner: &mut Vec<Option<&'a MeshVps>>,
) -> Vec<RoutePlacement> {
    let by_route_vps = routes::active_by_vps(all_routes);
    if by_route_vps.is_empty() {
        return Vec::new();
    }
    let by_id: HashMap<Uuid, &MeshVps> = vps.iter().map(|v| (v.id, v)).collect();
    let target = |id: Uuid| match meshed.get(&id) {
        Some((m, _)) => Ok(m.clone()),
        None => match by_id.get(&id) {
            Some(v) => {
                meshable(v, prepared).and(Err("its WorkloadEntry could not be made".to_string()))
            }
            None => Err("no such VPS".to_string()),
        },
    };
    let mut placements = Vec::new();
    // Route listeners by VPS, for the purposes whose VPS carry routes.
    let mut listeners: HashMap<Uuid, Vec<EgressListener>> = HashMap::new();
    let mut carrier_purposes: BTreeSet<&str> = BTreeSet::new();
    for (vps_id, rs) in &by_route_vps {
        let Some((m, _)) = meshed.get(vps_id) else {
            placements.extend(rs.iter().map(|r| routes::placed(r, Placement::Classic)));
            continue;
        };
        for r in rs {
            let placement = match routes::carry(template, prepared, m, r, &target) {
                Ok(c) => {
                    listeners.entry(*vps_id).or_default().push(c.listener);
                    carrier_purposes.insert(m.purpose);
                    for o in [c.service_entry, c.destination_rule] {
                        owner.push(None);
                        objects.push(o);
                    }
                    Placement::Mesh {
                        host: c.host,
                        bind: c.bind,
                    }
                }
                Err(issues) => Placement::NotCarried(issues),
            };
            placements.push(routes::placed(r, placement));
        }
    }
    for purpose in carrier_purposes {
        let Some(base) = sidecars.remove(purpose) else {
            continue;
        };
        let mut members: Vec<&(Meshed<'_>, &MeshVps)> = meshed
            .values()
            .filter(|(m, _)| m.purpose == purpose)
            .collect();
        members.sort_by_key(|(_, v)| v.id);
        for (m, v) in members {
            let mut spec = base.clone();
            spec.workload_selector = Some(WorkloadSelector {
                labels: BTreeMap::from([(VPS_ID_LABEL.to_string(), v.id.to_string())]),
            });
            let own = listeners.remove(&v.id).unwrap_or_default();
            let plain = spec.clone();
            if !own.is_empty() {
                // The catch-all `~/*` only stands in for "no listeners at all".
                spec.egress.retain(|l| l.port.is_some());
                spec.egress.extend(own);
            }
            let mut labels = BTreeMap::from([("app".to_string(), purpose.to_string())]);
            labels.insert(VPS_ID_LABEL.into(), v.id.to_string());
            let mut meta = managed_meta(m.entry_name.clone(), template, labels);
            meta.annotations
                .insert(HOSTNAME_ANNOTATION.into(), v.hostname.clone());
            let mut sidecar = MeshObject::Sidecar(resource(Kind::Sidecar, meta.clone(), spec));
            if let Err(r) = check_object(&sidecar) {
                // The routes' listeners broke a rule: the VPS keeps its purpose's listeners,
                // and its routes say why they are not carried.
                let why = format!("Sidecar: {}", r.join("; "));
                for p in placements.iter_mut().filter(|p| p.vps_id == v.id) {
                    if matches!(p.placement, Placement::Mesh { .. }) {
                        p.placement =
                            Placement::NotCarried(vec![routes::RouteIssue::Invalid(why.clone())]);
                    }
                }
                sidecar = MeshObject::Sidecar(resource(Kind::Sidecar, meta, plain));
            }
            owner.push(Some(v));
            objects.push(sidecar);
        }
    }
    placements
}

/// Sanitised forms of values many VPS share (a provider, a country and city), computed once
/// per desired-state computation instead of once per VPS.
#[derive(Default)]
struct Cache<'a> {
    /// Provider → (`provider` label, per-provider network).
    provider: HashMap<&'a str, (String, String)>,
    /// (Country, city) → (`country` label, locality).
    place: HashMap<Place<'a>, (String, Option<String>)>,
}

type Place<'a> = (&'a str, Option<&'a str>);

fn skip(v: &MeshVps, reason: SkipReason) -> SkippedVps {
    SkippedVps {
        id: v.id,
        hostname: v.hostname.clone(),
        reason,
    }
}

/// The purpose's part of the WorkloadGroup of each of its VPS: the template (the network all
/// of them share, if any, and the service account) and the readiness probe pilot-agent runs.
fn group_template(
    template: &MeshTemplate,
    s: &MeshSettings,
    service_account: &str,
) -> WorkloadGroupSpec {
    // Only a network shared by every VPS of the purpose belongs in the template.
    let shared_network = s.network.clone().or_else(|| match &template.network {
        NetworkMode::Fixed(n) => Some(n.clone()),
        NetworkMode::PerProvider => None,
    });
    let probe = match &s.probe {
        None => ReadinessProbe {
            http_get: Some(HttpGetAction {
                path: template.health_path.clone(),
                port: u32::from(template.health_port),
            }),
            tcp_socket: None,
        },
        Some(Probe::HttpGet(h)) => ReadinessProbe {
            http_get: Some(HttpGetAction {
                path: h.path.clone(),
                port: u32::from(h.port),
            }),
            tcp_socket: None,
        },
        Some(Probe::TcpSocket(t)) => ReadinessProbe {
            http_get: None,
            tcp_socket: Some(TcpSocketAction {
                port: u32::from(t.port),
            }),
        },
    };
    WorkloadGroupSpec {
        metadata: None,
        template: WorkloadEntrySpec {
            address: String::new(),
            labels: BTreeMap::new(),
            network: shared_network,
            locality: None,
            service_account: Some(service_account.to_string()),
            ports: BTreeMap::new(),
        },
        probe: Some(probe),
    }
}

/// The labels a VPS's WorkloadGroup gives its workload (`spec.metadata.labels`): the purpose as
/// `app` and canonical service, the version as `version` and canonical revision, and the VPS's
/// id. Every one of them is on the VPS's WorkloadEntry with the same value, and the id is on
/// no other entry, so under Kiali's rule (a group's workload is every entry of its namespace
/// whose `spec.labels` hold all of the group's labels) the group's workload is exactly the
/// VPS's entry.
pub fn workload_group_labels(
    purpose: &str,
    template: &MeshTemplate,
    vps_id: Uuid,
) -> BTreeMap<String, String> {
    let mut labels = app_labels(purpose, template);
    labels.insert(CANONICAL_NAME_LABEL.into(), purpose.to_string());
    labels.insert(CANONICAL_REVISION_LABEL.into(), template.version.clone());
    labels.insert(VPS_ID_LABEL.into(), vps_id.to_string());
    labels
}

/// The WorkloadGroup of one VPS: named like its WorkloadEntry (which is also the workload name
/// its proxy reports, `ISTIO_META_WORKLOAD_NAME`), so that Kiali lists the VPS as a workload of
/// that name and the graph's per-VPS node links to it; its template and probe are the
/// purpose's.
///
/// Istio reads a WorkloadGroup only when a proxy asks to register itself into it
/// (`ISTIO_META_AUTO_REGISTER_GROUP`, which sigma never sets: it creates every entry itself),
/// and the bootstrap bundle takes its readiness probe from it; nothing selects by its labels.
fn workload_group(template: &MeshTemplate, p: &Prepared<'_>, v: &MeshVps) -> MeshObject {
    let mut labels = app_labels(p.name, template);
    labels.insert(VPS_ID_LABEL.into(), v.id.to_string());
    let mut meta = managed_meta(workload_entry_name(&v.hostname), template, labels);
    meta.annotations
        .insert(HOSTNAME_ANNOTATION.into(), v.hostname.clone());
    let mut spec = p.group.clone();
    spec.metadata = Some(WorkloadGroupMetadata {
        labels: workload_group_labels(p.name, template, v.id),
        annotations: BTreeMap::new(),
    });
    MeshObject::WorkloadGroup(resource(Kind::WorkloadGroup, meta, spec))
}

/// Pushes a purpose's ServiceEntry (when it serves ports) and returns its Sidecar's spec.
fn purpose_objects(
    template: &MeshTemplate,
    p: &Prepared<'_>,
    objects: &mut Vec<MeshObject>,
    called_hosts: &mut BTreeSet<String>,
) -> SidecarSpec {
    let s = &p.settings;
    if !s.ports.is_empty() {
        let mesh_port: HashMap<&str, u16> = p
            .ingress
            .iter()
            .map(|b| (b.name.as_str(), b.mesh_port))
            .collect();
        let mut ports: Vec<ServiceEntryPort> = s
            .ports
            .iter()
            .map(|sp| ServiceEntryPort {
                number: u32::from(sp.number),
                protocol: sp.protocol.as_str().to_string(),
                name: sp.name.clone(),
                // Mesh clients are sent to the VPS's ingress listener, never to the
                // application's own port; a UDP port (no listener) stays direct.
                target_port: mesh_port
                    .get(sp.name.as_str())
                    .copied()
                    .or(sp.target_port)
                    .map(u32::from),
            })
            .collect();
        ports.sort_by_key(|sp| sp.number);
        let labels = BTreeMap::from([("app".to_string(), p.name.to_string())]);
        objects.push(MeshObject::ServiceEntry(resource(
            Kind::ServiceEntry,
            managed_meta(p.name.to_string(), template, labels),
            ServiceEntrySpec {
                hosts: vec![service_host(p.name, template)],
                location: Some(Location::MeshInternal),
                resolution: Some(Resolution::Static),
                ports,
                workload_selector: Some(selector(p.name)),
                endpoints: Vec::new(),
                export_to: Vec::new(),
            },
        )));
    }

    let bindings = egress_bindings(s);
    let egress = if bindings.is_empty() {
        // Without listeners Istio would import every service of the mesh; `~/*` imports none,
        // which is what a purpose that calls nothing needs.
        vec![EgressListener {
            port: None,
            bind: None,
            capture_mode: None,
            hosts: vec!["~/*".into()],
        }]
    } else {
        bindings
            .iter()
            .map(|b| {
                called_hosts.insert(b.host.clone());
                EgressListener {
                    port: Some(SidecarPort {
                        number: u32::from(b.port),
                        protocol: b.protocol.as_str().to_string(),
                        name: b.name.clone(),
                    }),
                    bind: Some(b.bind.to_string()),
                    capture_mode: Some(CaptureMode::None),
                    hosts: vec![format!("*/{}", b.host)],
                }
            })
            .collect()
    };
    SidecarSpec {
        workload_selector: Some(selector(p.name)),
        ingress: ingress_listeners(&p.ingress),
        egress,
        outbound_traffic_policy: Some(OutboundTrafficPolicy {
            mode: Some(OutboundMode::RegistryOnly),
        }),
    }
}

fn workload_entry<'a>(
    template: &MeshTemplate,
    p: &Prepared<'_>,
    v: &'a MeshVps,
    address: IpAddr,
    cache: &mut Cache<'a>,
) -> MeshObject {
    // The group's labels first: the entry must carry every one of them (Kiali's rule).
    let mut labels = workload_group_labels(p.name, template, v.id);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut locality = None;
    if let Some(c) = v
        .country
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let city = v.city.as_deref();
        let (label, loc) = cache
            .place
            .entry((c, city))
            .or_insert_with(|| (names::label_value(c), self::locality(Some(c), city)));
        labels.insert("country".into(), label.clone());
        locality.clone_from(loc);
    }
    let mut network = None;
    if let Some(pr) = v
        .provider
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (label, net) = cache
            .provider
            .entry(pr)
            .or_insert_with(|| (names::label_value(pr), provider_network(pr)));
        labels.insert("provider".into(), label.clone());
        network = Some(net.clone());
    }
    let network = choose_network(template, &p.settings, || network);
    let mut meta = managed_meta(workload_entry_name(&v.hostname), template, labels.clone());
    meta.annotations
        .insert(HEALTH_CHECKS_ANNOTATION.into(), "true".into());
    meta.annotations
        .insert(HOSTNAME_ANNOTATION.into(), v.hostname.clone());
    MeshObject::WorkloadEntry(resource(
        Kind::WorkloadEntry,
        meta,
        WorkloadEntrySpec {
            address: address.to_string(),
            labels,
            network,
            locality,
            service_account: Some(p.service_account.clone()),
            ports: p.entry_ports.clone(),
        },
    ))
}

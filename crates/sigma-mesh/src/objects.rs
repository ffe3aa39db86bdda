//! Typed Istio objects (`networking.istio.io/v1`) that serialize exactly like the Kubernetes
//! resources, holding only the fields sigma sets.
//!
//! Decoding ignores fields sigma does not model (`status`, `uid`, `managedFields`, a `weight`
//! someone added), so comparing a decoded object with a desired one compares exactly what sigma
//! owns; that is what makes [`crate::diff`] reach zero writes in steady state under server-side
//! apply.
//!
//! The checks beyond the CRD schemas ([`check_object`]) are in the submodule `check`. The rest
//! stays one file (about 690 lines) because it is the wire types of the five kinds sigma writes,
//! which share the metadata, selector and serialization rules defined at its top.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::{Error, Result};

mod check;

pub use check::*;

/// API group and version of every generated object.
pub const API_VERSION: &str = "networking.istio.io/v1";

/// Label that marks an object as sigma's; the reconciler lists and deletes only such objects.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "sigma";
/// Annotation that marks an object as sigma's, for tools that look at annotations.
pub const MANAGED_ANNOTATION: &str = "sigma.io/managed";
/// Label holding the VPS's id on its WorkloadEntry.
pub const VPS_ID_LABEL: &str = "sigma.io/vps-id";
/// Annotation holding the VPS's hostname, since the object name may be a sanitised form of it.
pub const HOSTNAME_ANNOTATION: &str = "sigma.io/hostname";
/// Annotation holding the id of the Envoy route an object carries (a route's ServiceEntry,
/// DestinationRule), so an operator can find the route behind it.
pub const ROUTE_ANNOTATION: &str = "sigma.io/route";
/// Annotation asking Istio to track the health of a WorkloadEntry from its proxy's probes.
pub const HEALTH_CHECKS_ANNOTATION: &str = "proxy.istio.io/health-checks-enabled";
/// Istio's canonical service name label (what Kiali groups telemetry by).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Istio's canonical revision label.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// Every label key sigma may ever write on an object's metadata. The diff compares these keys
/// only, so labels added by other tools (Argo CD, kubectl) do not cause writes, while a label
/// sigma stops setting (a VPS that lost its provider) is still noticed.
pub const OWNED_LABELS: [&str; 8] = [
    "app",
    "version",
    "country",
    "provider",
    VPS_ID_LABEL,
    MANAGED_BY_LABEL,
    CANONICAL_NAME_LABEL,
    CANONICAL_REVISION_LABEL,
];

/// Every annotation key sigma may ever write; see [`OWNED_LABELS`].
pub const OWNED_ANNOTATIONS: [&str; 4] = [
    MANAGED_ANNOTATION,
    HEALTH_CHECKS_ANNOTATION,
    HOSTNAME_ANNOTATION,
    ROUTE_ANNOTATION,
];

// ---------------------------------------------------------------------------------------------
// Kinds and keys

/// The kinds sigma generates, in the order they are exported and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// One per meshed VPS, named like its WorkloadEntry (Kiali's workload).
    WorkloadGroup,
    /// One per meshed VPS.
    WorkloadEntry,
    /// One per mesh-enabled purpose that serves ports, and one per route a meshed VPS carries.
    ServiceEntry,
    /// One per mesh-enabled purpose, or one per VPS of a purpose whose VPS carry routes.
    Sidecar,
    /// One per mesh service some purpose calls, and one per route a meshed VPS carries.
    DestinationRule,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 5] = [
        Kind::WorkloadGroup,
        Kind::WorkloadEntry,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::DestinationRule,
    ];

    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::DestinationRule => "DestinationRule",
        }
    }

    /// The resource's plural (its REST path segment).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::WorkloadGroup => "workloadgroups",
            Kind::WorkloadEntry => "workloadentries",
            Kind::ServiceEntry => "serviceentries",
            Kind::Sidecar => "sidecars",
            Kind::DestinationRule => "destinationrules",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace and name. The namespace is part of it so that moving
/// the mesh to another namespace deletes the objects left in the old one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// Common parts

/// The part of Kubernetes `metadata` sigma sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Kubernetes resource with a typed `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    /// Always [`API_VERSION`] for generated objects.
    pub api_version: String,
    /// The Kubernetes kind.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: S,
}

/// Selects workloads by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSelector {
    /// Labels a workload must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// WorkloadEntry / WorkloadGroup

/// `WorkloadEntry.spec`, and (without `address`) `WorkloadGroup.spec.template`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// IP address of the VPS; empty in a WorkloadGroup template.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Endpoint labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Istio network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Service account (identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Port name → the port the endpoint serves it on: for each port of the purpose, the
    /// VPS's mesh-facing Envoy listener. Never set in a WorkloadGroup template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
}

/// Labels and annotations a WorkloadGroup gives its workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadGroupMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// HTTP GET probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpGetAction {
    /// Path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Port.
    pub port: u32,
}

/// TCP connect probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpSocketAction {
    /// Port.
    pub port: u32,
}

/// `WorkloadGroup.spec.probe`: exactly one method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessProbe {
    /// HTTP GET check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
}

/// `WorkloadGroup.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadGroupSpec {
    /// Labels given to the group's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMetadata>,
    /// Template of the group's WorkloadEntries.
    #[serde(default)]
    pub template: WorkloadEntrySpec,
    /// Health check run by the workloads' proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

/// `ServiceEntry.spec.location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh.
    MeshExternal,
    /// Part of the mesh (mTLS between proxies).
    MeshInternal,
}

/// `ServiceEntry.spec.resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Pass through to the requested address.
    None,
    /// Endpoints are the selected workloads' addresses.
    Static,
    /// DNS lookup.
    Dns,
    /// DNS lookup, one address at a time.
    DnsRoundRobin,
    /// DNS lookup per request.
    DynamicDns,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    /// Port number.
    pub number: u32,
    /// Istio protocol (kept as text: Istio itself accepts any case when reading).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name.
    pub name: String,
    /// Port on the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Service hosts.
    pub hosts: Vec<String>,
    /// Mesh-internal or external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How endpoints are found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServiceEntryPort>,
    /// Workloads that serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Endpoints given inline (a route's external backend); never together with a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Namespaces the service is visible to; empty: Istio's default (all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Sidecar

/// `captureMode` of a Sidecar listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The proxy's default.
    Default,
    /// Traffic is redirected by iptables.
    Iptables,
    /// The application connects to the listener itself.
    None,
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Only services in the registry are reachable.
    RegistryOnly,
    /// Unknown destinations pass through.
    AllowAny,
}

/// A Sidecar listener port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarPort {
    /// Port number.
    pub number: u32,
    /// Istio protocol.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A Sidecar egress listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressListener {
    /// Listener port; none for a catch-all listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// Address the listener binds to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Services reachable through it, as `namespace/dnsName`.
    pub hosts: Vec<String>,
}

/// A Sidecar ingress listener: where the workload's Envoy accepts the mesh's connections for
/// one port, and where it forwards them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressListener {
    /// Listener port (the mesh-facing port).
    pub port: SidecarPort,
    /// Address the listener binds to; sigma leaves it empty (see
    /// [`crate::ingress::ingress_listeners`] for what istiod
    /// then binds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// How traffic reaches the listener; sigma always says `NONE` (Envoy binds the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where accepted traffic goes: `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`,
    /// `[::]:<port>` or `unix://<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
}

/// `Sidecar.spec.outboundTrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundTrafficPolicy {
    /// Mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundMode>,
}

/// `Sidecar.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Workloads it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Ingress listeners: one per port the purpose serves to the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressListener>,
    /// Egress listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    /// What happens to traffic to unknown destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// Client TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// TLS to the server.
    Simple,
    /// Mutual TLS with given certificates.
    Mutual,
    /// Mutual TLS with Istio's certificates.
    IstioMutual,
}

/// `trafficPolicy.tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTlsSettings {
    /// Mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
}

/// `trafficPolicy.connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// TCP connect timeout, as a duration (`5000ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
}

/// `trafficPolicy.connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionPool {
    /// TCP settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
}

/// `trafficPolicy.proxyProtocol.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// `trafficPolicy.proxyProtocol`: the PROXY header the client proxy sends the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyProtocolSettings {
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// `DestinationRule.spec.trafficPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// TLS to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Connection limits and timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// PROXY protocol toward the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolSettings>,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Destination host.
    pub host: String,
    /// Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Namespaces the rule is visible to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// MeshObject

/// One object sigma manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshObject {
    /// A purpose's WorkloadGroup.
    WorkloadGroup(Resource<WorkloadGroupSpec>),
    /// A VPS's WorkloadEntry.
    WorkloadEntry(Resource<WorkloadEntrySpec>),
    /// A purpose's ServiceEntry.
    ServiceEntry(Resource<ServiceEntrySpec>),
    /// A purpose's Sidecar.
    Sidecar(Resource<SidecarSpec>),
    /// A called service's DestinationRule.
    DestinationRule(Resource<DestinationRuleSpec>),
}

impl Serialize for MeshObject {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MeshObject::WorkloadGroup(r) => r.serialize(s),
            MeshObject::WorkloadEntry(r) => r.serialize(s),
            MeshObject::ServiceEntry(r) => r.serialize(s),
            MeshObject::Sidecar(r) => r.serialize(s),
            MeshObject::DestinationRule(r) => r.serialize(s),
        }
    }
}

/// Builds a resource of `kind` with sigma's API version.
pub fn resource<S>(kind: Kind, metadata: ObjectMeta, spec: S) -> Resource<S> {
    Resource {
        api_version: API_VERSION.to_string(),
        kind: kind.as_str().to_string(),
        metadata,
        spec,
    }
}

impl MeshObject {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            MeshObject::WorkloadGroup(_) => Kind::WorkloadGroup,
            MeshObject::WorkloadEntry(_) => Kind::WorkloadEntry,
            MeshObject::ServiceEntry(_) => Kind::ServiceEntry,
            MeshObject::Sidecar(_) => Kind::Sidecar,
            MeshObject::DestinationRule(_) => Kind::DestinationRule,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            MeshObject::WorkloadGroup(r) => &r.metadata,
            MeshObject::WorkloadEntry(r) => &r.metadata,
            MeshObject::ServiceEntry(r) => &r.metadata,
            MeshObject::Sidecar(r) => &r.metadata,
            MeshObject::DestinationRule(r) => &r.metadata,
        }
    }

    /// The object's metadata, mutable.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            MeshObject::WorkloadGroup(r) => &mut r.metadata,
            MeshObject::WorkloadEntry(r) => &mut r.metadata,
            MeshObject::ServiceEntry(r) => &mut r.metadata,
            MeshObject::Sidecar(r) => &mut r.metadata,
            MeshObject::DestinationRule(r) => &mut r.metadata,
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Kind, namespace and name.
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }

    /// The order objects are exported and applied in: kind, then namespace, then name.
    pub fn sort_key(&self) -> (Kind, &str, &str) {
        let m = self.metadata();
        (self.kind(), m.namespace.as_str(), m.name.as_str())
    }

    /// Whether the object carries sigma's managed-by label.
    pub fn is_managed(&self) -> bool {
        self.metadata()
            .labels
            .get(MANAGED_BY_LABEL)
            .map(String::as_str)
            == Some(MANAGED_BY)
    }

    /// Whether `self` and `other` have the same spec (on the fields sigma models).
    pub fn same_spec(&self, other: &MeshObject) -> bool {
        match (self, other) {
            (MeshObject::WorkloadGroup(a), MeshObject::WorkloadGroup(b)) => a.spec == b.spec,
            (MeshObject::WorkloadEntry(a), MeshObject::WorkloadEntry(b)) => a.spec == b.spec,
            (MeshObject::ServiceEntry(a), MeshObject::ServiceEntry(b)) => a.spec == b.spec,
            (MeshObject::Sidecar(a), MeshObject::Sidecar(b)) => a.spec == b.spec,
            (MeshObject::DestinationRule(a), MeshObject::DestinationRule(b)) => a.spec == b.spec,
            _ => false,
        }
    }

    /// Decodes an object read from the API server (or a YAML/JSON export). Fields sigma does not
    /// model are ignored; the API version must be one Istio serves these kinds under.
    pub fn from_json(value: serde_json::Value) -> Result<MeshObject> {
        let kind_str = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let Some(kind) = Kind::parse(&kind_str) else {
            return Err(Error::UnsupportedObject(format!(
                "kind {kind_str:?} is not one sigma manages"
            )));
        };
        if !matches!(
            api,
            "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3"
        ) {
            return Err(Error::UnsupportedObject(format!(
                "{kind_str} with apiVersion {api:?}"
            )));
        }
        let decode = |e: serde_json::Error| Error::Decode {
            kind,
            reason: e.to_string(),
        };
        Ok(match kind {
            Kind::WorkloadGroup => {
                MeshObject::WorkloadGroup(serde_json::from_value(value).map_err(decode)?)
            }
            Kind::WorkloadEntry => {
                MeshObject::WorkloadEntry(serde_json::from_value(value).map_err(decode)?)
            }
            Kind::ServiceEntry => {
                MeshObject::ServiceEntry(serde_json::from_value(value).map_err(decode)?)
            }
            Kind::Sidecar => MeshObject::Sidecar(serde_json::from_value(value).map_err(decode)?),
            Kind::DestinationRule => {
                MeshObject::DestinationRule(serde_json::from_value(value).map_err(decode)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(ingress: Vec<IngressListener>) -> MeshObject {
        MeshObject::Sidecar(resource(
            Kind::Sidecar,
            ObjectMeta {
                name: "web".into(),
                namespace: "sigma".into(),
                ..ObjectMeta::default()
            },
            SidecarSpec {
                workload_selector: Some(WorkloadSelector {
                    labels: BTreeMap::from([("app".into(), "web".into())]),
                }),
                ingress,
                egress: Vec::new(),
                outbound_traffic_policy: None,
            },
        ))
    }

    fn listener(number: u32, endpoint: &str) -> IngressListener {
        IngressListener {
            port: SidecarPort {
                number,
                protocol: "TCP".into(),
                name: format!("tcp-{number}"),
            },
            bind: None,
            capture_mode: Some(CaptureMode::None),
            default_endpoint: Some(endpoint.into()),
        }
    }

    fn errors(ingress: Vec<IngressListener>) -> Vec<String> {
        check_object(&sidecar(ingress)).err().unwrap_or_default()
    }

    #[test]
    fn a_sidecar_with_only_ingress_is_not_empty() {
        assert_eq!(
            errors(vec![listener(15100, "127.0.0.1:8443")]),
            Vec::<String>::new()
        );
        assert!(errors(vec![]).iter().any(|e| e.contains("empty Sidecar")));
    }

    #[test]
    fn default_endpoints_take_istios_forms() {
        for ok in [
            "127.0.0.1:8443",
            "0.0.0.0:8443",
            "[::1]:8443",
            "[::]:8443",
            ":8443",
            "unix:///run/app.sock",
            "unix://@app",
        ] {
            assert_eq!(
                errors(vec![listener(15100, ok)]),
                Vec::<String>::new(),
                "{ok}"
            );
        }
        for bad in [
            "10.0.0.1:8443",
            "localhost:8443",
            "127.0.0.1",
            "::1:8443",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:http",
            "unix://relative",
            "unix:///run/",
            "unix://",
            "unix://@",
        ] {
            let e = errors(vec![listener(15100, bad)]);
            assert!(
                e.iter()
                    .any(|e| e.starts_with("spec.ingress[0].defaultEndpoint")),
                "{bad}: {e:?}"
            );
        }
        let e = errors(vec![listener(15100, "127.0.0.1:15100")]);
        assert!(e.iter().any(|e| e.contains("own port")), "{e:?}");
    }

    #[test]
    fn ingress_ports_are_unique_valid_and_bound_by_envoy() {
        let e = errors(vec![
            listener(15100, "127.0.0.1:1"),
            listener(15100, "127.0.0.1:2"),
        ]);
        assert!(
            e.iter()
                .any(|e| e == "spec.ingress[1].port.number 15100 is duplicated"),
            "{e:?}"
        );

        let mut l = listener(15100, "127.0.0.1:1");
        l.capture_mode = Some(CaptureMode::Default);
        let mut m = listener(15101, "127.0.0.1:1");
        m.capture_mode = None;
        let e = errors(vec![l, m]);
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ingress[0].captureMode")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ingress[1].captureMode")),
            "{e:?}"
        );

        let mut l = listener(0, "127.0.0.1:1");
        l.port.name = "Bad_Name".into();
        l.port.protocol = "UDP".into();
        l.bind = Some("eth0".into());
        l.default_endpoint = None;
        let e = errors(vec![l]);
        for f in [
            "spec.ingress[0].port.number",
            "spec.ingress[0].port.name",
            "spec.ingress[0].port.protocol",
            "spec.ingress[0].bind",
            "spec.ingress[0].defaultEndpoint",
        ] {
            assert!(e.iter().any(|e| e.starts_with(f)), "{f}: {e:?}");
        }
    }
}

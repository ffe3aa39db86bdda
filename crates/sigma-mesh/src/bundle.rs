//! The Istio bootstrap bundle of one VPS: the files Istio's own VM onboarding
//! (`istioctl x workload entry configure`) writes — `root-cert.pem`, `mesh.yaml`, `cluster.env`,
//! `hosts` — computed without I/O from the VPS's WorkloadEntry and from what sigma-api read out
//! of the cluster. The `istio-token` is the one file not made here: it is minted per request.
//!
//! The keys and their meaning follow istioctl, so that pilot-agent on a VPS sees what it would
//! see after a manual install. sigma departs from istioctl on purpose where a fleet needs it:
//!
//! * Every VPS has a WorkloadGroup of its own (istioctl shares one among the VMs of a service
//!   and gives them all its name as workload name, so Kiali cannot tell them apart).
//!   `ISTIO_META_WORKLOAD_NAME` is the name that group and the VPS's WorkloadEntry share, so
//!   the proxy's telemetry (`source_workload`) names the workload Kiali lists, and
//!   `ISTIO_META_WORKLOAD_ENTRY` names the entry, which is what Istio attaches the proxy's
//!   health status to. `ISTIO_META_AUTO_REGISTER_GROUP` is never set: sigma creates the entry.
//! * No traffic interception by default (`ISTIO_META_INTERCEPTION_MODE=NONE`,
//!   `ISTIO_CUSTOM_IP_TABLES=true`, `ISTIO_INBOUND_PORTS=''`, `ISTIO_META_DNS_CAPTURE=false`):
//!   applications reach mesh services through the Sidecar's loopback listeners, which the
//!   `hosts` file names. The opt-in iptables mode captures only the purpose's listed service
//!   CIDRs and no inbound port — never istioctl's `*`.
//! * `PROV_CERT` and `OUTPUT_CERTS` name one persistent directory ([`CERT_DIR`]), so pilot-agent
//!   renews its workload certificate with the current one and needs the token only for first
//!   contact (or after the certificate lapsed).
//! * `discoveryAddress` is always the istiod host the `hosts` file maps (see
//!   [`ControlPlane::istiod_address`]), so the two can never disagree.
//! * `hosts` resolves a load balancer's host name to an address (istioctl leaves the file empty
//!   then) — that resolution is I/O and happens before this module is called.
//!
//! One file (about 780 lines) because it is one pure computation, meant to be read against
//! istioctl's: its sections (the control plane's names, the mesh config, the VPS as a
//! workload, the rendering) are the steps of building one bundle.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sigma_types::mesh::{BundleEgress, InterceptionMode, IstioBootstrapFiles, IstioProxyArchive};
use sigma_types::{FieldErrors, Normalize, VpsStatus};

use crate::model::{EgressBinding, MeshPurpose, MeshVps, desired_state, egress_bindings};
use crate::names;
use crate::objects::{
    CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL, MeshObject, ReadinessProbe, Resource,
    WorkloadEntrySpec,
};
use crate::settings::{Interception, MeshSettings, MeshTemplate, Protocol};
use crate::{Error, Result};

/// The persistent directory pilot-agent provisions its workload certificate into and reads it
/// back from (`PROV_CERT` = `OUTPUT_CERTS`). It is under `/var/lib` rather than istioctl's
/// `/etc/certs` (which holds only the root certificate) because it is state pilot-agent writes,
/// and it must survive reboots so that a VPS does not need a valid token to rejoin the mesh.
pub const CERT_DIR: &str = "/var/lib/istio/certs";

/// istiod's XDS and CA port (TLS, verified against the root certificate).
pub const ISTIOD_PORT: u16 = 15012;

/// ConfigMap istiod writes into every namespace with the mesh's root certificate.
pub const ROOT_CERT_CONFIG_MAP: &str = "istio-ca-root-cert";

/// Key of the root certificate in [`ROOT_CERT_CONFIG_MAP`].
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Key of the mesh config in Istio's `istio[-<rev>]` ConfigMap.
pub const MESH_CONFIG_KEY: &str = "mesh";

/// Audience of the service-account token pilot-agent presents to istiod's CA.
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// Default name of the east-west gateway Service (Istio's multi-network samples).
pub const EASTWEST_SERVICE: &str = "istio-eastwestgateway";

/// Istio's default cluster id (`values.global.multiCluster.clusterName` unset).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Istio's default trust domain, used when the mesh config names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// pilot-agent's default status port, excluded from capture unless the mesh config moves it.
const DEFAULT_STATUS_PORT: u64 = 15020;

/// Ports never captured, as istioctl writes them: SSH (a VM must stay reachable when the proxy
/// misbehaves), Envoy's Prometheus port and the health port.
const BASE_EXCLUDE_PORTS: &str = "22,15090,15021";

/// Hex digits of the bundle version (128 bits of a SHA-256).
const VERSION_HEX_LEN: usize = 32;

// ---------------------------------------------------------------------------------------------
// The control plane's names

/// Where Istio's control plane is and how it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// Istio's root namespace (`istio-system`).
    pub namespace: String,
    /// The control plane's revision (`istioctl install --revision <rev>`); `None`, `""` and
    /// `default` all mean an unrevisioned install, as for istioctl.
    pub revision: Option<String>,
    /// The cluster id the VPS's proxies report (`ISTIO_META_CLUSTER_ID`).
    pub cluster_id: String,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            namespace: "istio-system".into(),
            revision: None,
            cluster_id: DEFAULT_CLUSTER_ID.into(),
        }
    }
}

impl ControlPlane {
    /// The revision, when it names one.
    pub fn revision(&self) -> Option<&str> {
        self.revision
            .as_deref()
            .filter(|r| !r.is_empty() && *r != "default")
    }

    /// The ConfigMap holding the mesh config: `istio`, or `istio-<rev>`.
    pub fn mesh_config_map(&self) -> String {
        match self.revision() {
            Some(r) => format!("istio-{r}"),
            None => "istio".into(),
        }
    }

    /// istiod's service host: `istiod[-<rev>].<namespace>.svc`. Its serving certificate holds
    /// this name, which is why the VPS resolves it (through `hosts`) instead of being given an
    /// address.
    pub fn istiod_host(&self) -> String {
        match self.revision() {
            Some(r) => format!("istiod-{r}.{}.svc", self.namespace),
            None => format!("istiod.{}.svc", self.namespace),
        }
    }

    /// `istiod[-<rev>].<namespace>.svc:15012`.
    pub fn istiod_address(&self) -> String {
        format!("{}:{ISTIOD_PORT}", self.istiod_host())
    }

    /// Every problem, by field (`namespace`, `revision`, `cluster_id`).
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::new();
        if !names::is_dns_label(&self.namespace) {
            e.add("namespace", "must be a DNS-1123 label");
        }
        if let Some(r) = self.revision() {
            // `istiod-<rev>` is a Service name, so the revision must fit in a label with it.
            if !names::is_dns_label(r) || r.len() > names::MAX_LABEL_LEN - "istiod-".len() {
                e.add(
                    "revision",
                    "must be a DNS-1123 label of at most 56 characters",
                );
            }
        }
        if self.cluster_id.is_empty() || !names::is_label_value(&self.cluster_id) {
            e.add(
                "cluster_id",
                "must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            );
        }
        e.into_result()
    }
}

// ---------------------------------------------------------------------------------------------
// Mesh config

/// The parts of Istio's mesh config a bundle uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshConfig {
    /// `defaultConfig`: the ProxyConfig every proxy starts from.
    pub default_config: Map<String, Value>,
    /// `defaultConfig.proxyMetadata`, as strings.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `trustDomain`, or Istio's default.
    pub trust_domain: String,
}

fn bad(what: &str, reason: impl Into<String>) -> Error {
    Error::BadClusterData {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// Parses the `mesh` key of Istio's ConfigMap (YAML). `what` names the source in errors
/// (`ConfigMap istio-system/istio key mesh`). An empty document is Istio's defaults.
pub fn parse_mesh_config(text: &str, what: &str) -> Result<MeshConfig> {
    let doc: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        yaml_serde::from_str(text).map_err(|e| bad(what, format!("not valid YAML: {e}")))?
    };
    let mut top = match doc {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        _ => return Err(bad(what, "is not a YAML mapping")),
    };
    let trust_domain = match top.remove("trustDomain") {
        None | Some(Value::Null) => DEFAULT_TRUST_DOMAIN.to_string(),
        Some(Value::String(s)) if s.is_empty() => DEFAULT_TRUST_DOMAIN.to_string(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad(what, "trustDomain is not a string")),
    };
    let mut default_config = match top.remove("defaultConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(what, "defaultConfig is not a mapping")),
    };
    let mut proxy_metadata = BTreeMap::new();
    match default_config.remove("proxyMetadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                // Istio's field is map<string, string>; an unquoted `true` or `2` in the
                // ConfigMap is what the operator meant as that string.
                let s = match v {
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(bad(
                            what,
                            format!("defaultConfig.proxyMetadata.{k} is not a string"),
                        ));
                    }
                };
                proxy_metadata.insert(k, s);
            }
        }
        Some(_) => {
            return Err(bad(what, "defaultConfig.proxyMetadata is not a mapping"));
        }
    }
    Ok(MeshConfig {
        default_config,
        proxy_metadata,
        trust_domain,
    })
}

// ---------------------------------------------------------------------------------------------
// The VPS as a mesh workload

/// What the bundle of one VPS is made from on sigma's side: its WorkloadEntry, exactly as the
/// reconciler generates it, and its purpose's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleWorkload {
    /// The VPS's WorkloadEntry.
    pub entry: Resource<WorkloadEntrySpec>,
    /// The readiness probe of the VPS's WorkloadGroup (its purpose's probe).
    pub probe: Option<ReadinessProbe>,
    /// The purpose (the `app` and canonical service).
    pub purpose: String,
    /// The purpose's settings, normalized.
    pub settings: MeshSettings,
    /// The workloads' service account (mesh identity).
    pub service_account: String,
    /// The namespace of the workload objects.
    pub namespace: String,
}

impl BundleWorkload {
    /// The WorkloadEntry's name.
    pub fn name(&self) -> &str {
        &self.entry.metadata.name
    }
}

/// The workload a VPS is in the mesh as, computed by the same code that computes the objects
/// the reconciler applies, so the bundle and the cluster always agree on names and labels.
///
/// Fails with [`Error::NotMeshed`] when the VPS should have no proxy (not active, opted out,
/// its purpose not mesh-enabled, no usable address), and with [`Error::InvalidPurpose`] when
/// the purpose's stored settings no longer validate.
pub fn bundle_workload(
    template: &MeshTemplate,
    purpose: &MeshPurpose,
    vps: &MeshVps,
) -> Result<BundleWorkload> {
    if vps.purpose != purpose.name {
        return Err(Error::Internal(format!(
            "VPS {} has purpose {:?}, not {:?}",
            vps.hostname, vps.purpose, purpose.name
        )));
    }
    if vps.status != VpsStatus::Active {
        return Err(Error::NotMeshed(format!(
            "VPS {} is {}; bootstrap bundles are issued to active VPS only",
            vps.hostname,
            vps.status.as_str()
        )));
    }
    if vps.mesh_opt_out {
        return Err(Error::NotMeshed(format!(
            "VPS {} is opted out of the mesh (mesh_opt_out)",
            vps.hostname
        )));
    }
    if !purpose.settings.enabled {
        return Err(Error::NotMeshed(format!(
            "purpose {} is not mesh-enabled (its mesh.enabled is false)",
            purpose.name
        )));
    }
    let settings =
        purpose
            .settings
            .clone()
            .normalize()
            .map_err(|errors| Error::InvalidPurpose {
                purpose: purpose.name.clone(),
                errors,
            })?;
    let state = desired_state(
        template,
        std::slice::from_ref(purpose),
        std::slice::from_ref(vps),
    )?;
    if let Some(s) = state.skipped.first() {
        return Err(Error::NotMeshed(format!(
            "VPS {} has no WorkloadEntry: {}",
            vps.hostname, s.reason
        )));
    }
    let mut entry = None;
    let mut probe = None;
    for o in state.objects {
        match o {
            MeshObject::WorkloadEntry(r) => entry = Some(r),
            MeshObject::WorkloadGroup(g) => probe = g.spec.probe,
            _ => {}
        }
    }
    let entry = entry.ok_or_else(|| {
        Error::Internal(format!("no WorkloadEntry computed for {}", vps.hostname))
    })?;
    let service_account = entry
        .spec
        .service_account
        .clone()
        .unwrap_or_else(|| template.service_account.clone());
    Ok(BundleWorkload {
        entry,
        probe,
        purpose: purpose.name.clone(),
        settings,
        service_account,
        namespace: template.namespace.clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Everything a bundle is rendered from except the token.
#[derive(Debug, Clone, Copy)]
pub struct BundleInput<'a> {
    /// Where Istio runs.
    pub control_plane: &'a ControlPlane,
    /// The VPS's workload.
    pub workload: &'a BundleWorkload,
    /// `root-cert.pem` of ConfigMap `istio-ca-root-cert` in the mesh namespace.
    pub root_cert_pem: &'a str,
    /// The `mesh` key of Istio's `istio[-<rev>]` ConfigMap.
    pub mesh_config: &'a str,
    /// Where the VPS reaches istiod: the east-west gateway's address.
    pub eastwest: IpAddr,
    /// Where to download the proxy, when the operator configured it.
    pub istio_proxy: Option<&'a IstioProxyArchive>,
}

/// A bundle without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedBundle {
    /// The WorkloadEntry's name.
    pub workload_entry: String,
    /// The files; `istio_token` is empty.
    pub files: IstioBootstrapFiles,
    /// Lower-case hex SHA-256 of the DER of the first root certificate.
    pub root_cert_sha256: String,
    /// Hash of everything in the bundle except the token.
    pub bundle_version: String,
    /// Interception on the VPS.
    pub interception: InterceptionMode,
    /// The Sidecar's loopback egress listeners.
    pub egress: Vec<BundleEgress>,
    /// The proxy archive.
    pub istio_proxy: Option<IstioProxyArchive>,
}

/// `value` single-quoted for a POSIX shell: `'…'`, each embedded `'` written `'\''`. Always
/// quoted (istioctl leaves "safe" words bare), so every line has the same `KEY='value'` shape.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

fn is_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `KEY='value'` lines, sorted by key (a `BTreeMap` iterates in order). Refuses a key that is
/// not a shell variable name and a value holding a line break or NUL: `cluster.env` is read
/// line by line (by the agent and by `istio-start.sh` alike), so either would change what the
/// file means. `source` names where the variables came from, for the error.
pub fn render_cluster_env(vars: &BTreeMap<String, String>, source: &str) -> Result<String> {
    let mut out = String::new();
    for (k, v) in vars {
        if !is_env_name(k) {
            return Err(bad(
                source,
                format!("{k:?} is not a valid environment variable name"),
            ));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(bad(
                source,
                format!("the value of {k} holds a line break or NUL"),
            ));
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&shell_quote(v));
        out.push('\n');
    }
    Ok(out)
}

/// Istio's canonical service of a workload: the canonical-name label, else
/// `app.kubernetes.io/name`, else `app`, else the workload's name.
fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    [CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| workload.to_string())
}

/// Istio's canonical revision: the canonical-revision label, else `app.kubernetes.io/version`,
/// else `version`, else `latest`.
fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        CANONICAL_REVISION_LABEL,
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
    .cloned()
    .unwrap_or_else(|| "latest".into())
}

/// One entry of `ISTIO_META_POD_PORTS`, in the shape Istio's pod ports take.
#[derive(Serialize)]
struct PodPort<'a> {
    name: &'a str,
    #[serde(rename = "containerPort")]
    container_port: u16,
    protocol: &'static str,
}

/// The purpose's ports as `ISTIO_META_POD_PORTS` JSON (sorted by name, like istioctl), which
/// lets istiod resolve named target ports; `None` without ports. A port's container port is
/// where the workload serves it to the mesh: its ingress listener (the WorkloadEntry's
/// `ports`), as for the ServiceEntry's `targetPort`; only a UDP port, which has no listener,
/// names the application's port.
fn pod_ports(settings: &MeshSettings, entry_ports: &BTreeMap<String, u32>) -> Option<String> {
    let mut ports: Vec<PodPort<'_>> = settings
        .ports
        .iter()
        .map(|p| PodPort {
            name: &p.name,
            container_port: entry_ports
                .get(&p.name)
                .and_then(|m| u16::try_from(*m).ok())
                .unwrap_or_else(|| p.app_port()),
            protocol: if p.protocol == Protocol::Udp {
                "UDP"
            } else {
                "TCP"
            },
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    ports.sort_by(|a, b| a.name.cmp(b.name));
    serde_json::to_string(&ports).ok()
}

/// Ports excluded from capture: istioctl's list plus pilot-agent's status port.
fn exclude_ports(default_config: &Map<String, Value>) -> String {
    let status = default_config
        .get("statusPort")
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))
        .unwrap_or(DEFAULT_STATUS_PORT);
    if status == 15090 || status == 15021 {
        BASE_EXCLUDE_PORTS.to_string()
    } else {
        format!("{BASE_EXCLUDE_PORTS},{status}")
    }
}

/// The listener of every egress entry, for the bundle's metadata.
fn bundle_egress(bindings: &[EgressBinding]) -> Vec<BundleEgress> {
    bindings
        .iter()
        .map(|b| BundleEgress {
            host: b.host.clone(),
            port: b.port,
            bind: b.bind.to_string(),
        })
        .collect()
}

/// `hosts`: istiod's host at the east-west gateway, then each called host at the loopback
/// address its Sidecar listener binds ([`egress_bindings`], the same allocation the Sidecar is
/// generated from), one line per host, sorted by host.
pub fn render_hosts(
    control_plane: &ControlPlane,
    eastwest: IpAddr,
    bindings: &[EgressBinding],
) -> String {
    let mut out = format!("{eastwest} {}\n", control_plane.istiod_host());
    let mut by_host: BTreeMap<&str, String> = BTreeMap::new();
    for b in bindings {
        by_host
            .entry(b.host.as_str())
            .or_insert_with(|| b.bind.to_string());
    }
    for (host, bind) in by_host {
        out.push_str(&format!("{bind} {host}\n"));
    }
    out
}

/// The proxy metadata and `cluster.env` variables of a workload.
struct Variables {
    /// `defaultConfig.proxyMetadata` of `mesh.yaml`.
    proxy_metadata: BTreeMap<String, String>,
    /// Every `cluster.env` variable: the proxy metadata plus the settings for Istio's start and
    /// iptables scripts.
    cluster_env: BTreeMap<String, String>,
}

fn variables(cp: &ControlPlane, w: &BundleWorkload, mesh: &MeshConfig) -> Variables {
    let labels = &w.entry.spec.labels;
    let (mode, custom_iptables, service_cidr) = match &w.settings.interception {
        Interception::None => ("NONE", "true", String::new()),
        Interception::Iptables { service_cidrs } => ("REDIRECT", "false", service_cidrs.join(",")),
    };
    // Metadata the ConfigMap sets for every proxy first, then the workload's own, so that a
    // mesh-wide `ISTIO_META_DNS_CAPTURE: "true"` (common in Istio installs) cannot turn on
    // capture sigma does not want.
    let mut md = mesh.proxy_metadata.clone();
    let mesh_id = mesh
        .default_config
        .get("meshId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(&mesh.trust_domain)
        .to_string();
    let name = w.name().to_string();
    let mut set = |k: &str, v: String| {
        md.insert(k.to_string(), v);
    };
    set("CANONICAL_SERVICE", canonical_service(labels, &w.purpose));
    set("CANONICAL_REVISION", canonical_revision(labels));
    set("POD_NAMESPACE", w.namespace.clone());
    set("SERVICE_ACCOUNT", w.service_account.clone());
    set("TRUST_DOMAIN", mesh.trust_domain.clone());
    set("ISTIO_META_CLUSTER_ID", cp.cluster_id.clone());
    set("ISTIO_META_MESH_ID", mesh_id);
    set(
        "ISTIO_META_NETWORK",
        w.entry.spec.network.clone().unwrap_or_default(),
    );
    if let Some(p) = pod_ports(&w.settings, &w.entry.spec.ports) {
        set("ISTIO_META_POD_PORTS", p);
    }
    set("ISTIO_META_WORKLOAD_NAME", name.clone());
    set("ISTIO_META_WORKLOAD_ENTRY", name);
    // A BTreeMap serializes with sorted keys, so the same labels give the same bytes.
    set(
        "ISTIO_METAJSON_LABELS",
        serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()),
    );
    set("ISTIO_META_DNS_CAPTURE", "false".into());
    set("ISTIO_META_INTERCEPTION_MODE", mode.into());

    let mut env = md.clone();
    let mut put = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    put("ISTIO_INBOUND_PORTS", String::new());
    put("ISTIO_SERVICE_CIDR", service_cidr);
    put("ISTIO_CUSTOM_IP_TABLES", custom_iptables.into());
    put(
        "ISTIO_LOCAL_EXCLUDE_PORTS",
        exclude_ports(&mesh.default_config),
    );
    put("ISTIO_NAMESPACE", w.namespace.clone());
    put("ISTIO_SERVICE", format!("{}.{}", w.purpose, w.namespace));
    put("ISTIO_SVC_IP", w.entry.spec.address.clone());
    // The VPS's address is usually public and the probed service may listen on loopback only:
    // istioctl sets this whenever the workload is given an external address.
    put("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION", "true".into());
    put("PROV_CERT", CERT_DIR.into());
    put("OUTPUT_CERTS", CERT_DIR.into());
    if cp.revision().is_some() {
        put("CA_ADDR", cp.istiod_address());
    }
    Variables {
        proxy_metadata: md,
        cluster_env: env,
    }
}

/// `mesh.yaml`: `defaultConfig` from the ConfigMap with the workload's `discoveryAddress`,
/// `readinessProbe` and `proxyMetadata`. Keys are sorted and ambiguous strings quoted, so the
/// same inputs give the same bytes and YAML 1.1 readers see the same values.
fn render_mesh_yaml(
    cp: &ControlPlane,
    w: &BundleWorkload,
    mesh: &MeshConfig,
    proxy_metadata: &BTreeMap<String, String>,
) -> Result<String> {
    let mut dc = mesh.default_config.clone();
    dc.insert(
        "discoveryAddress".into(),
        Value::String(cp.istiod_address()),
    );
    match &w.probe {
        Some(p) => {
            dc.insert(
                "readinessProbe".into(),
                serde_json::to_value(p).map_err(|e| Error::Internal(e.to_string()))?,
            );
        }
        None => {
            dc.remove("readinessProbe");
        }
    }
    dc.insert(
        "proxyMetadata".into(),
        serde_json::to_value(proxy_metadata).map_err(|e| Error::Internal(e.to_string()))?,
    );
    keep_stats(&mut dc);
    let mut top = Map::new();
    top.insert("defaultConfig".into(), Value::Object(dc));
    crate::yaml::value_to_yaml(&Value::Object(top))
}

/// Envoy stats a VPS's proxy keeps beyond Istio's default set (which drops all but a few):
/// per-upstream request, response-class and connection counts of its egress clusters (the
/// per-VPS edge series Prometheus scrapes and the agent's data-plane report reads) and the
/// state of its xDS stream (`mesh doctor`'s `xds-connected`). Only a VPS's own proxy gets
/// them, through its `mesh.yaml`: pods keep the cluster's default.
pub const STATS_INCLUSION_PREFIXES: [&str; 2] = ["cluster.outbound|", "control_plane"];

/// Adds [`STATS_INCLUSION_PREFIXES`] to `proxyStatsMatcher.inclusionPrefixes`, keeping what the
/// cluster's default already lists. A matcher the cluster defines in another form (regexps,
/// suffixes only) is left as it is: the operator chose it.
fn keep_stats(dc: &mut Map<String, Value>) {
    let matcher = dc
        .entry("proxyStatsMatcher")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(m) = matcher else { return };
    let prefixes = m
        .entry("inclusionPrefixes")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = prefixes else { return };
    for p in STATS_INCLUSION_PREFIXES {
        if !list.iter().any(|v| v.as_str() == Some(p)) {
            list.push(Value::String(p.into()));
        }
    }
}

/// What the bundle version hashes: everything the agent installs or acts on, except the token
/// (which changes at every issue and is refreshed without a restart).
#[derive(Serialize)]
struct Versioned<'a> {
    workload_entry: &'a str,
    root_cert_pem: &'a str,
    mesh_yaml: &'a str,
    cluster_env: &'a str,
    hosts: &'a str,
    interception: InterceptionMode,
    egress: &'a [BundleEgress],
    istio_proxy: Option<&'a IstioProxyArchive>,
}

/// Renders every file of a bundle but the token, with its metadata.
///
/// Fails with [`Error::BadClusterData`] naming the cluster object when what was read cannot
/// make a working bundle (no certificate in `root-cert.pem`, a mesh config that is not YAML,
/// proxy metadata that cannot be written to `cluster.env`): a half bundle would leave the VPS
/// with a proxy that cannot start.
pub fn render_bundle(input: &BundleInput<'_>) -> Result<RenderedBundle> {
    let cp = input.control_plane;
    let w = input.workload;
    let cm_what = format!(
        "ConfigMap {}/{} key {MESH_CONFIG_KEY}",
        cp.namespace,
        cp.mesh_config_map()
    );
    let mesh = parse_mesh_config(input.mesh_config, &cm_what)?;
    let root_cert_sha256 =
        sigma_types::cert::root_cert_sha256(input.root_cert_pem).map_err(|r| {
            bad(
                &format!(
                    "ConfigMap {}/{ROOT_CERT_CONFIG_MAP} key {ROOT_CERT_KEY}",
                    w.namespace
                ),
                r,
            )
        })?;

    let vars = variables(cp, w, &mesh);
    let cluster_env = render_cluster_env(
        &vars.cluster_env,
        &format!("{cm_what} (defaultConfig.proxyMetadata)"),
    )?;
    let mesh_yaml = render_mesh_yaml(cp, w, &mesh, &vars.proxy_metadata)?;
    let bindings = egress_bindings(&w.settings);
    let hosts = render_hosts(cp, input.eastwest, &bindings);
    let egress = bundle_egress(&bindings);
    let interception = match w.settings.interception {
        Interception::None => InterceptionMode::None,
        Interception::Iptables { .. } => InterceptionMode::Iptables,
    };
    let files = IstioBootstrapFiles {
        root_cert_pem: input.root_cert_pem.to_string(),
        istio_token: String::new(),
        mesh_yaml,
        cluster_env,
        hosts,
    };
    let versioned = Versioned {
        workload_entry: w.name(),
        root_cert_pem: &files.root_cert_pem,
        mesh_yaml: &files.mesh_yaml,
        cluster_env: &files.cluster_env,
        hosts: &files.hosts,
        interception,
        egress: &egress,
        istio_proxy: input.istio_proxy,
    };
    let json = serde_json::to_vec(&versioned).map_err(|e| Error::Internal(e.to_string()))?;
    let mut bundle_version = sigma_types::cert::hex(&Sha256::digest(&json));
    bundle_version.truncate(VERSION_HEX_LEN);
    Ok(RenderedBundle {
        workload_entry: w.name().to_string(),
        files,
        root_cert_sha256,
        bundle_version,
        interception,
        egress,
        istio_proxy: input.istio_proxy.cloned(),
    })
}

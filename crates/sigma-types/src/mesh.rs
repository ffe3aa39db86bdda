//! The Istio bootstrap bundle sigma-api hands a mesh-enabled VPS
//! (`GET /api/agent/istio-bootstrap`), and what the agent reports back about its mesh proxy.
//!
//! The bundle carries the same files Istio's VM onboarding (`istioctl x workload entry
//! configure`) writes, so that pilot-agent on the VPS sees exactly what it would see after a
//! manual install; the agent decides where they go on disk.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::validate::{self as v, FieldErrors};

pub mod dataplane;

pub use dataplane::MeshDataPlane;

/// Largest file in a bundle the agent accepts (the root certificate bundle is the largest: a
/// few chained CA certificates fit in far less).
pub const MAX_BUNDLE_FILE_BYTES: usize = 256 * 1024;

/// Most egress listeners a bundle may describe.
pub const MAX_BUNDLE_EGRESS: usize = 256;

/// Marker lines of the block sigma manages in `/etc/hosts`.
pub const HOSTS_BEGIN: &str = "# BEGIN sigma-istio";
/// See [`HOSTS_BEGIN`].
pub const HOSTS_END: &str = "# END sigma-istio";

/// How pilot-agent on the VPS treats traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterceptionMode {
    /// No iptables rules at all: only the explicit loopback egress listeners go through Envoy.
    #[default]
    None,
    /// Operator opt-in: outbound traffic to the listed service CIDRs only is captured.
    Iptables,
}

/// The files of a bundle, by the names istioctl gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IstioBootstrapFiles {
    /// `root-cert.pem`: the mesh's root of trust (ConfigMap `istio-ca-root-cert`).
    #[serde(rename = "root-cert.pem")]
    pub root_cert_pem: String,
    /// `istio-token`: a Kubernetes service-account token, audience `istio-ca`.
    #[serde(rename = "istio-token")]
    pub istio_token: String,
    /// `mesh.yaml`: the mesh config pilot-agent reads (`defaultConfig` …).
    #[serde(rename = "mesh.yaml")]
    pub mesh_yaml: String,
    /// `cluster.env`: sorted, shell-quoted `KEY='value'` lines.
    #[serde(rename = "cluster.env")]
    pub cluster_env: String,
    /// `hosts`: lines to place in the VPS's `/etc/hosts` managed block.
    pub hosts: String,
}

/// One loopback egress listener the purpose's Sidecar declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleEgress {
    /// The mesh service's host name (`xboard.sigma.svc.cluster.local`).
    pub host: String,
    /// Port the listener binds.
    pub port: u16,
    /// Loopback address it binds (`127.0.0.2`, …).
    pub bind: String,
}

/// Where to get pilot-agent + Envoy when the VPS lacks them (Istio's sidecar archive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IstioProxyArchive {
    /// Download URL (http or https).
    pub url: String,
    /// Lower-case hex SHA-256 of the archive.
    pub sha256: String,
    /// Istio version it holds, for reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The answer of `GET /api/agent/istio-bootstrap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IstioBootstrapBundle {
    /// The VPS.
    pub vps_id: Uuid,
    /// Its host name.
    pub hostname: String,
    /// Its WorkloadEntry's name, which is also its mesh workload name.
    pub workload_entry: String,
    /// The files.
    pub files: IstioBootstrapFiles,
    /// When `istio-token` stops being accepted.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub token_expires_at: OffsetDateTime,
    /// Lower-case hex SHA-256 of the DER of the first certificate in `root-cert.pem`.
    pub root_cert_sha256: String,
    /// Changes when anything but the token changes (the agent restarts pilot-agent then).
    pub bundle_version: String,
    /// Traffic interception on the VPS.
    pub interception: InterceptionMode,
    /// Loopback egress listeners (so the agent knows whether Envoy needs
    /// `CAP_NET_BIND_SERVICE`).
    #[serde(default)]
    pub egress: Vec<BundleEgress>,
    /// Where to get the proxy when the VPS lacks it; `None` when the operator configured none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_proxy: Option<IstioProxyArchive>,
}

impl IstioBootstrapBundle {
    /// Checks what an agent must not trust blindly before writing it to disk: sizes, the
    /// workload name, hex digests, the egress listeners. Names every bad field.
    pub fn check(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::new();
        for (name, body) in [
            ("files.root-cert.pem", &self.files.root_cert_pem),
            ("files.istio-token", &self.files.istio_token),
            ("files.mesh.yaml", &self.files.mesh_yaml),
            ("files.cluster.env", &self.files.cluster_env),
            ("files.hosts", &self.files.hosts),
        ] {
            if body.len() > MAX_BUNDLE_FILE_BYTES {
                e.add(name, format!("larger than {MAX_BUNDLE_FILE_BYTES} bytes"));
            }
            if body.contains('\0') {
                e.add(name, "contains a NUL byte");
            }
        }
        if !self
            .files
            .root_cert_pem
            .contains("-----BEGIN CERTIFICATE-----")
        {
            e.add("files.root-cert.pem", "holds no PEM certificate");
        }
        if self.files.istio_token.trim().is_empty()
            || self.files.istio_token.trim().contains(char::is_whitespace)
        {
            e.add("files.istio-token", "must be one non-empty token");
        }
        if self.files.hosts.contains(HOSTS_BEGIN) || self.files.hosts.contains(HOSTS_END) {
            e.add("files.hosts", "must not contain the managed-block markers");
        }
        if let Err(r) = v::hostname(&self.hostname) {
            e.add("hostname", r);
        }
        if self.workload_entry.is_empty()
            || self.workload_entry.len() > 253
            || !self
                .workload_entry
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            e.add("workload_entry", "must be a DNS-1123 name");
        }
        if !is_sha256_hex(&self.root_cert_sha256) {
            e.add("root_cert_sha256", "must be 64 lower-case hex digits");
        }
        if self.bundle_version.is_empty() || self.bundle_version.len() > 128 {
            e.add("bundle_version", "must be 1 to 128 characters");
        }
        if self.egress.len() > MAX_BUNDLE_EGRESS {
            e.add("egress", format!("more than {MAX_BUNDLE_EGRESS} entries"));
        }
        for (i, eg) in self.egress.iter().enumerate() {
            match eg.bind.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_loopback() => {}
                _ => e.add(format!("egress[{i}].bind"), "must be a loopback address"),
            }
            if eg.port == 0 {
                e.add(format!("egress[{i}].port"), "must be 1 to 65535");
            }
            if let Err(r) = v::hostname(&eg.host) {
                e.add(format!("egress[{i}].host"), r);
            }
        }
        if let Some(p) = &self.istio_proxy {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://"))
                || p.url.len() > 2048
            {
                e.add("istio_proxy.url", "must be an http(s) URL");
            }
            if !is_sha256_hex(&p.sha256) {
                e.add("istio_proxy.sha256", "must be 64 lower-case hex digits");
            }
        }
        e.into_result()
    }
}

/// Whether `s` is a lower-case hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where the agent's mesh proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MeshPhase {
    /// Fetching the bundle, writing files, installing pilot-agent.
    Installing,
    /// pilot-agent runs; Envoy is not ready yet.
    Starting,
    /// Envoy reports ready (`:15021/healthz/ready`).
    Ready,
    /// Running but not ready for a while, or restarting after crashes, or the bundle could not
    /// be refreshed.
    Degraded,
    /// Not running (retired, or stopped on purpose).
    Stopped,
}

impl MeshPhase {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshPhase::Installing => "installing",
            MeshPhase::Starting => "starting",
            MeshPhase::Ready => "ready",
            MeshPhase::Degraded => "degraded",
            MeshPhase::Stopped => "stopped",
        }
    }
}

/// The `mesh_state` an agent in mesh mode reports in `agent_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MeshAgentState {
    /// Where it stands.
    pub state: MeshPhase,
    /// Why, when not `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The bundle version installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<String>,
    /// When the installed token expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub token_expires_at: Option<OffsetDateTime>,
    /// When the workload certificate pilot-agent holds expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub cert_expires_at: Option<OffsetDateTime>,
    /// pilot-agent restarts since the agent started.
    #[serde(default)]
    pub restarts: u32,
    /// The data plane as read from Envoy's admin API and `/etc/hosts` (agents older than
    /// this report send none; none either while pilot-agent does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<MeshDataPlane>,
}

impl MeshAgentState {
    pub(crate) fn check(&self, field: &str, e: &mut FieldErrors) {
        if let Some(r) = &self.reason
            && let Err(m) = v::text(r, 1024)
        {
            e.add(format!("{field}.reason"), m);
        }
        if let Some(b) = &self.bundle_version
            && let Err(m) = v::line(b, 128)
        {
            e.add(format!("{field}.bundle_version"), m);
        }
        if let Some(d) = &self.dataplane {
            d.check(&format!("{field}.dataplane"), e);
        }
    }
}

/// The `Healthy` condition istiod keeps on a WorkloadEntry (from pilot-agent's readiness
/// probe reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkloadHealth {
    /// `status == "True"`.
    pub healthy: bool,
    /// The condition's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The condition's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it last changed (RFC 3339, as the API server gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One VPS's place in the mesh, desired and actual: `GET /api/vps/{id}/mesh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VpsMeshReport {
    /// The VPS.
    pub vps_id: Uuid,
    /// Its host name.
    pub hostname: String,
    /// sigma-api's mesh mode (`off`, `kubernetes`, `export`).
    pub mode: String,
    /// Whether it belongs in the mesh (active, mesh-enabled purpose, not opted out, has an
    /// address).
    pub meshed: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reconciler's recorded result.
    pub sync: crate::VpsMeshStatus,
    /// The WorkloadEntry sigma wants for it (when meshed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<serde_json::Value>,
    /// The WorkloadEntry the cluster holds (kubernetes mode, when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub actual: Option<serde_json::Value>,
    /// Whether the cluster's labels and spec equal sigma's (when both exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<bool>,
    /// istiod's health verdict on the entry, once it has given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<WorkloadHealth>,
    /// Why the cluster could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> IstioBootstrapBundle {
        IstioBootstrapBundle {
            vps_id: Uuid::nil(),
            hostname: "node-1.example.net".into(),
            workload_entry: "vps-node-1-example-net".into(),
            files: IstioBootstrapFiles {
                root_cert_pem: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"
                    .into(),
                istio_token: "eyJ.abc.def".into(),
                mesh_yaml: "defaultConfig: {}\n".into(),
                cluster_env: "CANONICAL_SERVICE='xrayr'\n".into(),
                hosts: "10.0.0.1 istiod.istio-system.svc\n".into(),
            },
            token_expires_at: OffsetDateTime::UNIX_EPOCH,
            root_cert_sha256: "a".repeat(64),
            bundle_version: "v1".into(),
            interception: InterceptionMode::None,
            egress: vec![BundleEgress {
                host: "xboard.sigma.svc.cluster.local".into(),
                port: 80,
                bind: "127.0.0.2".into(),
            }],
            istio_proxy: None,
        }
    }

    #[test]
    fn a_good_bundle_passes_and_round_trips_with_istioctl_file_names() {
        let b = bundle();
        b.check().unwrap();
        let j = serde_json::to_value(&b).unwrap();
        assert!(j["files"]["root-cert.pem"].is_string());
        assert!(j["files"]["cluster.env"].is_string());
        assert_eq!(j["interception"], "none");
        let back: IstioBootstrapBundle = serde_json::from_value(j).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = bundle();
        b.files.hosts = format!("{HOSTS_END}\n");
        b.egress[0].bind = "10.0.0.2".into();
        b.root_cert_sha256 = "XYZ".into();
        b.workload_entry = "Bad_Name".into();
        b.files.istio_token = "two words".into();
        let e = b.check().unwrap_err();
        let s = format!("{e:?}");
        for f in [
            "files.hosts",
            "egress[0].bind",
            "root_cert_sha256",
            "workload_entry",
            "files.istio-token",
        ] {
            assert!(s.contains(f), "{f} not named in {s}");
        }
    }
}

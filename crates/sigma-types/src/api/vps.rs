//! A VPS as the API shows it, its inventory fields as created and changed, and the mesh
//! reconciler's status of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    AgentState, IpAddress, MAX_NAME_LEN, MAX_OBJECT_BYTES, VpsStatus, check_extra, normalize_ips,
    normalize_tags, opt, opt2,
};
use crate::patch::{double_option, non_null};
use crate::validate::{self as v, FieldErrors, Normalize};

/// What an agent reports about its host. Known fields are typed; anything else a newer agent
/// sends is kept as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemInfo {
    /// Logical CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    /// Total memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Available memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_available_bytes: Option<u64>,
    /// Root filesystem size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Root filesystem bytes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// 1, 5 and 15 minute load averages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 3, max_items = 3)]
    pub load_average: Option<[f64; 3]>,
    /// Operating system (e.g. `Debian GNU/Linux 12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// sigma-agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Fields this version of sigma does not know.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl SystemInfo {
    pub(super) fn check(&self, field: &str, e: &mut FieldErrors) {
        for (k, s) in [
            ("os", &self.os),
            ("kernel", &self.kernel),
            ("agent_version", &self.agent_version),
        ] {
            if let Some(s) = s
                && let Err(r) = v::line(s, 256)
            {
                e.add(format!("{field}.{k}"), r);
            }
        }
        check_extra(&self.extra, field, e);
        if let Some(l) = self.load_average
            && l.iter().any(|x| !x.is_finite() || *x < 0.0)
        {
            e.add(format!("{field}.load_average"), "must be finite and >= 0");
        }
        if serde_json::to_vec(self).map_or(0, |b| b.len()) > MAX_OBJECT_BYTES {
            e.add(field, format!("larger than {MAX_OBJECT_BYTES} bytes"));
        }
    }
}

/// A VPS of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Vps {
    /// Stable id.
    pub id: Uuid,
    /// Hostname, lower case; unique among VPS that are not deleted.
    pub hostname: String,
    /// A short name for people.
    pub alias: Option<String>,
    /// Provider name.
    pub provider: Option<String>,
    /// Addresses with their labels.
    pub ip_addresses: Vec<IpAddress>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Purpose name.
    pub purpose: String,
    /// Lifecycle status.
    pub status: VpsStatus,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Whether node-exporter on it is scraped.
    pub monitoring: bool,
    /// node-exporter port.
    pub node_exporter_port: u16,
    /// What its agent last reported about the host.
    pub system_info: Option<SystemInfo>,
    /// What its agent last reported about what it manages.
    pub agent_state: Option<AgentState>,
    /// When its agent last reported.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// Changes whenever anything its agent must apply changes.
    pub desired_version: i64,
    /// Version of its Envoy routes (classic mode).
    pub envoy_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Last changed at (heartbeats do not count).
    pub updated_at: OffsetDateTime,
    /// When it was soft-deleted.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<OffsetDateTime>,
    /// Kept out of the mesh by an operator, whatever its purpose says.
    #[serde(default)]
    pub mesh_opt_out: bool,
    /// Where the mesh reconciler stands with this VPS.
    #[serde(default)]
    pub mesh: VpsMeshStatus,
    /// Contract terms and rented specs (cost, dates, specs, SSH port, data centre).
    #[serde(default)]
    pub contract: crate::VpsContract,
}

/// How far the mesh reconciler got with a VPS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeshSyncStatus {
    /// Changed since the reconciler last acted on it (or never reconciled: mesh mode `off` or
    /// `export`, or no replica is leading).
    #[default]
    Pending,
    /// Its WorkloadEntry is in the cluster as desired.
    Synced,
    /// The reconciler could not bring it to the desired state; `message` says why.
    Error,
    /// It has no place in the mesh (not active, opted out, or its purpose has the mesh off);
    /// any WorkloadEntry it had was removed. `message` says why.
    NotMeshed,
}

impl MeshSyncStatus {
    /// Every status.
    pub const ALL: [MeshSyncStatus; 4] = [
        MeshSyncStatus::Pending,
        MeshSyncStatus::Synced,
        MeshSyncStatus::Error,
        MeshSyncStatus::NotMeshed,
    ];

    /// Stored and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshSyncStatus::Pending => "pending",
            MeshSyncStatus::Synced => "synced",
            MeshSyncStatus::Error => "error",
            MeshSyncStatus::NotMeshed => "not_meshed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<MeshSyncStatus> {
        MeshSyncStatus::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// The mesh reconciler's last result for a VPS, stored so every replica shows the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VpsMeshStatus {
    /// Where it stands.
    pub status: MeshSyncStatus,
    /// Why it is `error` or `not_meshed`.
    pub message: Option<String>,
    /// When the reconciler last changed this result.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// Name of its WorkloadEntry in the cluster, once applied.
    pub workload_entry: Option<String>,
}

impl Vps {
    /// The first address labelled `public`, if any.
    pub fn public_ip(&self) -> Option<&str> {
        self.ip_addresses
            .iter()
            .find(|a| a.label == "public")
            .map(|a| a.ip.as_str())
    }
}

fn default_true() -> bool {
    true
}

fn default_node_exporter_port() -> i64 {
    9100
}

/// Creates a VPS.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpsCreate {
    /// Hostname.
    pub hostname: String,
    /// Short name for people.
    #[serde(default)]
    pub alias: Option<String>,
    /// Provider name (must exist).
    #[serde(default)]
    pub provider: Option<String>,
    /// Addresses.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddress>,
    /// ISO 3166-1 alpha-2 country.
    #[serde(default)]
    pub country: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// Purpose name (must exist).
    pub purpose: String,
    /// `provisioning` (default) or `active`.
    #[serde(default)]
    pub status: Option<VpsStatus>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Scrape node-exporter (default true).
    #[serde(default = "default_true")]
    pub monitoring: bool,
    /// node-exporter port (default 9100).
    #[serde(default = "default_node_exporter_port")]
    pub node_exporter_port: i64,
    /// Keep it out of the mesh (default false).
    #[serde(default)]
    pub mesh_opt_out: bool,
}

impl Normalize for VpsCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let hostname = e.check("hostname", v::hostname(&self.hostname));
        let alias = opt(self.alias, "alias", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let provider = opt(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let ip_addresses = normalize_ips(self.ip_addresses, "ip_addresses", &mut e);
        let country = opt(self.country, "country", &mut e, v::country);
        let city = opt(self.city, "city", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let purpose = e.check("purpose", v::dns_label(&self.purpose));
        if let Some(s) = self.status
            && !matches!(s, VpsStatus::Provisioning | VpsStatus::Active)
        {
            e.add("status", "a new VPS is provisioning or active");
        }
        let tags = normalize_tags(self.tags, "tags", &mut e);
        e.check("node_exporter_port", v::port(self.node_exporter_port));
        e.into_result()?;
        Ok(VpsCreate {
            hostname: hostname.unwrap_or_default(),
            alias,
            provider,
            ip_addresses,
            country,
            city,
            purpose: purpose.unwrap_or_default(),
            status: Some(self.status.unwrap_or(VpsStatus::Provisioning)),
            tags,
            monitoring: self.monitoring,
            node_exporter_port: self.node_exporter_port,
            mesh_opt_out: self.mesh_opt_out,
        })
    }
}

/// Changes a VPS: absent fields stay, `null` clears a field that may be empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpsPatch {
    /// New hostname.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub hostname: Option<Option<String>>,
    /// New alias, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub alias: Option<Option<String>>,
    /// New provider name, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub provider: Option<Option<String>>,
    /// New address list (replaces it); `null` empties it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<IpAddress>>)]
    pub ip_addresses: Option<Option<Vec<IpAddress>>>,
    /// New country, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub country: Option<Option<String>>,
    /// New city, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub city: Option<Option<String>>,
    /// New purpose.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub purpose: Option<Option<String>>,
    /// New status (only lifecycle moves an operator may make).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<VpsStatus>)]
    pub status: Option<Option<VpsStatus>>,
    /// New tag list (replaces it); `null` empties it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<String>>)]
    pub tags: Option<Option<Vec<String>>>,
    /// Scrape node-exporter.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<bool>)]
    pub monitoring: Option<Option<bool>>,
    /// node-exporter port.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<i64>)]
    pub node_exporter_port: Option<Option<i64>>,
}

impl Normalize for VpsPatch {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let hostname = non_null(self.hostname, "hostname", &mut e)
            .and_then(|s| e.check("hostname", v::hostname(&s)))
            .map(Some);
        let alias = opt2(self.alias, "alias", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let provider = opt2(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let ip_addresses = self
            .ip_addresses
            .map(|o| Some(normalize_ips(o.unwrap_or_default(), "ip_addresses", &mut e)));
        let country = opt2(self.country, "country", &mut e, v::country);
        let city = opt2(self.city, "city", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let purpose = non_null(self.purpose, "purpose", &mut e)
            .and_then(|s| e.check("purpose", v::dns_label(&s)))
            .map(Some);
        let status = non_null(self.status, "status", &mut e);
        if status == Some(VpsStatus::Deleted) {
            e.add("status", "use DELETE /api/vps/{id} to delete a VPS");
        }
        let tags = self
            .tags
            .map(|o| Some(normalize_tags(o.unwrap_or_default(), "tags", &mut e)));
        let monitoring = non_null(self.monitoring, "monitoring", &mut e).map(Some);
        let node_exporter_port = non_null(self.node_exporter_port, "node_exporter_port", &mut e)
            .and_then(|p| e.check("node_exporter_port", v::port(p)).map(i64::from))
            .map(Some);
        e.into_result()?;
        Ok(VpsPatch {
            hostname,
            alias,
            provider,
            ip_addresses,
            country,
            city,
            purpose,
            status: status.map(Some),
            tags,
            monitoring,
            node_exporter_port,
        })
    }
}

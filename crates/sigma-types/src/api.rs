//! The JSON bodies of sigma-api's HTTP interface.
//!
//! Request bodies that operators write reject unknown fields, so a misspelt field is an error
//! rather than silently ignored. Bodies that agents send accept unknown fields, so a newer agent
//! can talk to an older sigma-api.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::patch::{double_option, non_null};
use crate::validate::{self as v, FieldErrors, Normalize};

/// Longest alias, city, display name, provider name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest notes field.
pub const MAX_NOTES_LEN: usize = 4096;
/// Most addresses one VPS may list.
pub const MAX_IPS: usize = 64;
/// Most tags on one VPS.
pub const MAX_TAGS: usize = 64;
/// Largest serialized `system_info` or `mesh` object, in bytes.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size of list endpoints.
pub const MAX_LIMIT: i64 = 1000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including keys and the audit log.
    Admin,
    /// The inventory and enrollment tokens.
    Operator,
    /// Reads only.
    Readonly,
    /// One VPS's agent: register and heartbeat as that VPS only.
    Agent,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Readonly => "readonly",
            Role::Agent => "agent",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "readonly" => Role::Readonly,
            "agent" => Role::Agent,
            _ => return None,
        })
    }
}

/// Where a VPS is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VpsStatus {
    /// Known to the inventory, its agent has not registered yet.
    Provisioning,
    /// In service.
    Active,
    /// Being taken out of service: its agent stops what it manages.
    Retiring,
    /// Out of service; its agent may still report, nothing is re-activated by it.
    Retired,
    /// Soft-deleted; can be restored.
    Deleted,
}

impl VpsStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [VpsStatus; 5] = [
        VpsStatus::Provisioning,
        VpsStatus::Active,
        VpsStatus::Retiring,
        VpsStatus::Retired,
        VpsStatus::Deleted,
    ];

    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            VpsStatus::Provisioning => "provisioning",
            VpsStatus::Active => "active",
            VpsStatus::Retiring => "retiring",
            VpsStatus::Retired => "retired",
            VpsStatus::Deleted => "deleted",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<VpsStatus> {
        VpsStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether an operator may move a VPS from `self` to `to` by editing its status.
    /// Deleting and restoring have endpoints of their own.
    pub fn can_become(self, to: VpsStatus) -> bool {
        use VpsStatus::*;
        self == to
            || matches!(
                (self, to),
                (Provisioning, Active)
                    | (Provisioning, Retiring)
                    | (Provisioning, Retired)
                    | (Active, Retiring)
                    | (Active, Retired)
                    | (Retiring, Active)
                    | (Retiring, Retired)
                    | (Retired, Provisioning)
            )
    }
}

/// One address of a VPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpAddress {
    /// IPv4 or IPv6 address.
    pub ip: String,
    /// `public`, `private`, or an operator's own label.
    pub label: String,
}

fn normalize_ips(ips: Vec<IpAddress>, field: &str, e: &mut FieldErrors) -> Vec<IpAddress> {
    if ips.len() > MAX_IPS {
        e.add(field, format!("at most {MAX_IPS} addresses"));
        return ips;
    }
    let mut out: Vec<IpAddress> = Vec::with_capacity(ips.len());
    for (i, a) in ips.into_iter().enumerate() {
        let ip = e.check(&format!("{field}[{i}].ip"), v::ip(&a.ip));
        let label = e.check(&format!("{field}[{i}].label"), v::ip_label(&a.label));
        if let (Some(ip), Some(label)) = (ip, label) {
            if out.iter().any(|o| o.ip == ip) {
                // `v::ip` has already turned `::ffff:a.b.c.d` into `a.b.c.d`, so both
                // spellings of one address meet here and are refused, not stored twice.
                let spelled = if a.ip.trim() == ip {
                    String::new()
                } else {
                    format!(" ({:?} is the same address)", a.ip)
                };
                e.add(
                    format!("{field}[{i}].ip"),
                    format!("{ip} is listed twice{spelled}"),
                );
            } else {
                out.push(IpAddress { ip, label });
            }
        }
    }
    out
}

fn normalize_tags(tags: Vec<String>, field: &str, e: &mut FieldErrors) -> Vec<String> {
    if tags.len() > MAX_TAGS {
        e.add(field, format!("at most {MAX_TAGS} tags"));
        return tags;
    }
    let mut out: Vec<String> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        if let Some(t) = e.check(&format!("{field}[{i}]"), v::tag(t))
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out.sort();
    out
}

fn check_object(value: &serde_json::Value, field: &str, e: &mut FieldErrors) {
    if !value.is_object() {
        e.add(field, "must be a JSON object");
    } else if serde_json::to_vec(value).map_or(0, |b| b.len()) > MAX_OBJECT_BYTES {
        e.add(field, format!("larger than {MAX_OBJECT_BYTES} bytes"));
    } else {
        v::json_strings(value, field, e);
    }
}

/// Checks the free-form fields an agent sends beside the known ones (see [`v::json_strings`]).
fn check_extra(extra: &BTreeMap<String, serde_json::Value>, field: &str, e: &mut FieldErrors) {
    for (k, value) in extra {
        let mut one = serde_json::Map::new();
        one.insert(k.clone(), value.clone());
        v::json_strings(&serde_json::Value::Object(one), field, e);
    }
}

/// A provider's own name: a single-line name that does not parse as a UUID, since every
/// endpoint that takes "a provider id or name" reads a UUID as an id (a provider named like
/// one could not be reached by name).
pub fn provider_name(s: &str) -> Result<String, String> {
    let n = v::name(s, MAX_NAME_LEN)?;
    if Uuid::parse_str(&n).is_ok() {
        return Err(format!(
            "{n:?} reads as a UUID, which the API takes as a provider id; choose another name"
        ));
    }
    Ok(n)
}

fn opt<T>(
    v: Option<String>,
    field: &str,
    e: &mut FieldErrors,
    f: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    v.and_then(|s| e.check(field, f(&s)))
}

fn opt2<T>(
    v: Option<Option<String>>,
    field: &str,
    e: &mut FieldErrors,
    f: impl Fn(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    match v {
        None => None,
        Some(None) => Some(None),
        Some(Some(s)) => e.check(field, f(&s)).map(Some),
    }
}

/// A list page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// How many items match, over all pages.
    pub total: i64,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code (`validation`, `not_found`, `conflict`, …).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// For validation errors: the reason per field path.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Providers

/// A hosting provider VPS are rented from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country of the provider.
    pub country: Option<String>,
    /// Website.
    pub website: Option<String>,
    /// Free notes.
    pub notes: Option<String>,
    /// How many VPS (not deleted) are rented from it.
    pub vps_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Last changed at.
    pub updated_at: OffsetDateTime,
}

/// Creates a provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderCreate {
    /// Unique name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country.
    #[serde(default)]
    pub country: Option<String>,
    /// Website (http or https URL).
    #[serde(default)]
    pub website: Option<String>,
    /// Free notes.
    #[serde(default)]
    pub notes: Option<String>,
}

impl Normalize for ProviderCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = e.check("name", provider_name(&self.name));
        let country = opt(self.country, "country", &mut e, v::country);
        let website = opt(self.website, "website", &mut e, v::url);
        let notes = opt(self.notes, "notes", &mut e, |s| v::text(s, MAX_NOTES_LEN));
        e.into_result()?;
        Ok(ProviderCreate {
            name: name.unwrap_or_default(),
            country,
            website,
            notes,
        })
    }
}

/// Changes a provider: absent fields stay, `null` clears.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderPatch {
    /// New name.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// New country, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub country: Option<Option<String>>,
    /// New website, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub website: Option<Option<String>>,
    /// New notes, or `null`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub notes: Option<Option<String>>,
}

impl Normalize for ProviderPatch {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = non_null(self.name, "name", &mut e)
            .and_then(|s| e.check("name", provider_name(&s)))
            .map(Some);
        let country = opt2(self.country, "country", &mut e, v::country);
        let website = opt2(self.website, "website", &mut e, v::url);
        let notes = opt2(self.notes, "notes", &mut e, |s| v::text(s, MAX_NOTES_LEN));
        e.into_result()?;
        Ok(ProviderPatch {
            name,
            country,
            website,
            notes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Purposes

/// What a VPS is for (`xrayr`, `vpn-exit`, …); it becomes the `app` of its mesh workload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Purpose {
    /// A DNS-1123 label; immutable.
    pub name: String,
    /// Name shown to people.
    pub display_name: String,
    /// Mesh settings of this purpose's workloads (a JSON object).
    ///
    /// Fields (all optional): `enabled`, `service_account`, `ports` (served to the mesh: `name`,
    /// `number` the service port clients call, `protocol`, `target_port` where the application
    /// listens when it differs, `mesh_port` the VPS Envoy's mTLS listener for the port, which
    /// must differ from every application port, lie outside 15000-15099, 15443 and sigma-agent's
    /// 9102/9901/18000, be 1024 or above; sigma picks one in 15100-16099 when absent), `egress`
    /// (`host`, `port`, `protocol`, `bind`), `probe`, `network`, `interception`. Problems are
    /// named by path, e.g. `mesh.ports[0].mesh_port`.
    #[schema(value_type = Object)]
    pub mesh: serde_json::Value,
    /// How many VPS (deleted ones included) have this purpose.
    pub vps_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Last changed at.
    pub updated_at: OffsetDateTime,
}

/// Creates a purpose.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurposeCreate {
    /// A DNS-1123 label.
    pub name: String,
    /// Name shown to people; defaults to `name`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Mesh settings (a JSON object); defaults to `{}`.
    ///
    /// Fields (all optional): `enabled`, `service_account`, `ports` (served to the mesh: `name`,
    /// `number` the service port clients call, `protocol`, `target_port` where the application
    /// listens when it differs, `mesh_port` the VPS Envoy's mTLS listener for the port, which
    /// must differ from every application port, lie outside 15000-15099, 15443 and sigma-agent's
    /// 9102/9901/18000, be 1024 or above; sigma picks one in 15100-16099 when absent), `egress`
    /// (`host`, `port`, `protocol`, `bind`), `probe`, `network`, `interception`. Problems are
    /// named by path, e.g. `mesh.ports[0].mesh_port`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub mesh: Option<serde_json::Value>,
}

impl Normalize for PurposeCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = e.check("name", v::dns_label(&self.name));
        let display_name = opt(self.display_name, "display_name", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        if let Some(m) = &self.mesh {
            check_object(m, "mesh", &mut e);
        }
        e.into_result()?;
        let name = name.unwrap_or_default();
        Ok(PurposeCreate {
            display_name: Some(display_name.unwrap_or_else(|| name.clone())),
            name,
            mesh: Some(self.mesh.unwrap_or_else(|| serde_json::json!({}))),
        })
    }
}

/// Changes a purpose. Its name cannot change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurposePatch {
    /// New display name.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    /// New mesh settings (replaces the whole object).
    ///
    /// Fields (all optional): `enabled`, `service_account`, `ports` (served to the mesh: `name`,
    /// `number` the service port clients call, `protocol`, `target_port` where the application
    /// listens when it differs, `mesh_port` the VPS Envoy's mTLS listener for the port, which
    /// must differ from every application port, lie outside 15000-15099, 15443 and sigma-agent's
    /// 9102/9901/18000, be 1024 or above; sigma picks one in 15100-16099 when absent), `egress`
    /// (`host`, `port`, `protocol`, `bind`), `probe`, `network`, `interception`. Problems are
    /// named by path, e.g. `mesh.ports[0].mesh_port`.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Object>)]
    pub mesh: Option<Option<serde_json::Value>>,
}

impl Normalize for PurposePatch {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let display_name = non_null(self.display_name, "display_name", &mut e)
            .and_then(|s| e.check("display_name", v::name(&s, MAX_NAME_LEN)))
            .map(Some);
        let mesh = non_null(self.mesh, "mesh", &mut e);
        if let Some(m) = &mesh {
            check_object(m, "mesh", &mut e);
        }
        e.into_result()?;
        Ok(PurposePatch {
            display_name,
            mesh: mesh.map(Some),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// VPS

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
    fn check(&self, field: &str, e: &mut FieldErrors) {
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

/// The body of `PATCH /api/vps/{id}`: the fields of [`VpsPatch`] plus `mesh_opt_out`.
///
/// `mesh_opt_out` is carried beside [`VpsPatch`] rather than in it so that code building a
/// `VpsPatch` literal keeps compiling.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct VpsPatchBody {
    /// The inventory fields.
    #[serde(flatten)]
    pub patch: VpsPatch,
    /// `true` keeps the VPS out of the mesh, `false` lets it join; cannot be `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_opt_out: Option<bool>,
}

impl VpsPatchBody {
    /// Decodes a request body, naming the field of every mistake like the other bodies do.
    pub fn from_json(body: serde_json::Value) -> Result<VpsPatchBody, FieldErrors> {
        Self::from_json_with(body, |v| {
            serde_path_to_error::deserialize(v).map_err(|err| {
                let path = err.path().to_string();
                let field = if path == "." || path.is_empty() {
                    "body".to_string()
                } else {
                    path
                };
                let mut e = FieldErrors::new();
                e.add(field, err.into_inner().to_string());
                e
            })
        })
    }

    /// [`Self::from_json`] with the caller's decoder for the patch itself: sigma-api passes its
    /// strict one (no struct in serde's positional array form), so this body follows the same
    /// rules as every other.
    pub fn from_json_with(
        mut body: serde_json::Value,
        decode: impl FnOnce(serde_json::Value) -> Result<VpsPatch, FieldErrors>,
    ) -> Result<VpsPatchBody, FieldErrors> {
        let mut e = FieldErrors::new();
        let mut mesh_opt_out = None;
        match body.as_object_mut() {
            Some(map) => match map.remove("mesh_opt_out") {
                None => {}
                Some(serde_json::Value::Bool(b)) => mesh_opt_out = Some(b),
                Some(serde_json::Value::Null) => e.add("mesh_opt_out", "cannot be null"),
                Some(other) => e.add(
                    "mesh_opt_out",
                    format!("invalid type: {other}, expected a boolean"),
                ),
            },
            None => e.add("body", "expected a JSON object"),
        }
        e.into_result()?;
        let patch = decode(body)?;
        Ok(VpsPatchBody {
            patch: patch.normalize()?,
            mesh_opt_out,
        })
    }
}

/// Filters and page of `GET /api/vps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VpsQuery {
    /// Only this status (`deleted` lists deleted VPS; by default they are left out).
    pub status: Option<VpsStatus>,
    /// Only this purpose.
    pub purpose: Option<String>,
    /// Only this country.
    pub country: Option<String>,
    /// Only this provider (name).
    pub provider: Option<String>,
    /// Only VPS with this tag.
    pub tag: Option<String>,
    /// Exactly this hostname (case-insensitive).
    pub hostname: Option<String>,
    /// Case-insensitive text search in hostname, alias, city and addresses.
    pub q: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl Normalize for VpsQuery {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let purpose = opt(self.purpose, "purpose", &mut e, v::dns_label);
        let country = opt(self.country, "country", &mut e, v::country);
        let provider = opt(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let tag = opt(self.tag, "tag", &mut e, v::tag);
        let hostname = opt(self.hostname, "hostname", &mut e, v::hostname);
        let q = opt(self.q, "q", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let (limit, offset) = page(self.limit, self.offset, &mut e);
        e.into_result()?;
        Ok(VpsQuery {
            status: self.status,
            purpose,
            country,
            provider,
            tag,
            hostname,
            q,
            limit: Some(limit),
            offset: Some(offset),
        })
    }
}

/// Checks a page's limit and offset, returning them with defaults applied.
pub fn page(limit: Option<i64>, offset: Option<i64>, e: &mut FieldErrors) -> (i64, i64) {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        e.add("limit", format!("must be 1-{MAX_LIMIT}"));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        e.add("offset", "must be >= 0");
    }
    (limit, offset)
}

/// Query of `POST /api/vps/{id}/retire`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetireQuery {
    /// Skip `retiring` and mark it `retired` at once (for a VPS whose agent is gone).
    #[serde(default)]
    pub force: bool,
}

// ---------------------------------------------------------------------------------------------
// Keys and enrollment tokens

/// An API key as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Stable id.
    pub id: Uuid,
    /// First characters of the key: enough to recognise it, not to use it.
    pub prefix: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The one VPS an agent key acts for.
    pub vps_id: Option<Uuid>,
    /// Who created it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    /// Last used at (updated at most once a minute).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// Expires at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Revoked at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Longest lifetime of a key or an enrollment token: ten years.
pub const MAX_TTL_SECONDS: i64 = 10 * 366 * 24 * 3600;

/// Creates an API key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For `agent` keys: the VPS it acts for (required for them, refused for other roles).
    #[serde(default)]
    pub vps_id: Option<Uuid>,
    /// Lifetime in seconds; none means it does not expire.
    #[serde(default)]
    #[schema(minimum = 60, maximum = 316_224_000)]
    pub ttl_seconds: Option<i64>,
}

impl Normalize for ApiKeyCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = e.check("name", v::name(&self.name, MAX_NAME_LEN));
        match (self.role, self.vps_id) {
            (Role::Agent, None) => e.add("vps_id", "an agent key must be bound to a VPS"),
            (r, Some(_)) if r != Role::Agent => {
                e.add("vps_id", "only agent keys are bound to a VPS")
            }
            _ => {}
        }
        if let Some(t) = self.ttl_seconds
            && !(60..=MAX_TTL_SECONDS).contains(&t)
        {
            e.add("ttl_seconds", format!("must be 60-{MAX_TTL_SECONDS}"));
        }
        e.into_result()?;
        Ok(ApiKeyCreate {
            name: name.unwrap_or_default(),
            ..self
        })
    }
}

/// A new API key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key itself; send it as `Authorization: Bearer <key>`.
    pub key: String,
    /// The key as it will be listed.
    pub api_key: ApiKey,
}

/// Values applied to VPS that enroll with a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentPresets {
    /// Purpose of new VPS.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Provider (name) of new VPS.
    #[serde(default)]
    pub provider: Option<String>,
    /// Country of new VPS.
    #[serde(default)]
    pub country: Option<String>,
    /// Tags of new VPS.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    /// Stable id.
    pub id: Uuid,
    /// First characters of the token.
    pub prefix: String,
    /// What it is for.
    pub name: String,
    /// Presets applied to VPS that enroll with it. A provider preset follows its provider
    /// (shown under its current name); the names of a deleted provider or purpose stay as they
    /// were, on tokens that deleting it revoked.
    pub presets: EnrollmentPresets,
    /// The one VPS this token may re-enroll (a reinstall token; see `docs/security.md`).
    /// Such a token has no presets, serves one enrollment, and enrolls no other hostname.
    #[serde(default)]
    pub vps_id: Option<Uuid>,
    /// How many enrollments it allows.
    pub max_uses: i64,
    /// How many it has served.
    pub uses: i64,
    /// Who created it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Created at.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// Expires at.
    pub expires_at: OffsetDateTime,
    /// Revoked at.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

fn default_token_ttl() -> i64 {
    24 * 3600
}

fn default_max_uses() -> i64 {
    1
}

/// Most enrollments one token may serve.
pub const MAX_TOKEN_USES: i64 = 1_000_000;

/// Creates an enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenCreate {
    /// What it is for.
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds (default one day; a token bound to a VPS lives at most one day).
    #[serde(default = "default_token_ttl")]
    #[schema(minimum = 60, maximum = 316_224_000)]
    pub ttl_seconds: i64,
    /// How many VPS may enroll with it (default 1).
    #[serde(default = "default_max_uses")]
    pub max_uses: i64,
    /// Presets for VPS that enroll with it.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Provider preset (name; must exist).
    #[serde(default)]
    pub provider: Option<String>,
    /// Country preset.
    #[serde(default)]
    pub country: Option<String>,
    /// Tags preset.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Binds the token to this VPS: it may only re-enroll that VPS (a reinstall of its
    /// agent), which revokes the VPS's agent key. Single use (`max_uses` 1), at most
    /// [`MAX_BOUND_TOKEN_TTL_SECONDS`], and without presets.
    #[serde(default)]
    pub vps_id: Option<Uuid>,
}

/// Longest lifetime of a token bound to a VPS: one day.
pub const MAX_BOUND_TOKEN_TTL_SECONDS: i64 = 24 * 3600;

impl Normalize for EnrollmentTokenCreate {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let name = opt(self.name, "name", &mut e, |s| v::name(s, MAX_NAME_LEN));
        if !(60..=MAX_TTL_SECONDS).contains(&self.ttl_seconds) {
            e.add("ttl_seconds", format!("must be 60-{MAX_TTL_SECONDS}"));
        }
        if !(1..=MAX_TOKEN_USES).contains(&self.max_uses) {
            e.add("max_uses", format!("must be 1-{MAX_TOKEN_USES}"));
        }
        let purpose = opt(self.purpose, "purpose", &mut e, v::dns_label);
        let provider = opt(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let country = opt(self.country, "country", &mut e, v::country);
        let tags = normalize_tags(self.tags, "tags", &mut e);
        if self.vps_id.is_some() {
            // A bound token re-enrolls an existing VPS as it is: presets would not apply, and
            // a reinstall credential must be single-use and short-lived.
            let why = "a token bound to a VPS (vps_id) re-enrolls that VPS as it is; presets do not apply";
            if purpose.is_some() {
                e.add("purpose", why);
            }
            if provider.is_some() {
                e.add("provider", why);
            }
            if country.is_some() {
                e.add("country", why);
            }
            if !tags.is_empty() {
                e.add("tags", why);
            }
            if self.max_uses != 1 {
                e.add(
                    "max_uses",
                    "a token bound to a VPS (vps_id) serves one enrollment",
                );
            }
            if self.ttl_seconds > MAX_BOUND_TOKEN_TTL_SECONDS {
                e.add(
                    "ttl_seconds",
                    format!(
                        "a token bound to a VPS (vps_id) lives at most {MAX_BOUND_TOKEN_TTL_SECONDS} seconds"
                    ),
                );
            }
        }
        e.into_result()?;
        Ok(EnrollmentTokenCreate {
            name: Some(name.unwrap_or_else(|| "enrollment".into())),
            purpose,
            provider,
            country,
            tags,
            ..self
        })
    }
}

/// A new enrollment token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenCreated {
    /// The token; give it to the agent as `SIGMA_ENROLLMENT_TOKEN`.
    pub token: String,
    /// The token as it will be listed.
    pub enrollment_token: EnrollmentToken,
}

// ---------------------------------------------------------------------------------------------
// Agent

/// First contact (with an enrollment token) or re-registration (with the agent key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// The host's name.
    pub hostname: String,
    /// Its addresses.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddress>,
    /// What it knows of itself.
    #[serde(default)]
    pub system_info: Option<SystemInfo>,
    /// Purpose of a new VPS when the enrollment token has no purpose preset.
    #[serde(default)]
    pub purpose: Option<String>,
}

impl Normalize for RegisterRequest {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let hostname = e.check("hostname", v::hostname(&self.hostname));
        let ip_addresses = normalize_ips(self.ip_addresses, "ip_addresses", &mut e);
        if let Some(s) = &self.system_info {
            s.check("system_info", &mut e);
        }
        let purpose = opt(self.purpose, "purpose", &mut e, v::dns_label);
        e.into_result()?;
        Ok(RegisterRequest {
            hostname: hostname.unwrap_or_default(),
            ip_addresses,
            system_info: self.system_info,
            purpose,
        })
    }
}

/// What an agent must apply; carried by every heartbeat and register response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    /// The VPS's id.
    pub vps_id: Uuid,
    /// Its lifecycle status: an agent of a `retiring` or `retired` VPS stops what it manages.
    pub status: VpsStatus,
    /// Changes whenever anything here changes.
    pub desired_version: i64,
    /// Version of the VPS's Envoy routes: fetch them again when it changes.
    pub envoy_version: i64,
}

/// Answer to a register.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    /// The VPS as stored.
    pub vps: Vps,
    /// A new key bound to this VPS, only on first contact with an enrollment token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key: Option<String>,
    /// What the agent must apply.
    pub desired: DesiredState,
}

/// How an agent runs its VPS's proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// sigma-agent serves xDS to the local Envoy (Envoy routes from sigma-api).
    Classic,
    /// pilot-agent and Envoy, managed by istiod.
    Mesh,
}

/// An xDS update the local Envoy rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NackReport {
    /// Version that was rejected.
    pub version: String,
    /// xDS type URL.
    pub type_url: String,
    /// Envoy's error detail.
    pub detail: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// What an agent reports about what it manages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentState {
    /// Its mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AgentMode>,
    /// Envoy routes version the local Envoy has accepted (classic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_applied_version: Option<i64>,
    /// Envoys connected to its xDS server (classic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_clients: Option<u32>,
    /// The last update Envoy rejected, if the latest one was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackReport>,
    /// Mesh mode: where pilot-agent and Envoy stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_state: Option<crate::mesh::MeshAgentState>,
    /// Fields this version of sigma does not know (mesh-mode details, …).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl AgentState {
    fn check(&self, field: &str, e: &mut FieldErrors) {
        if let Some(n) = &self.last_nack {
            for (k, v, max, lines) in [
                ("version", &n.version, 256, v::Lines::Single),
                ("type_url", &n.type_url, 256, v::Lines::Single),
                ("detail", &n.detail, 4096, v::Lines::Multi),
            ] {
                let r = match lines {
                    v::Lines::Single => v::line(v, max),
                    v::Lines::Multi => v::text(v, max),
                };
                if let Err(r) = r {
                    e.add(format!("{field}.last_nack.{k}"), r);
                }
            }
        }
        check_extra(&self.extra, field, e);
        if let Some(m) = &self.mesh_state {
            m.check(&format!("{field}.mesh_state"), e);
        }
        if serde_json::to_vec(self).map_or(0, |b| b.len()) > MAX_OBJECT_BYTES {
            e.add(field, format!("larger than {MAX_OBJECT_BYTES} bytes"));
        }
    }
}

/// A heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    /// The host's name (must be the key's VPS).
    pub hostname: String,
    /// Its addresses, when the agent reports them.
    #[serde(default)]
    pub ip_addresses: Option<Vec<IpAddress>>,
    /// What it knows of itself.
    #[serde(default)]
    pub system_info: Option<SystemInfo>,
    /// The desired version the agent has applied.
    #[serde(default)]
    pub applied_version: Option<i64>,
    /// What the agent reports about what it manages.
    #[serde(default)]
    pub agent_state: Option<AgentState>,
}

impl Normalize for HeartbeatRequest {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let hostname = e.check("hostname", v::hostname(&self.hostname));
        let ip_addresses = self
            .ip_addresses
            .map(|ips| normalize_ips(ips, "ip_addresses", &mut e));
        if let Some(s) = &self.system_info {
            s.check("system_info", &mut e);
        }
        if let Some(a) = self.applied_version
            && a < 0
        {
            e.add("applied_version", "must be >= 0");
        }
        if let Some(s) = &self.agent_state {
            s.check("agent_state", &mut e);
        }
        e.into_result()?;
        Ok(HeartbeatRequest {
            hostname: hostname.unwrap_or_default(),
            ip_addresses,
            ..self
        })
    }
}

/// Answer to a heartbeat: the desired state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// The VPS's id.
    pub vps_id: Uuid,
    /// Its lifecycle status.
    pub status: VpsStatus,
    /// Changes whenever anything the agent must apply changes.
    pub desired_version: i64,
    /// Version of the VPS's Envoy routes: fetch them again when it changes.
    pub envoy_version: i64,
    /// The server's clock, so an agent can tell its own is off.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub server_time: OffsetDateTime,
}

// ---------------------------------------------------------------------------------------------
// Audit

/// One recorded mutation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    /// When.
    pub at: OffsetDateTime,
    /// Who: `key:<prefix>` for a person's key, `agent:<hostname>` for an agent,
    /// `enroll:<prefix>` for an enrollment, `system` for sigma itself.
    pub actor: String,
    /// What (`vps.create`, `vps.retire`, `api_key.revoke`, …).
    pub action: String,
    /// Kind of resource (`vps`, `provider`, …).
    pub resource_type: String,
    /// Its id or name.
    pub resource_id: String,
    /// The resource before.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The resource after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Filters and page of `GET /api/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this kind of resource.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only entries before this time (RFC 3339).
    pub until: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// A checked [`AuditQuery`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this kind of resource.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// At or after.
    pub since: Option<OffsetDateTime>,
    /// Before.
    pub until: Option<OffsetDateTime>,
    /// Page size.
    pub limit: i64,
    /// Items to skip.
    pub offset: i64,
}

fn rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{s:?} is not an RFC 3339 time"))
}

impl AuditQuery {
    /// Checks the query.
    pub fn filter(self) -> Result<AuditFilter, FieldErrors> {
        let mut e = FieldErrors::new();
        let mut short = |f: &str, v: Option<String>| v.and_then(|s| e.check(f, v::name(&s, 256)));
        let actor = short("actor", self.actor);
        let action = short("action", self.action);
        let resource_type = short("resource_type", self.resource_type);
        let resource_id = short("resource_id", self.resource_id);
        let since = opt(self.since, "since", &mut e, rfc3339);
        let until = opt(self.until, "until", &mut e, rfc3339);
        let (limit, offset) = page(self.limit, self.offset, &mut e);
        e.into_result()?;
        Ok(AuditFilter {
            actor,
            action,
            resource_type,
            resource_id,
            since,
            until,
            limit,
            offset,
        })
    }
}

/// Page of a plain list endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl PageQuery {
    /// Checked limit and offset.
    pub fn checked(self) -> Result<(i64, i64), FieldErrors> {
        let mut e = FieldErrors::new();
        let p = page(self.limit, self.offset, &mut e);
        e.into_result().map(|_| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vps_create_normalizes_and_names_bad_fields() {
        let c: VpsCreate = serde_json::from_value(serde_json::json!({
            "hostname": "Edge-1.Example.NET",
            "purpose": "xrayr",
            "country": "de",
            "ip_addresses": [{"ip": "2001:DB8::1", "label": "public"}],
            "tags": ["b", "a", "a"],
        }))
        .unwrap();
        let c = c.normalize().unwrap();
        assert_eq!(c.hostname, "edge-1.example.net");
        assert_eq!(c.country.as_deref(), Some("DE"));
        assert_eq!(c.ip_addresses[0].ip, "2001:db8::1");
        assert_eq!(c.tags, vec!["a", "b"]);
        assert_eq!(c.status, Some(VpsStatus::Provisioning));

        let bad: VpsCreate = serde_json::from_value(serde_json::json!({
            "hostname": "bad_host",
            "purpose": "X",
            "country": "XX",
            "ip_addresses": [{"ip": "1.2.3", "label": "public"}, {"ip": "::1", "label": "Bad Label"}],
            "node_exporter_port": 70000,
            "status": "retired",
        }))
        .unwrap();
        let e = bad.normalize().unwrap_err();
        for f in [
            "hostname",
            "purpose",
            "country",
            "ip_addresses[0].ip",
            "ip_addresses[1].label",
            "node_exporter_port",
            "status",
        ] {
            assert!(e.0.contains_key(f), "{f} missing from {e:?}");
        }
    }

    #[test]
    fn patch_rejects_null_for_required_fields() {
        let p: VpsPatch =
            serde_json::from_str(r#"{"hostname": null, "alias": null, "purpose": null}"#).unwrap();
        let e = p.normalize().unwrap_err();
        assert!(e.0.contains_key("hostname"));
        assert!(e.0.contains_key("purpose"));
        assert!(!e.0.contains_key("alias"));
        let p: VpsPatch = serde_json::from_str(r#"{"alias": null, "tags": null}"#).unwrap();
        let p = p.normalize().unwrap();
        assert_eq!(p.alias, Some(None));
        assert_eq!(p.tags, Some(Some(vec![])));
        assert!(p.hostname.is_none());
    }

    #[test]
    fn unknown_fields_and_enum_values_are_rejected() {
        assert!(serde_json::from_str::<VpsPatch>(r#"{"hostnme": "x"}"#).is_err());
        assert!(serde_json::from_str::<VpsPatch>(r#"{"status": "gone"}"#).is_err());
        // Agents may be newer than sigma-api.
        assert!(
            serde_json::from_str::<HeartbeatRequest>(r#"{"hostname": "a", "future": 1}"#).is_ok()
        );
    }

    #[test]
    fn status_transitions() {
        use VpsStatus::*;
        assert!(Provisioning.can_become(Active));
        assert!(Active.can_become(Retiring));
        assert!(Retired.can_become(Provisioning));
        assert!(!Retired.can_become(Active));
        assert!(!Active.can_become(Provisioning));
        assert!(!Active.can_become(Deleted));
    }

    #[test]
    fn key_binding_rules() {
        let k = ApiKeyCreate {
            name: "x".into(),
            role: Role::Agent,
            vps_id: None,
            ttl_seconds: None,
        };
        assert!(k.normalize().unwrap_err().0.contains_key("vps_id"));
        let k = ApiKeyCreate {
            name: "x".into(),
            role: Role::Readonly,
            vps_id: Some(Uuid::nil()),
            ttl_seconds: Some(1),
        };
        let e = k.normalize().unwrap_err();
        assert!(e.0.contains_key("vps_id") && e.0.contains_key("ttl_seconds"));
    }

    #[test]
    fn provider_names_that_read_as_ids_are_refused() {
        for bad in [
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567E89B12D3A456426614174000",
            "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
        ] {
            let e = ProviderCreate {
                name: bad.into(),
                ..Default::default()
            }
            .normalize()
            .unwrap_err();
            assert!(e.0.contains_key("name"), "{bad}");
            let e = ProviderPatch {
                name: Some(Some(bad.into())),
                ..Default::default()
            }
            .normalize()
            .unwrap_err();
            assert!(e.0.contains_key("name"), "{bad}");
        }
        assert!(provider_name("hetzner-123e4567").is_ok());
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_address() {
        let mut e = FieldErrors::new();
        let ips = normalize_ips(
            vec![
                IpAddress {
                    ip: "::ffff:192.0.2.9".into(),
                    label: "public".into(),
                },
                IpAddress {
                    ip: "192.0.2.9".into(),
                    label: "private".into(),
                },
            ],
            "ip_addresses",
            &mut e,
        );
        assert_eq!(ips[0].ip, "192.0.2.9");
        assert!(e.0["ip_addresses[1].ip"].contains("listed twice"), "{e:?}");
    }

    #[test]
    fn bound_tokens_have_no_presets_one_use_and_a_short_life() {
        let t: EnrollmentTokenCreate = serde_json::from_value(serde_json::json!({
            "vps_id": Uuid::nil(), "purpose": "xrayr", "provider": "p", "country": "DE",
            "tags": ["a"], "max_uses": 2, "ttl_seconds": MAX_BOUND_TOKEN_TTL_SECONDS + 1,
        }))
        .unwrap();
        let e = t.normalize().unwrap_err();
        for f in [
            "purpose",
            "provider",
            "country",
            "tags",
            "max_uses",
            "ttl_seconds",
        ] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        let t: EnrollmentTokenCreate =
            serde_json::from_value(serde_json::json!({"vps_id": Uuid::nil()})).unwrap();
        let t = t.normalize().unwrap();
        assert_eq!((t.max_uses, t.vps_id), (1, Some(Uuid::nil())));
    }

    #[test]
    fn agent_reports_with_control_characters_are_refused() {
        let h: HeartbeatRequest = serde_json::from_value(serde_json::json!({
            "hostname": "a.example.net",
            "system_info": {"os": "Debian\u{0}", "gpu": {"model": "\u{1b}[2J"}},
            "agent_state": {"last_nack": {"version": "1\n", "type_url": "t", "detail": "line\nline",
                            "at": "2026-01-01T00:00:00Z"}, "x": ["\u{0}"]},
        }))
        .unwrap();
        let e = h.normalize().unwrap_err();
        for f in [
            "system_info.os",
            "system_info.gpu.model",
            "agent_state.last_nack.version",
            "agent_state.x[0]",
        ] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        assert!(!e.0.contains_key("agent_state.last_nack.detail"));
    }

    #[test]
    fn system_info_keeps_unknown_fields() {
        let s: SystemInfo = serde_json::from_str(r#"{"cpu_cores": 2, "gpu": "none"}"#).unwrap();
        assert_eq!(s.cpu_cores, Some(2));
        assert_eq!(s.extra["gpu"], "none");
        let mut e = FieldErrors::new();
        SystemInfo {
            load_average: Some([f64::NAN, 0.0, 0.0]),
            ..Default::default()
        }
        .check("system_info", &mut e);
        assert!(e.0.contains_key("system_info.load_average"));
    }
}

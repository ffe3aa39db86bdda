//! What agents send and receive: registration, heartbeats, what they report and the state
//! they must apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    IpAddress, MAX_OBJECT_BYTES, SystemInfo, Vps, VpsStatus, check_extra, normalize_ips, opt,
};
use crate::validate::{self as v, FieldErrors, Normalize};

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

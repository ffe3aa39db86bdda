//! Purposes: what a VPS is for (`xrayr`, `vpn-exit`, …).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{MAX_NAME_LEN, check_object, opt};
use crate::patch::{double_option, non_null};
use crate::validate::{self as v, FieldErrors, Normalize};

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

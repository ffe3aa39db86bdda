//! The fleet-wide [`MeshTemplate`]: the namespace, networks and names every purpose's objects
//! are generated with.

use serde::{Deserialize, Serialize};
use sigma_types::FieldErrors;

use super::{check_mesh_host, check_network, check_probe_path, check_service_account};
use crate::names;

/// How VPS are assigned to Istio networks (groups of endpoints that reach each other directly;
/// traffic between networks goes through east-west gateways).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkMode {
    /// `provider-<provider>` for each VPS; a VPS without a provider gets no network (Istio's
    /// default network, i.e. reached directly).
    #[default]
    PerProvider,
    /// One network for the whole fleet.
    Fixed(String),
}

/// Fleet-wide mesh settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshTemplate {
    /// Kubernetes namespace of every generated object.
    pub namespace: String,
    /// DNS domain of the purposes' services (`<purpose>.<domain>`).
    pub service_domain: String,
    /// Service account of workloads whose purpose names none.
    pub service_account: String,
    /// Network assignment.
    pub network: NetworkMode,
    /// Port of the agent's health endpoint.
    pub health_port: u16,
    /// Path of the agent's health endpoint.
    pub health_path: String,
    /// Value of the `version` label.
    pub version: String,
}

impl Default for MeshTemplate {
    fn default() -> Self {
        MeshTemplate {
            namespace: "sigma".into(),
            service_domain: "sigma.mesh".into(),
            service_account: "sigma-vm".into(),
            network: NetworkMode::PerProvider,
            health_port: 9102,
            health_path: "/healthz".into(),
            version: "v1".into(),
        }
    }
}

impl MeshTemplate {
    /// Every problem of the template, by field.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::new();
        if !names::is_dns_label(&self.namespace) {
            e.add("namespace", "must be a DNS-1123 label");
        }
        match check_mesh_host(&self.service_domain) {
            // A purpose name (≤ 63) and a dot must still fit in a 253-character host.
            Ok(d) if d.len() > 253 - 64 => e.add("service_domain", "longer than 189 characters"),
            Ok(d) if d != self.service_domain => {
                e.add("service_domain", format!("write it in canonical form: {d}"))
            }
            Ok(_) => {}
            Err(r) => e.add("service_domain", r),
        }
        e.check(
            "service_account",
            check_service_account(&self.service_account),
        );
        if let NetworkMode::Fixed(n) = &self.network {
            e.check("network", check_network(n));
        }
        if self.health_port == 0 {
            e.add("health_port", "0 is not a port (1-65535)");
        }
        e.check("health_path", check_probe_path(&self.health_path));
        if self.version.is_empty() || !names::is_label_value(&self.version) {
            e.add("version", "must be a non-empty label value");
        }
        e.into_result()
    }
}

//! The inventory as operators keep it in spreadsheets: one flat record per VPS, exported and
//! imported as CSV or JSON (issue 20), and how a record becomes a create or a change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::contract::VpsContractPatch;
use crate::{FieldErrors, IpAddress, Normalize, Vps, VpsContract, VpsCreate, VpsPatch, VpsStatus};

fn yes() -> bool {
    true
}

fn default_port() -> i64 {
    9100
}

/// One VPS of an export or an import, keyed by hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpsRecord {
    /// Hostname: the key an import matches VPS by.
    pub hostname: String,
    /// Short name for people.
    #[serde(default)]
    pub alias: Option<String>,
    /// Provider name (must exist).
    #[serde(default)]
    pub provider: Option<String>,
    /// Purpose name (must exist).
    pub purpose: String,
    /// Lifecycle status; on import, absent keeps an existing VPS's status and makes a new one
    /// `provisioning`; a change must be a move an operator may make.
    #[serde(default)]
    pub status: Option<VpsStatus>,
    /// ISO 3166-1 alpha-2 country.
    #[serde(default)]
    pub country: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// Addresses.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddress>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Scrape node-exporter (default true).
    #[serde(default = "yes")]
    pub monitoring: bool,
    /// node-exporter port (default 9100).
    #[serde(default = "default_port")]
    pub node_exporter_port: i64,
    /// Kept out of the mesh (default false).
    #[serde(default)]
    pub mesh_opt_out: bool,
    /// Contract terms and specs.
    #[serde(default)]
    pub contract: VpsContract,
}

impl From<&Vps> for VpsRecord {
    fn from(v: &Vps) -> Self {
        VpsRecord {
            hostname: v.hostname.clone(),
            alias: v.alias.clone(),
            provider: v.provider.clone(),
            purpose: v.purpose.clone(),
            status: Some(v.status),
            country: v.country.clone(),
            city: v.city.clone(),
            ip_addresses: v.ip_addresses.clone(),
            tags: v.tags.clone(),
            monitoring: v.monitoring,
            node_exporter_port: i64::from(v.node_exporter_port),
            mesh_opt_out: v.mesh_opt_out,
            contract: v.contract.clone(),
        }
    }
}

/// A record checked: the create it stands for (status aside) and its contract.
#[derive(Debug, Clone)]
pub struct CheckedRecord {
    /// The inventory fields, canonical.
    pub create: VpsCreate,
    /// The status it asks for, if any.
    pub status: Option<VpsStatus>,
    /// The contract, canonical.
    pub contract: VpsContract,
}

impl VpsRecord {
    /// Checks every field, naming each bad one (`contract.cost`, `ip_addresses[0].ip`).
    pub fn checked(self) -> Result<CheckedRecord, FieldErrors> {
        let mut e = FieldErrors::new();
        if self.status == Some(VpsStatus::Deleted) {
            e.add("status", "an import does not delete; leave deleted VPS out");
        }
        let create = VpsCreate {
            hostname: self.hostname,
            alias: self.alias,
            provider: self.provider,
            ip_addresses: self.ip_addresses,
            country: self.country,
            city: self.city,
            purpose: self.purpose,
            status: None,
            tags: self.tags,
            monitoring: self.monitoring,
            node_exporter_port: self.node_exporter_port,
            mesh_opt_out: self.mesh_opt_out,
        };
        let create = create.normalize().map_err(|x| e.0.extend(x.0)).ok();
        let contract = self.contract.normalize().map_err(|x| e.0.extend(x.0)).ok();
        e.into_result()?;
        Ok(CheckedRecord {
            create: create.expect("checked above"),
            status: self.status,
            contract: contract.expect("checked above"),
        })
    }
}

/// What must change on `v` for it to match `r`: the patch, the mesh opt-out and the
/// contract patch, or `None` when it matches already.
pub fn changes(
    v: &Vps,
    r: &CheckedRecord,
) -> Option<(VpsPatch, Option<bool>, Option<VpsContractPatch>)> {
    let c = &r.create;
    fn diff<T: PartialEq + Clone>(new: &T, old: &T) -> Option<Option<T>> {
        (new != old).then(|| Some(new.clone()))
    }
    let same_provider = match (&c.provider, &v.provider) {
        (Some(a), Some(b)) => a.to_lowercase() == b.to_lowercase(),
        (a, b) => a == b,
    };
    let patch = VpsPatch {
        hostname: None,
        alias: (c.alias != v.alias).then(|| c.alias.clone()),
        provider: (!same_provider).then(|| c.provider.clone()),
        ip_addresses: diff(&c.ip_addresses, &v.ip_addresses),
        country: (c.country != v.country).then(|| c.country.clone()),
        city: (c.city != v.city).then(|| c.city.clone()),
        purpose: diff(&c.purpose, &v.purpose),
        status: r.status.filter(|s| *s != v.status).map(Some),
        tags: diff(&c.tags, &v.tags),
        monitoring: diff(&c.monitoring, &v.monitoring),
        node_exporter_port: diff(&c.node_exporter_port, &i64::from(v.node_exporter_port)),
    };
    let opt_out = (c.mesh_opt_out != v.mesh_opt_out).then_some(c.mesh_opt_out);
    let contract = (r.contract != v.contract).then(|| replace_with(&r.contract));
    let unchanged = serde_json::to_value(&patch).is_ok_and(|p| p == serde_json::json!({}))
        && opt_out.is_none()
        && contract.is_none();
    (!unchanged).then_some((patch, opt_out, contract))
}

/// A contract patch that sets every field to `c`'s.
fn replace_with(c: &VpsContract) -> VpsContractPatch {
    VpsContractPatch {
        cost: Some(c.cost),
        currency: Some(c.currency.clone()),
        billing_cycle: Some(c.billing_cycle),
        purchased_on: Some(c.purchased_on),
        expires_on: Some(c.expires_on),
        auto_renew: Some(Some(c.auto_renew)),
        cpu_cores: Some(c.cpu_cores),
        ram_mb: Some(c.ram_mb),
        disk_gb: Some(c.disk_gb),
        traffic_gb: Some(c.traffic_gb),
        ssh_port: Some(c.ssh_port),
        data_center: Some(c.data_center.clone()),
    }
}

/// What an import did (or, in a dry run, would do) with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportOutcome {
    /// A new VPS.
    Created,
    /// An existing VPS (same hostname) changed to match.
    Updated,
    /// An existing VPS matched already.
    Unchanged,
    /// The row was refused; `fields` or `message` say why.
    Error,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportRow {
    /// 1-based row number (CSV: the line after the header; JSON: the array index + 1).
    pub row: usize,
    /// The row's hostname as given.
    pub hostname: Option<String>,
    /// What happened.
    pub outcome: ImportOutcome,
    /// The VPS, when there is one.
    pub id: Option<Uuid>,
    /// Reasons per field, for an error.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// A reason not tied to one field (a lifecycle rule, a duplicate hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer of `POST /api/vps/import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// Nothing was written (`dry_run=true`).
    pub dry_run: bool,
    /// `all` (nothing is written if any row fails) or `partial` (good rows are written).
    pub mode: String,
    /// Whether the rows reported as created/updated were written.
    pub applied: bool,
    /// Rows created.
    pub created: usize,
    /// Rows updated.
    pub updated: usize,
    /// Rows unchanged.
    pub unchanged: usize,
    /// Rows refused.
    pub errors: usize,
    /// Every row, in order.
    pub rows: Vec<ImportRow>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_matching_record_changes_nothing_and_a_difference_is_a_patch() {
        let v: Vps = serde_json::from_value(json!({
            "id": "00000000-0000-4000-8000-000000000001", "hostname": "a.example",
            "alias": null, "provider": "Hetzner", "ip_addresses": [], "country": "DE",
            "city": null, "purpose": "xrayr", "status": "active", "tags": ["x"],
            "monitoring": true, "node_exporter_port": 9100, "system_info": null,
            "agent_state": null, "last_heartbeat_at": null, "desired_version": 1,
            "envoy_version": 0, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "deleted_at": null,
            "contract": {"cost": "5", "currency": "EUR"}
        }))
        .unwrap();
        let rec = VpsRecord::from(&v);
        let mut r = rec.clone();
        r.provider = Some("hetzner".into());
        assert!(
            changes(&v, &r.checked().unwrap()).is_none(),
            "provider case ignored"
        );
        let mut r = rec.clone();
        r.status = None;
        assert!(
            changes(&v, &r.checked().unwrap()).is_none(),
            "no status keeps it"
        );
        let mut r = rec;
        r.contract.cost = None;
        r.contract.currency = None;
        r.tags = vec![];
        let (p, o, c) = changes(&v, &r.checked().unwrap()).unwrap();
        assert_eq!(p.tags, Some(Some(vec![])));
        assert_eq!(p.alias, None);
        assert_eq!(o, None);
        assert_eq!(c.unwrap().apply(&v.contract), VpsContract::default());
    }

    #[test]
    fn records_are_checked_with_field_names() {
        let r: VpsRecord = serde_json::from_value(json!({
            "hostname": "-x", "purpose": "xrayr", "status": "deleted",
            "contract": {"cost": "1"}
        }))
        .unwrap();
        let e = r.checked().unwrap_err();
        for f in ["hostname", "status", "contract.currency"] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
    }
}

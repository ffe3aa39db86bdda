//! One VPS's WorkloadEntry, desired against actual, for diagnosis (`GET /api/vps/{id}/mesh`):
//! the same model, names and comparison the reconciler uses, so what a person is told matches
//! what the next pass will do. [`diagnose`] builds the whole report; the rest are its parts.

use serde_json::Value;
use sigma_mesh::objects::VPS_ID_LABEL;
use sigma_mesh::{MeshObject, MeshTemplate, MeshVps};
use sigma_store::mesh::MeshSubject;
use sigma_types::VpsStatus;
use sigma_types::mesh::{VpsMeshReport, WorkloadHealth};

use crate::cluster::Cluster;
use crate::{Error, Result};

/// One VPS's place in the mesh: whether it belongs there and why not, the reconciler's stored
/// result, the WorkloadEntry sigma wants for it (computed by the same model code as the
/// reconciler's and the bootstrap bundle's), and, given the `cluster` (kubernetes mode), the
/// entry the cluster holds, whether the two agree (the reconciler's own comparison) and
/// istiod's `Healthy` condition. `mode` is what the report says the mesh mode is.
///
/// A cluster that cannot be read (unreachable, forbidden, too slow) is not an error: the
/// report's `cluster_error` says why `actual` is missing. An error is only a model failure no
/// input explains (a bug).
pub async fn diagnose(
    template: &MeshTemplate,
    subject: &MeshSubject,
    mode: &str,
    cluster: Option<&Cluster>,
) -> Result<VpsMeshReport> {
    let desired = desired_entry(template, subject)?;
    let mut report = VpsMeshReport {
        vps_id: subject.vps.id,
        hostname: subject.vps.hostname.clone(),
        mode: mode.into(),
        meshed: desired.is_ok(),
        reason: desired.as_ref().err().cloned(),
        sync: subject.status.clone(),
        desired: None,
        actual: None,
        in_sync: None,
        health: None,
        cluster_error: None,
    };
    if let Ok(d) = &desired {
        report.desired = Some(serde_json::to_value(d).map_err(|e| Error::Encoding {
            what: format!("WorkloadEntry {}", d.name()),
            reason: e.to_string(),
        })?);
    }
    let Some(cluster) = cluster else {
        return Ok(report);
    };
    // The entry a meshed VPS should have; otherwise the one the reconciler last recorded (a
    // removal may have failed), else the name the model would give it.
    let name = match &desired {
        Ok(d) => d.name().to_string(),
        Err(_) => subject
            .status
            .workload_entry
            .clone()
            .unwrap_or_else(|| sigma_mesh::model::workload_entry_name(&subject.vps.hostname)),
    };
    match cluster.workload_entry(&name).await {
        Ok(actual) => {
            let own = subject.vps.id.to_string();
            // A VPS that should have no entry only claims one labelled with its own id: a
            // deleted VPS's hostname may since belong to another VPS, whose entry it is.
            let actual = actual.filter(|a| {
                desired.is_ok()
                    || a.pointer("/metadata/labels")
                        .and_then(|l| l.get(VPS_ID_LABEL))
                        .and_then(Value::as_str)
                        == Some(own.as_str())
            });
            if let Some(a) = &actual {
                report.health = entry_health(a);
                if let Ok(d) = &desired {
                    report.in_sync = Some(entry_in_sync(d, a));
                }
            }
            report.actual = actual;
        }
        Err(e) => {
            tracing::debug!(vps = %subject.vps.id, error = %e, "reading the VPS's WorkloadEntry failed");
            report.cluster_error = Some(format!(
                "reading WorkloadEntry {}/{name}: {e}",
                cluster.namespace()
            ));
        }
    }
    Ok(report)
}

/// The WorkloadEntry sigma wants for the VPS, or why it wants none. Inventory reasons are
/// answers, not errors; only a model failure that no input explains (a bug) is an error.
fn desired_entry(
    template: &MeshTemplate,
    subject: &MeshSubject,
) -> Result<std::result::Result<MeshObject, String>> {
    let purpose = match &subject.purpose {
        Ok(p) => p,
        Err(invalid) => {
            // Its own state first: a retired VPS stays out whatever its purpose holds.
            if let Some(r) = not_meshed_reason(&subject.vps, true) {
                return Ok(Err(r));
            }
            return Ok(Err(format!(
                "the stored mesh settings of purpose {} are invalid ({}); fix them with PATCH /api/purposes/{}",
                invalid.name, invalid.errors, invalid.name
            )));
        }
    };
    if let Some(r) = not_meshed_reason(&subject.vps, purpose.settings.enabled) {
        return Ok(Err(r));
    }
    match sigma_mesh::bundle::bundle_workload(template, purpose, &subject.vps) {
        Ok(w) => Ok(Ok(MeshObject::WorkloadEntry(w.entry))),
        Err(sigma_mesh::Error::NotMeshed(m)) => Ok(Err(m)),
        Err(sigma_mesh::Error::InvalidPurpose { purpose, errors }) => Ok(Err(format!(
            "the mesh settings of purpose {purpose} are invalid ({errors})"
        ))),
        Err(other) => Err(Error::Model(other)),
    }
}

/// Why a VPS gets no WorkloadEntry for a reason of its own or of its purpose's switch, or
/// `None` when neither keeps it out (it may still lack a usable address). The same words the
/// reconciler stores as the VPS's `not_meshed` message.
pub fn not_meshed_reason(vps: &MeshVps, purpose_enabled: bool) -> Option<String> {
    match vps.status {
        VpsStatus::Deleted => Some("deleted".into()),
        VpsStatus::Active if vps.mesh_opt_out => Some("opted out of the mesh".into()),
        VpsStatus::Active if !purpose_enabled => Some(format!(
            "purpose {} does not have the mesh enabled",
            vps.purpose
        )),
        VpsStatus::Active => None,
        s => Some(format!(
            "status is {}; only active VPS join the mesh",
            s.as_str()
        )),
    }
}

/// Whether the cluster's entry already holds what sigma wants: it decodes, it is sigma's
/// (another tool's object of that name is a conflict the reconciler leaves alone), and
/// [`sigma_mesh::up_to_date`] holds, which is exactly when the reconciler's diff would not
/// apply it again.
pub fn entry_in_sync(desired: &MeshObject, actual: &Value) -> bool {
    match MeshObject::from_json(actual.clone()) {
        Ok(a) => {
            a.kind() == desired.kind() && a.is_managed() && sigma_mesh::up_to_date(desired, &a)
        }
        Err(_) => false,
    }
}

/// Longest condition text passed on: the reason and message are the cluster's free text.
const MAX_CONDITION_TEXT: usize = 1024;

fn condition_text(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    if s.len() <= MAX_CONDITION_TEXT {
        return Some(s.to_string());
    }
    let mut end = MAX_CONDITION_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &s[..end]))
}

/// istiod's verdict on a WorkloadEntry: its `status.conditions` entry of type `Healthy`
/// (written from pilot-agent's readiness probe reports), or `None` before istiod has given one.
pub fn entry_health(actual: &Value) -> Option<WorkloadHealth> {
    let c = actual
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Healthy"))?;
    Some(WorkloadHealth {
        healthy: c.get("status").and_then(Value::as_str) == Some("True"),
        reason: c.get("reason").and_then(condition_text),
        message: c.get("message").and_then(condition_text),
        last_transition_time: c.get("lastTransitionTime").and_then(condition_text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sigma_mesh::{MeshPurpose, MeshSettings, MeshTemplate};
    use uuid::Uuid;

    fn vps() -> MeshVps {
        MeshVps {
            id: Uuid::from_u128(7),
            hostname: "node-1.example.net".into(),
            status: VpsStatus::Active,
            purpose: "xrayr".into(),
            provider: Some("hetzner".into()),
            country: Some("DE".into()),
            city: None,
            ip_addresses: vec![sigma_types::IpAddress {
                ip: "203.0.113.7".into(),
                label: "public".into(),
            }],
            mesh_opt_out: false,
        }
    }

    fn desired() -> MeshObject {
        let purpose = MeshPurpose {
            name: "xrayr".into(),
            settings: MeshSettings::from_json(&json!({"enabled": true})).unwrap(),
        };
        let w = sigma_mesh::bundle::bundle_workload(&MeshTemplate::default(), &purpose, &vps())
            .unwrap();
        MeshObject::WorkloadEntry(w.entry)
    }

    #[test]
    fn reasons_match_the_reconcilers_words() {
        let mut v = vps();
        assert_eq!(not_meshed_reason(&v, true), None);
        assert_eq!(
            not_meshed_reason(&v, false).unwrap(),
            "purpose xrayr does not have the mesh enabled"
        );
        v.mesh_opt_out = true;
        assert_eq!(
            not_meshed_reason(&v, true).unwrap(),
            "opted out of the mesh"
        );
        v.status = VpsStatus::Retired;
        assert!(not_meshed_reason(&v, true).unwrap().contains("retired"));
    }

    #[test]
    fn the_same_entry_is_in_sync_and_a_changed_one_is_not() {
        let d = desired();
        let mut actual = serde_json::to_value(&d).unwrap();
        actual["metadata"]["uid"] = json!("u-1");
        actual["metadata"]["labels"]["added-by-someone"] = json!("x");
        actual["status"] = json!({"conditions": []});
        assert!(entry_in_sync(&d, &actual));

        let mut changed = actual.clone();
        changed["spec"]["address"] = json!("198.51.100.9");
        assert!(!entry_in_sync(&d, &changed));

        let mut foreign = actual.clone();
        foreign["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(sigma_mesh::objects::MANAGED_BY_LABEL);
        assert!(!entry_in_sync(&d, &foreign));

        assert!(!entry_in_sync(
            &d,
            &json!({"kind": "WorkloadEntry", "spec": 5})
        ));
    }

    #[test]
    fn health_comes_from_the_healthy_condition() {
        assert_eq!(entry_health(&json!({"spec": {}})), None);
        let h = entry_health(&json!({"status": {"conditions": [
            {"type": "Other", "status": "True"},
            {"type": "Healthy", "status": "False", "reason": "HTTPGet",
             "message": "503", "lastTransitionTime": "2026-01-02T03:04:05Z"}]}}))
        .unwrap();
        assert!(!h.healthy);
        assert_eq!(h.reason.as_deref(), Some("HTTPGet"));
        assert_eq!(h.message.as_deref(), Some("503"));
        assert_eq!(
            h.last_transition_time.as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        let h = entry_health(&json!({"status": {"conditions": [
            {"type": "Healthy", "status": "True", "message": "x".repeat(5000)}]}}))
        .unwrap();
        assert!(h.healthy);
        assert!(h.message.unwrap().len() < 1100);
    }
}

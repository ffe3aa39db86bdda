//! One VPS's WorkloadEntry, desired against actual, for diagnosis (`GET /api/vps/{id}/mesh`):
//! the same model, names and comparison the reconciler uses, so what a person is told matches
//! what the next pass will do.

use serde_json::Value;
use sigma_mesh::{MeshObject, MeshVps};
use sigma_types::VpsStatus;
use sigma_types::mesh::WorkloadHealth;

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
        let w = sigma_mesh::bootstrap::bundle_workload(&MeshTemplate::default(), &purpose, &vps())
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

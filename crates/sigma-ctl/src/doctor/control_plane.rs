//! The links sigma-api and the cluster answer for: `vps-active` and `mesh-enabled` from what
//! sigma-api records, `workload-entry` and `kiali-workload` from the objects the cluster holds.

use serde_json::Value;
use sigma_types::{MeshSyncStatus, Vps, VpsStatus};
use time::OffsetDateTime;

use super::{
    Inputs, Link, LinkKind, MeshReport, failed, ok, output, warning, workload_entry_name,
    workload_entry_namespace,
};

pub(super) fn vps_active(v: &Vps) -> Link {
    let k = LinkKind::VpsActive;
    let h = &v.hostname;
    match v.status {
        VpsStatus::Active => ok(k, "active"),
        VpsStatus::Provisioning => failed(
            k,
            "provisioning: its agent has not registered or heartbeated yet",
            format!(
                "install and start sigma-agent on {h} (`sigmactl enroll create` prints the install command); its first heartbeat makes it active"
            ),
        ),
        VpsStatus::Retiring | VpsStatus::Retired => failed(
            k,
            format!(
                "{}: it is leaving or has left the fleet, and the mesh with it",
                v.status.as_str()
            ),
            format!(
                "if it should serve, re-commission it: `sigmactl vps edit {h} --status provisioning`"
            ),
        ),
        VpsStatus::Deleted => failed(
            k,
            "deleted",
            format!("restore it: `sigmactl vps restore {}`", v.id),
        ),
    }
}

pub(super) fn mesh_enabled(i: &Inputs<'_>) -> Link {
    let k = LinkKind::MeshEnabled;
    let v = i.vps;
    let (h, p) = (&v.hostname, &v.purpose);
    if v.mesh_opt_out {
        return failed(
            k,
            "opted out of the mesh (mesh_opt_out)",
            format!("let it join: `sigmactl vps edit {h} --mesh-opt-out false`"),
        );
    }
    let enabled = match i.purpose_mesh {
        Some(m) => m.get("enabled").and_then(Value::as_bool).unwrap_or(false),
        None => {
            return warning(
                k,
                format!("not opted out, but purpose {p}'s mesh settings could not be read"),
                format!("check `sigmactl purposes show {p}`"),
            );
        }
    };
    if !enabled {
        return failed(
            k,
            format!("purpose {p} has the mesh off (its mesh settings lack \"enabled\": true)"),
            format!(
                "turn it on for the purpose: `sigmactl purposes edit {p} --mesh-file FILE` with \"enabled\": true and its ports and egress (see `sigmactl purposes show {p}`)"
            ),
        );
    }
    if let MeshReport::Reported(r) = i.report
        && !r.meshed
        && v.status == VpsStatus::Active
    {
        let why = r.reason.as_deref().unwrap_or("no reason given");
        return failed(
            k,
            format!("purpose {p} has the mesh on, yet sigma-api keeps it out: {why}"),
            format!(
                "fix what the reason names (a VPS without an address joins once it has one: `sigmactl vps edit {h} --ip IP`)"
            ),
        );
    }
    ok(k, format!("purpose {p} has the mesh on; not opted out"))
}

fn sync_text(s: &sigma_types::VpsMeshStatus, now: OffsetDateTime) -> String {
    let mut t = format!("recorded sync status {}", s.status.as_str());
    if let Some(m) = &s.message {
        t.push_str(&format!(": {m}"));
    }
    if let Some(a) = s.last_attempt_at {
        t.push_str(&format!(" (last attempt {})", output::ago(a, now)));
    }
    t
}

fn kubectl_get(ns: Option<&str>, name: &str) -> String {
    format!(
        "kubectl -n {} get workloadentry {name} -o yaml",
        ns.unwrap_or("sigma")
    )
}

pub(super) fn workload_entry(i: &Inputs<'_>) -> Link {
    let k = LinkKind::WorkloadEntry;
    let v = i.vps;
    let name = workload_entry_name(v, i.report);
    let ns = workload_entry_namespace(i.report);
    let r = match i.report {
        MeshReport::Unsupported => {
            let what = sync_text(&v.mesh, i.now);
            let entry = v
                .mesh
                .workload_entry
                .as_deref()
                .map(|n| format!(", WorkloadEntry {n}"))
                .unwrap_or_default();
            let reason =
                format!("sigma-api too old to report the cluster's WorkloadEntry; {what}{entry}");
            let fix = match &v.mesh.workload_entry {
                Some(n) => format!(
                    "upgrade sigma-api (GET /api/vps/{{id}}/mesh); meanwhile look yourself: `{}`",
                    kubectl_get(None, n)
                ),
                None => "upgrade sigma-api (GET /api/vps/{id}/mesh) to have the cluster's WorkloadEntry checked".to_string(),
            };
            // An error the reconciler recorded is a failure whatever the cluster holds now.
            return if v.mesh.status == MeshSyncStatus::Error {
                failed(k, reason, fix)
            } else {
                warning(k, reason, fix)
            };
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return failed(
            k,
            format!(
                "none: the VPS has no place in the mesh ({})",
                r.reason.as_deref().unwrap_or("no reason given")
            ),
            "fix the links above first; the WorkloadEntry follows",
        );
    }
    let name_txt = name.clone().unwrap_or_else(|| "(unnamed)".into());
    let sync = sync_text(&r.sync, i.now);
    match r.mode.as_str() {
        "off" => {
            return failed(
                k,
                "sigma-api runs with --mesh off: nothing applies WorkloadEntries",
                "run sigma-api with --mesh kubernetes, or with --mesh export and apply `sigmactl mesh export -o DIR` through GitOps",
            );
        }
        "export" if r.actual.is_none() => {
            return warning(
                k,
                format!(
                    "sigma-api runs with --mesh export: your GitOps pipeline applies WorkloadEntry {name_txt}, which sigma-api cannot see"
                ),
                format!(
                    "make sure the output of `sigmactl mesh export -o DIR` is committed and applied; check: `{}`",
                    kubectl_get(ns.as_deref(), &name_txt)
                ),
            );
        }
        _ => {}
    }
    if let Some(e) = &r.cluster_error {
        return failed(
            k,
            format!("the cluster could not be read: {e}"),
            "check sigma-api's access to Kubernetes (kubeconfig, the Role in k8s/base/rbac.yaml) and its log",
        );
    }
    match (&r.actual, r.in_sync) {
        (None, _) => {
            let fix = match r.sync.status {
                MeshSyncStatus::Error => {
                    "fix the cause the sync status names; the reconciler retries at its next pass"
                        .to_string()
                }
                _ => "the reconciler has not applied it yet: check that a sigma-api replica holds the mesh Lease (--mesh-lease-name) and its log".to_string(),
            };
            failed(
                k,
                format!("WorkloadEntry {name_txt} is not in the cluster; {sync}"),
                fix,
            )
        }
        (Some(_), Some(false)) => {
            let reason =
                format!("the cluster's WorkloadEntry {name_txt} differs from sigma's; {sync}");
            let fix = format!(
                "the reconciler restores it at its next pass (--mesh-resync-interval); if it stays different, another controller edits it: `{} --show-managed-fields`",
                kubectl_get(ns.as_deref(), &name_txt)
            );
            if r.sync.status == MeshSyncStatus::Pending {
                warning(k, reason, fix)
            } else {
                failed(k, reason, fix)
            }
        }
        (Some(_), _) if r.sync.status == MeshSyncStatus::Error => warning(
            k,
            format!("WorkloadEntry {name_txt} is in the cluster as desired, but {sync}"),
            "see sigma-api's log for the reconciler's error",
        ),
        (Some(_), _) => ok(
            k,
            format!("WorkloadEntry {name_txt} is in the cluster as sigma wants it"),
        ),
    }
}

/// The labels a VPS's WorkloadGroup selects its entry by (`spec.metadata.labels`), with the
/// values the entry must carry: the purpose as `app` and canonical service, the version as
/// canonical revision, and the VPS's id. Kiali attaches an entry to a group when the entry's
/// `spec.labels` hold all of them.
fn group_labels(vps: &Vps, entry_labels: &Value) -> Vec<(&'static str, Option<String>)> {
    let version = entry_labels.get("version").and_then(Value::as_str);
    vec![
        ("app", Some(vps.purpose.clone())),
        ("version", version.map(str::to_string)),
        ("service.istio.io/canonical-name", Some(vps.purpose.clone())),
        (
            "service.istio.io/canonical-revision",
            version.map(str::to_string),
        ),
        ("sigma.io/vps-id", Some(vps.id.to_string())),
    ]
}

fn kubectl_group(ns: Option<&str>, name: &str) -> String {
    format!(
        "kubectl -n {} get workloadgroup {name} -o yaml",
        ns.unwrap_or("sigma")
    )
}

/// Whether Kiali lists the VPS as a workload of its own: its WorkloadGroup, named like its
/// WorkloadEntry (and like the workload its proxy reports, `ISTIO_META_WORKLOAD_NAME`), selects
/// exactly that entry. Judged from the entry's labels (what the group selects by) and from the
/// reconciler's record, which is `synced` only when the group was applied too.
pub(super) fn kiali_workload(i: &Inputs<'_>) -> Link {
    let k = LinkKind::KialiWorkload;
    let r = match i.report {
        MeshReport::Unsupported => {
            return warning(
                k,
                "unknown: sigma-api too old to report the WorkloadEntry its WorkloadGroup selects",
                match &i.vps.mesh.workload_entry {
                    Some(n) => format!("look yourself: `{}`", kubectl_group(None, n)),
                    None => "upgrade sigma-api (GET /api/vps/{id}/mesh)".to_string(),
                },
            );
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return warning(
            k,
            "not checked: the VPS has no place in the mesh",
            "fix the links above first",
        );
    }
    let ns = workload_entry_namespace(i.report);
    let Some(entry) = r.actual.as_ref().or(r.desired.as_ref()) else {
        return warning(
            k,
            "not checked: no WorkloadEntry reported",
            "see the WorkloadEntry link",
        );
    };
    let name = entry
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let labels = entry.pointer("/spec/labels").unwrap_or(&Value::Null);
    let wrong: Vec<String> = group_labels(i.vps, labels)
        .into_iter()
        .filter(|(key, want)| {
            let have = labels.get(*key).and_then(Value::as_str);
            have.is_none() || want.as_deref().is_some_and(|w| have != Some(w))
        })
        .map(|(key, want)| match want {
            Some(w) => format!("{key}={w}"),
            None => key.to_string(),
        })
        .collect();
    if !wrong.is_empty() {
        let which = if r.actual.is_some() {
            "the cluster's"
        } else {
            "sigma's"
        };
        return failed(
            k,
            format!(
                "{which} WorkloadEntry {name} lacks {}: Kiali would not attach it to its workload (WorkloadGroup {name})",
                wrong.join(", ")
            ),
            format!(
                "the reconciler restores sigma's labels at its next pass; compare `{}` with `{}`",
                kubectl_get(ns.as_deref(), name),
                kubectl_group(ns.as_deref(), name)
            ),
        );
    }
    let what = format!(
        "Kiali workload {name}: WorkloadGroup {name} (app {}, sigma.io/vps-id {}) holding WorkloadEntry {name}, the name its proxy reports",
        i.vps.purpose, i.vps.id
    );
    match r.mode.as_str() {
        "off" => {
            return warning(
                k,
                format!("{what}; but sigma-api runs with --mesh off and applies neither"),
                "see the WorkloadEntry link",
            );
        }
        "export" => {
            return warning(
                k,
                format!("{what}, applied by your GitOps pipeline, which sigma-api cannot see"),
                format!("check: `{}`", kubectl_group(ns.as_deref(), name)),
            );
        }
        _ => {}
    }
    let group_problem = r
        .sync
        .message
        .as_deref()
        .filter(|m| m.contains("WorkloadGroup"));
    match (r.sync.status, group_problem) {
        (MeshSyncStatus::Error, Some(m)) => failed(
            k,
            format!("WorkloadGroup {name}: {m}"),
            format!(
                "fix the cause; the reconciler retries at its next pass. Look: `{}`",
                kubectl_group(ns.as_deref(), name)
            ),
        ),
        (MeshSyncStatus::Synced, _) => ok(k, format!("{what}; applied at the last pass")),
        _ => warning(
            k,
            format!("{what}; {}", sync_text(&r.sync, i.now)),
            "see the WorkloadEntry link",
        ),
    }
}

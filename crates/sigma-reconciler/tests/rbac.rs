//! `k8s/base/rbac.yaml` parses into Kubernetes' own types and grants exactly what the
//! reconciler and its leader election call, in the mesh namespace only.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use sigma_mesh::Kind;

const RBAC: &str = include_str!("../../../k8s/base/rbac.yaml");

fn docs() -> Vec<serde_json::Value> {
    RBAC.split("\n---\n")
        .map(|d| yaml_serde::from_str::<serde_json::Value>(d).expect("valid YAML"))
        .collect()
}

#[test]
fn rbac_is_minimal_and_namespaced() {
    let docs = docs();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding"],
        "no ClusterRole"
    );
    let sa: ServiceAccount = serde_json::from_value(docs[0].clone()).unwrap();
    let role: Role = serde_json::from_value(docs[1].clone()).unwrap();
    let binding: RoleBinding = serde_json::from_value(docs[2].clone()).unwrap();
    for ns in [
        &sa.metadata.namespace,
        &role.metadata.namespace,
        &binding.metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some("sigma"), "the default --mesh-namespace");
    }

    let rules = role.rules.unwrap();
    let mut granted = BTreeSet::new();
    for r in &rules {
        for list in [&r.api_groups, &r.resources, &Some(r.verbs.clone())] {
            for v in list.iter().flatten() {
                assert_ne!(v, "*", "no wildcards: {r:?}");
            }
        }
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    let names = r.resource_names.clone().unwrap_or_default();
                    granted.insert((g.clone(), res.clone(), v.clone(), names.join(",")));
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    // The reconciler: list every object of its kinds, apply (patch, create when new), delete.
    for k in Kind::ALL {
        for v in ["list", "create", "patch", "delete"] {
            want.insert((
                "networking.istio.io".to_string(),
                k.plural().to_string(),
                v.to_string(),
                String::new(),
            ));
        }
    }
    // The Lease: created once (RBAC cannot name an object that does not exist yet), then read
    // and renewed by name only.
    want.insert((
        "coordination.k8s.io".into(),
        "leases".into(),
        "create".into(),
        String::new(),
    ));
    for v in ["get", "patch"] {
        want.insert((
            "coordination.k8s.io".into(),
            "leases".into(),
            v.into(),
            "sigma-api-mesh".into(),
        ));
    }
    assert_eq!(granted, want);
    assert_eq!(
        sigma_reconciler::LeaseSettings::new("sigma-api-mesh", "sigma").name,
        "sigma-api-mesh"
    );

    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(subjects[0].name.clone()), sa.metadata.name);
    assert_eq!(subjects[0].namespace.as_deref(), Some("sigma"));
}

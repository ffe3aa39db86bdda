//! `k8s/base/rbac-bootstrap.yaml` grants exactly the calls [`sigma_reconciler::bundle`]
//! makes for a bundle with the default flags — each object by name, in its namespace — and
//! nothing else.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use sigma_mesh::MeshTemplate;
use sigma_mesh::bundle::{ControlPlane, EASTWEST_SERVICE, ROOT_CERT_CONFIG_MAP};

const RBAC: &str = include_str!("../../../k8s/base/rbac-bootstrap.yaml");

/// (namespace, api group, resource, verb, name) of every grant.
type Grant = (String, String, String, String, String);

#[test]
fn bootstrap_rbac_grants_each_read_by_name_and_nothing_more() {
    let mut granted: BTreeSet<Grant> = BTreeSet::new();
    let mut bound = BTreeSet::new();
    for doc in RBAC.split("\n---\n") {
        let v: serde_json::Value = yaml_serde::from_str(doc).expect("valid YAML");
        match v["kind"].as_str() {
            Some("Role") => {
                let role: Role = serde_json::from_value(v).unwrap();
                let ns = role.metadata.namespace.clone().expect("namespaced");
                for r in role.rules.unwrap_or_default() {
                    let names = r.resource_names.clone().unwrap_or_default();
                    assert!(!names.is_empty(), "every grant names its objects: {r:?}");
                    for g in r.api_groups.iter().flatten() {
                        for res in r.resources.iter().flatten() {
                            for verb in &r.verbs {
                                for n in &names {
                                    granted.insert((
                                        ns.clone(),
                                        g.clone(),
                                        res.clone(),
                                        verb.clone(),
                                        n.clone(),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            Some("RoleBinding") => {
                let b: RoleBinding = serde_json::from_value(v).unwrap();
                let subject = &b.subjects.unwrap()[0];
                assert_eq!(
                    (subject.name.as_str(), subject.namespace.as_deref()),
                    ("sigma-api", Some("sigma"))
                );
                bound.insert(b.metadata.namespace.unwrap());
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    let t = MeshTemplate::default();
    let cp = ControlPlane::default();
    let g = |ns: &str, res: &str, verb: &str, name: &str| -> Grant {
        (
            ns.into(),
            String::new(),
            res.into(),
            verb.into(),
            name.into(),
        )
    };
    let want: BTreeSet<Grant> = [
        g(&t.namespace, "configmaps", "get", ROOT_CERT_CONFIG_MAP),
        g(
            &t.namespace,
            "serviceaccounts/token",
            "create",
            &t.service_account,
        ),
        g(&cp.namespace, "configmaps", "get", &cp.mesh_config_map()),
        g(&cp.namespace, "services", "get", EASTWEST_SERVICE),
    ]
    .into();
    assert_eq!(granted, want);
    assert_eq!(
        bound,
        BTreeSet::from([t.namespace.clone(), cp.namespace.clone()])
    );
}

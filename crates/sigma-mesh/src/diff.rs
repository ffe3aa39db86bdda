//! What to write to reach the desired state.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::objects::{Kind, MeshObject, OWNED_ANNOTATIONS, OWNED_LABELS, ObjectKey};

/// The writes that turn `actual` into `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Objects to create or update (server-side apply), sorted by kind then name.
    pub apply: Vec<MeshObject>,
    /// sigma's objects that are no longer desired, sorted by kind then name.
    pub delete: Vec<ObjectKey>,
    /// Desired objects whose key is taken by an object sigma does not manage. They are left
    /// alone: sigma neither overwrites nor deletes what it did not create.
    pub conflicts: Vec<ObjectKey>,
}

impl Plan {
    /// Number of API writes the plan needs.
    pub fn writes(&self) -> usize {
        self.apply.len() + self.delete.len()
    }

    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }
}

type KeyRef<'a> = (Kind, &'a str, &'a str);

fn key_ref(o: &MeshObject) -> KeyRef<'_> {
    let m = o.metadata();
    (o.kind(), m.namespace.as_str(), m.name.as_str())
}

fn sort_key(k: &ObjectKey) -> (Kind, &str, &str) {
    (k.kind, k.name.as_str(), k.namespace.as_str())
}

/// Compares on the keys sigma owns: `fixed` (everything sigma may ever set) plus whatever the
/// desired map holds. Keys other tools add are ignored.
fn owned_eq(
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    fixed: &[&str],
) -> bool {
    if desired == actual {
        return true;
    }
    fixed.iter().all(|k| desired.get(*k) == actual.get(*k))
        && desired.iter().all(|(k, v)| actual.get(k) == Some(v))
}

/// Whether `actual` already holds everything sigma wants in `desired`: the same spec (on the
/// fields sigma models) and the same values for the label and annotation keys sigma owns.
pub fn up_to_date(desired: &MeshObject, actual: &MeshObject) -> bool {
    let (d, a) = (desired.metadata(), actual.metadata());
    desired.same_spec(actual)
        && owned_eq(&d.labels, &a.labels, &OWNED_LABELS)
        && owned_eq(&d.annotations, &a.annotations, &OWNED_ANNOTATIONS)
}

/// The plan that brings `actual` (what the cluster holds, as decoded by
/// [`MeshObject::from_json`]) to `desired`. Objects are matched by kind, namespace and name.
/// Unchanged objects produce nothing, so a steady state costs no writes. Objects in `actual`
/// without sigma's managed-by label are never deleted nor overwritten.
pub fn diff(desired: &[MeshObject], actual: &[MeshObject]) -> Plan {
    let actual_by_key: HashMap<KeyRef<'_>, &MeshObject> =
        actual.iter().map(|o| (key_ref(o), o)).collect();
    let mut wanted: HashSet<KeyRef<'_>> = HashSet::with_capacity(desired.len());
    let mut plan = Plan::default();
    for d in desired {
        let k = key_ref(d);
        wanted.insert(k);
        match actual_by_key.get(&k) {
            None => plan.apply.push(d.clone()),
            Some(a) if !a.is_managed() => plan.conflicts.push(d.key()),
            Some(a) if up_to_date(d, a) => {}
            Some(_) => plan.apply.push(d.clone()),
        }
    }
    for a in actual {
        if a.is_managed() && !wanted.contains(&key_ref(a)) {
            plan.delete.push(a.key());
        }
    }
    plan.apply.sort_by(|a, b| {
        (a.kind(), a.name(), &a.metadata().namespace).cmp(&(
            b.kind(),
            b.name(),
            &b.metadata().namespace,
        ))
    });
    plan.delete.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    plan.delete.dedup();
    plan.conflicts.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    plan
}

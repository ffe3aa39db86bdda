//! What to write to reach the desired state.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::objects::{MeshObject, OWNED_ANNOTATIONS, OWNED_LABELS, ObjectKey};

/// The writes that turn `actual` into `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Objects to create or update (server-side apply), sorted by kind, namespace and name.
    pub apply: Vec<MeshObject>,
    /// sigma's objects that are no longer desired, sorted by kind, namespace and name.
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

fn sorted(objects: &[MeshObject]) -> Vec<&MeshObject> {
    let mut v: Vec<&MeshObject> = objects.iter().collect();
    // Output of `desired_state` and a sorted listing are already in order, which the sort
    // detects in one pass; a stable sort keeps the first of duplicate keys first.
    v.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    v
}

/// The plan that brings `actual` (what the cluster holds, as decoded by
/// [`MeshObject::from_json`]) to `desired`. Objects are matched by kind, namespace and name.
/// Unchanged objects produce nothing, so a steady state costs no writes. Objects in `actual`
/// without sigma's managed-by label are never deleted nor overwritten. When a key appears more
/// than once in an input, its first occurrence counts.
pub fn diff(desired: &[MeshObject], actual: &[MeshObject]) -> Plan {
    // A merge of two sorted lists: no hashing of 10,000 names, and the output comes out sorted.
    let (d, a) = (sorted(desired), sorted(actual));
    let mut plan = Plan::default();
    let (mut i, mut j) = (0, 0);
    while i < d.len() || j < a.len() {
        let ord = match (d.get(i), a.get(j)) {
            (Some(x), Some(y)) => x.sort_key().cmp(&y.sort_key()),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                plan.apply.push(d[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                if a[j].is_managed() {
                    plan.delete.push(a[j].key());
                }
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (d[i], a[j]);
                if !y.is_managed() {
                    plan.conflicts.push(x.key());
                } else if !up_to_date(x, y) {
                    plan.apply.push(x.clone());
                }
                let key = x.sort_key();
                while i < d.len() && d[i].sort_key() == key {
                    i += 1;
                }
                while j < a.len() && a[j].sort_key() == key {
                    j += 1;
                }
            }
        }
    }
    plan
}

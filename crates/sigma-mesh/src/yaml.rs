//! Multi-document YAML for GitOps export.

use crate::Result;
use crate::objects::MeshObject;

/// The objects as multi-document YAML, sorted by kind, namespace and name, each document
/// starting with `---`. The same input always gives byte-identical output: struct fields have a
/// fixed order and every map is sorted.
pub fn to_yaml(objects: &[MeshObject]) -> Result<String> {
    let mut sorted: Vec<&MeshObject> = objects.iter().collect();
    sorted.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let mut out = String::new();
    for o in sorted {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(o)?);
    }
    Ok(out)
}

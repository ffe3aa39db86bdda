//! Multi-document YAML for GitOps export.
//!
//! yaml_serde turns each object into a YAML value (keeping struct field order); the block
//! layout is written here because yaml_serde leaves strings plain whenever YAML 1.2 reads them
//! as strings, and Kubernetes' YAML reader follows YAML 1.1, where `NO` (Norway's country code),
//! `yes`, `on` or `1:2:3:4:5:6:7:8` are booleans and numbers: `country: NO` would be rejected as
//! a label that is not a string. Every string that is not unambiguously a string under both
//! versions is written double-quoted.

use yaml_serde::Value;

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
        emit_block(&mut out, &yaml_serde::to_value(o)?, 0);
    }
    Ok(out)
}

/// One YAML document (no `---`) of any JSON value, with the same quoting and layout rules as
/// [`to_yaml`]; a JSON object's keys come out sorted.
pub(crate) fn value_to_yaml(v: &serde_json::Value) -> Result<String> {
    let mut out = String::new();
    emit_block(&mut out, &yaml_serde::to_value(v)?, 0);
    Ok(out)
}

/// YAML 1.1 words that resolve to booleans or null (compared case-insensitively).
const RESERVED_WORDS: [&str; 9] = ["y", "yes", "n", "no", "true", "false", "on", "off", "null"];

/// Whether `s` may be written as a plain scalar and still be read as this string by YAML 1.1
/// and 1.2 readers: it starts with a letter, holds only letters, digits and `._/-`, and is not
/// a boolean or null word. Anything starting with a digit (numbers, IPs, sexagesimals) or
/// holding other characters is quoted.
pub fn is_plain_safe(s: &str) -> bool {
    let mut bytes = s.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        && !RESERVED_WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

fn push_str_scalar(out: &mut String, s: &str) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else {
        // A JSON string literal is a valid YAML double-quoted scalar in both versions.
        out.push_str(&serde_json::Value::String(s.to_string()).to_string());
    }
}

fn push_scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => push_str_scalar(out, s),
        Value::Sequence(_) => out.push_str("[]"),
        Value::Mapping(_) => out.push_str("{}"),
        Value::Tagged(t) => push_scalar(out, &t.value),
    }
}

fn push_key(out: &mut String, k: &Value) {
    match k {
        Value::String(s) => push_str_scalar(out, s),
        other => push_scalar(out, other),
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => !m.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Tagged(t) => is_block(&t.value),
        _ => false,
    }
}

/// Writes a block mapping or sequence whose entries start at column `indent`.
fn emit_block(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Mapping(m) => {
            for (i, (k, val)) in m.iter().enumerate() {
                // The first entry of a mapping inside a sequence follows its "- ".
                if i > 0 || !out.ends_with("- ") {
                    pad(out, indent);
                }
                push_key(out, k);
                out.push(':');
                match val {
                    Value::Mapping(_) if is_block(val) => {
                        out.push('\n');
                        emit_block(out, val, indent + 2);
                    }
                    // Sequences under a key start at the key's column, as kubectl writes them.
                    Value::Sequence(_) if is_block(val) => {
                        out.push('\n');
                        emit_block(out, val, indent);
                    }
                    _ => {
                        out.push(' ');
                        push_scalar(out, val);
                        out.push('\n');
                    }
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                pad(out, indent);
                out.push_str("- ");
                match item {
                    Value::Mapping(_) if is_block(item) => emit_block(out, item, indent + 2),
                    Value::Sequence(_) if is_block(item) => {
                        out.push('\n');
                        emit_block(out, item, indent + 2);
                    }
                    _ => {
                        push_scalar(out, item);
                        out.push('\n');
                    }
                }
            }
        }
        Value::Tagged(t) => emit_block(out, &t.value, indent),
        scalar => {
            pad(out, indent);
            push_scalar(out, scalar);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "NO",
            "no",
            "Yes",
            "Y",
            "on",
            "OFF",
            "true",
            "Null",
            "~",
            "~/*",
            "*/a.b",
            "",
            "1",
            "012",
            "0x10",
            "1e3",
            "1_000",
            "1:2:3:4:5:6:7:8",
            "2001:db8::2",
            "203.0.113.1",
            ".inf",
            "=",
            "<<",
            "a b",
            "a: b",
            "#x",
            "ñandú",
            "-a",
            "a\nb",
            "'q'",
            "\"q\"",
        ] {
            assert!(!is_plain_safe(s), "{s:?} must be quoted");
        }
        for s in [
            "sigma",
            "vps-node1",
            "app.kubernetes.io/managed-by",
            "DE",
            "v1",
            "x_y",
        ] {
            assert!(is_plain_safe(s), "{s:?} can stay plain");
        }
    }

    #[test]
    fn output_reads_back_as_the_same_strings() {
        let tricky = [
            "NO",
            "yes",
            "on",
            "~",
            "~/*",
            "*/a.b",
            "",
            "012",
            "1:2:3:4:5:6:7:8",
            "2001:db8::2",
            "a: b",
            "#x",
            "ñandú-東京",
            "tab\there",
            "line\nbreak",
            "quote\"s'",
            "back\\slash",
            "plain",
        ];
        let mut m = yaml_serde::Mapping::new();
        for (i, s) in tricky.iter().enumerate() {
            m.insert(
                Value::String((*s).to_string()),
                Value::String(format!("{i}")),
            );
            m.insert(
                Value::String(format!("k{i}")),
                Value::Sequence(vec![Value::String((*s).to_string())]),
            );
        }
        let v = Value::Mapping(m);
        let mut out = String::new();
        emit_block(&mut out, &v, 0);
        let back = Value::deserialize(yaml_serde::Deserializer::from_str(&out)).unwrap();
        assert_eq!(back, v, "{out}");
        assert!(out.contains("\"NO\": \"0\""), "{out}");
    }
}

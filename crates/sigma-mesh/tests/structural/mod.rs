//! A small validator for Kubernetes structural schemas (the `openAPIV3Schema` of a CRD
//! version), checking objects the way the API server does before CEL rules run.
//!
//! Unknown fields are errors (the API server would prune or, with strict field validation,
//! reject them; either way a misspelt field in sigma's serialization would be lost). Keywords
//! the validator does not know are errors too, so a schema feature is never skipped silently.
//! CEL rules (`x-kubernetes-validations`) cannot be evaluated here; every rule met on a present
//! value is recorded so that tests can require a model check for each.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

/// A CRD version's schema.
pub struct CrdVersion {
    pub served: bool,
    pub schema: Value,
}

/// One CRD.
pub struct Crd {
    pub group: String,
    pub kind: String,
    pub versions: BTreeMap<String, CrdVersion>,
}

/// Every CRD of a bundle, by kind.
pub struct Crds {
    pub by_kind: BTreeMap<String, Crd>,
}

/// What validating one object found.
#[derive(Debug, Default)]
pub struct Report {
    /// Schema violations, each prefixed with its JSON path.
    pub errors: Vec<String>,
    /// `(path, rule)` of every CEL rule that applies to a present value.
    pub cel_rules: Vec<(String, String)>,
}

/// Where Istio's CRD bundle is: `SIGMA_ISTIO_CRDS`, else `shared/istio/crd-all.gen.yaml` beside
/// the repository (the project's layout on developer machines and in CI).
pub fn crd_path() -> PathBuf {
    if let Ok(p) = std::env::var("SIGMA_ISTIO_CRDS") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let p = dir.join("shared/istio/crd-all.gen.yaml");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "Istio CRDs not found: set SIGMA_ISTIO_CRDS or provide shared/istio/crd-all.gen.yaml beside the repository"
    );
}

/// Loads the bundle.
pub fn load_crds() -> Crds {
    let text = std::fs::read_to_string(crd_path()).expect("read CRD bundle");
    parse_crds(&text)
}

/// Parses a multi-document CRD bundle.
pub fn parse_crds(text: &str) -> Crds {
    let mut by_kind = BTreeMap::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).expect("CRD document parses");
        if v.is_null() || v["kind"] != "CustomResourceDefinition" {
            continue;
        }
        let spec = &v["spec"];
        let kind = spec["names"]["kind"].as_str().expect("kind").to_string();
        let mut versions = BTreeMap::new();
        for ver in spec["versions"].as_array().expect("versions") {
            versions.insert(
                ver["name"].as_str().expect("version name").to_string(),
                CrdVersion {
                    served: ver["served"].as_bool().unwrap_or(false),
                    schema: ver["schema"]["openAPIV3Schema"].clone(),
                },
            );
        }
        by_kind.insert(
            kind.clone(),
            Crd {
                group: spec["group"].as_str().expect("group").to_string(),
                kind,
                versions,
            },
        );
    }
    Crds { by_kind }
}

/// Keywords that do not constrain values.
const ANNOTATION_KEYWORDS: [&str; 4] = ["description", "title", "example", "default"];

/// Keywords this validator evaluates.
const KNOWN_KEYWORDS: [&str; 29] = [
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "maxLength",
    "minLength",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxItems",
    "minItems",
    "maxProperties",
    "minProperties",
    "uniqueItems",
    "pattern",
    "format",
    "nullable",
    "additionalProperties",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

struct Ctx {
    report: Report,
    regexes: BTreeMap<String, Regex>,
}

impl Ctx {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.report.errors.push(format!("{path}: {}", msg.into()));
    }

    fn regex(&mut self, pattern: &str) -> Regex {
        if let Some(r) = self.regexes.get(pattern) {
            return r.clone();
        }
        let r = Regex::new(pattern).expect("schema pattern compiles");
        self.regexes.insert(pattern.to_string(), r.clone());
        r
    }
}

impl Crds {
    /// Validates a whole object (apiVersion, kind, metadata and the rest) against the schema of
    /// the version its `apiVersion` names.
    pub fn validate(&self, obj: &Value) -> Report {
        let mut ctx = Ctx {
            report: Report::default(),
            regexes: BTreeMap::new(),
        };
        let Some(map) = obj.as_object() else {
            ctx.err("", "object expected");
            return ctx.report;
        };
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        let Some(crd) = self.by_kind.get(kind) else {
            ctx.err(".kind", format!("no CRD for kind {kind:?}"));
            return ctx.report;
        };
        let api = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some((group, version)) = api.split_once('/') else {
            ctx.err(".apiVersion", format!("{api:?} is not group/version"));
            return ctx.report;
        };
        if group != crd.group {
            ctx.err(
                ".apiVersion",
                format!("group {group:?} is not {:?}", crd.group),
            );
            return ctx.report;
        }
        let Some(ver) = crd.versions.get(version).filter(|v| v.served) else {
            ctx.err(".apiVersion", format!("version {version:?} is not served"));
            return ctx.report;
        };
        match map.get("metadata") {
            Some(m) => check_metadata(&mut ctx, m),
            None => ctx.err(".metadata", "required"),
        }
        // apiVersion, kind and metadata are validated by the API server itself, not by the
        // CRD's schema, which does not list them.
        let rest: serde_json::Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validate_node(&mut ctx, &ver.schema, &Value::Object(rest), "", true);
        ctx.report
    }
}

/// Validates `value` against a bare schema (for tests of the validator itself).
pub fn validate_value(schema: &Value, value: &Value) -> Report {
    let mut ctx = Ctx {
        report: Report::default(),
        regexes: BTreeMap::new(),
    };
    validate_node(&mut ctx, schema, value, "", true);
    ctx.report
}

fn is_qualified_name(ctx: &mut Ctx, s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_subdomain(ctx, p)
    {
        return false;
    }
    let re = ctx.regex(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$");
    name.len() <= 63 && re.is_match(name)
}

fn is_subdomain(ctx: &mut Ctx, s: &str) -> bool {
    let re = ctx.regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$");
    s.len() <= 253 && re.is_match(s)
}

fn is_label_value(ctx: &mut Ctx, s: &str) -> bool {
    let re = ctx.regex(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$");
    s.len() <= 63 && re.is_match(s)
}

/// Kubernetes' ObjectMeta rules for the fields sigma sets; any other metadata field in a
/// generated object is a mistake, so it is reported too.
fn check_metadata(ctx: &mut Ctx, m: &Value) {
    let Some(m) = m.as_object() else {
        ctx.err(".metadata", "object expected");
        return;
    };
    for (k, v) in m {
        let path = format!(".metadata.{k}");
        match k.as_str() {
            "name" => {
                let s = v.as_str().unwrap_or_default();
                if !is_subdomain(ctx, s) {
                    ctx.err(&path, format!("{s:?} is not a DNS-1123 subdomain"));
                }
            }
            "namespace" => {
                let s = v.as_str().unwrap_or_default();
                let re = ctx.regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
                if s.len() > 63 || !re.is_match(s) {
                    ctx.err(&path, format!("{s:?} is not a DNS-1123 label"));
                }
            }
            "labels" | "annotations" => {
                let Some(map) = v.as_object() else {
                    ctx.err(&path, "object expected");
                    continue;
                };
                let mut size = 0;
                for (lk, lv) in map {
                    if !is_qualified_name(ctx, lk) {
                        ctx.err(&path, format!("invalid key {lk:?}"));
                    }
                    let Some(lv) = lv.as_str() else {
                        ctx.err(&format!("{path}.{lk}"), "string expected");
                        continue;
                    };
                    size += lk.len() + lv.len();
                    if k == "labels" && !is_label_value(ctx, lv) {
                        ctx.err(
                            &format!("{path}.{lk}"),
                            format!("invalid label value {lv:?}"),
                        );
                    }
                }
                if k == "annotations" && size > 256 * 1024 {
                    ctx.err(&path, "annotations exceed 256 KiB");
                }
            }
            other => ctx.err(&path, format!("unexpected metadata field {other:?}")),
        }
    }
    if !m.contains_key("name") {
        ctx.err(".metadata.name", "required");
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `structural` is false inside `oneOf`/`anyOf`/`allOf`/`not`, whose branches only add value
/// checks (`required` alternatives) and do not declare which fields exist.
fn validate_node(ctx: &mut Ctx, s: &Value, v: &Value, path: &str, structural: bool) {
    let Some(schema) = s.as_object() else {
        ctx.err(path, "schema is not an object");
        return;
    };
    for k in schema.keys() {
        if !KNOWN_KEYWORDS.contains(&k.as_str()) && !ANNOTATION_KEYWORDS.contains(&k.as_str()) {
            ctx.err(
                path,
                format!("validator does not support schema keyword {k:?}"),
            );
        }
    }
    let flag = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);

    if v.is_null() {
        if !flag("nullable") {
            ctx.err(path, "null is not allowed");
        }
        return;
    }

    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            let rule = r["rule"].as_str().unwrap_or_default().to_string();
            ctx.report.cel_rules.push((path.to_string(), rule));
        }
    }

    let actual = type_name(v);
    if flag("x-kubernetes-int-or-string") {
        if actual != "integer" && actual != "string" {
            ctx.err(path, format!("integer or string expected, got {actual}"));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = t == actual || (t == "number" && actual == "integer");
        if !ok {
            ctx.err(path, format!("{t} expected, got {actual}"));
            return;
        }
    }

    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        ctx.err(
            path,
            format!("{v} is not one of {}", Value::Array(e.clone())),
        );
    }

    match v {
        Value::String(st) => check_string(ctx, schema, st, path),
        Value::Number(n) => check_number(ctx, schema, n, path),
        Value::Array(items) => check_array(ctx, schema, items, path, structural),
        Value::Object(map) => check_object(ctx, schema, map, path, structural),
        _ => {}
    }

    for (kw, min, max) in [
        ("allOf", None, None),
        ("anyOf", Some(1), None),
        ("oneOf", Some(1), Some(1)),
    ] {
        let Some(branches) = schema.get(kw).and_then(Value::as_array) else {
            continue;
        };
        let passing = branches
            .iter()
            .filter(|b| validate_value_quiet(ctx, b, v, path))
            .count();
        let ok = match (min, max) {
            (None, None) => passing == branches.len(),
            (Some(lo), None) => passing >= lo,
            (Some(lo), Some(hi)) => passing >= lo && passing <= hi,
            _ => unreachable!(),
        };
        if !ok {
            ctx.err(
                path,
                format!("{kw}: {passing} of {} alternatives match", branches.len()),
            );
        }
    }
    if let Some(n) = schema.get("not")
        && validate_value_quiet(ctx, n, v, path)
    {
        ctx.err(path, "matches a schema it must not match (not)");
    }
}

/// Whether `v` satisfies a value-validation branch, without recording its errors or CEL rules.
fn validate_value_quiet(ctx: &mut Ctx, s: &Value, v: &Value, path: &str) -> bool {
    let saved = std::mem::take(&mut ctx.report);
    validate_node(ctx, s, v, path, false);
    let branch = std::mem::replace(&mut ctx.report, saved);
    // A keyword the validator does not know must still fail loudly.
    for e in branch
        .errors
        .iter()
        .filter(|e| e.contains("does not support"))
    {
        ctx.report.errors.push(e.clone());
    }
    branch.errors.is_empty()
}

fn check_string(ctx: &mut Ctx, s: &serde_json::Map<String, Value>, st: &str, path: &str) {
    let len = st.chars().count() as u64;
    if let Some(m) = s.get("maxLength").and_then(Value::as_u64)
        && len > m
    {
        ctx.err(path, format!("longer than {m} characters"));
    }
    if let Some(m) = s.get("minLength").and_then(Value::as_u64)
        && len < m
    {
        ctx.err(path, format!("shorter than {m} characters"));
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        let re = ctx.regex(p);
        if !re.is_match(st) {
            ctx.err(path, format!("{st:?} does not match {p}"));
        }
    }
    match s.get("format").and_then(Value::as_str) {
        Some("date-time") => {
            let re = ctx
                .regex(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$");
            if !re.is_match(st) {
                ctx.err(path, format!("{st:?} is not an RFC 3339 date-time"));
            }
        }
        Some("byte") => {
            let re = ctx.regex(r"^[A-Za-z0-9+/]*={0,2}$");
            if !st.len().is_multiple_of(4) || !re.is_match(st) {
                ctx.err(path, "not base64");
            }
        }
        Some(f) if !matches!(f, "int32" | "int64" | "double" | "float") => {
            ctx.err(
                path,
                format!("validator does not support string format {f:?}"),
            );
        }
        _ => {}
    }
}

fn check_number(
    ctx: &mut Ctx,
    s: &serde_json::Map<String, Value>,
    n: &serde_json::Number,
    path: &str,
) {
    let x = n.as_f64().unwrap_or(f64::NAN);
    let excl = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    if let Some(m) = s.get("maximum").and_then(Value::as_f64)
        && (x > m || (excl("exclusiveMaximum") && x >= m))
    {
        ctx.err(path, format!("{n} exceeds the maximum {m}"));
    }
    if let Some(m) = s.get("minimum").and_then(Value::as_f64)
        && (x < m || (excl("exclusiveMinimum") && x <= m))
    {
        ctx.err(path, format!("{n} is below the minimum {m}"));
    }
    let range = match s.get("format").and_then(Value::as_str) {
        Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
        Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
        _ => None,
    };
    if let Some((lo, hi)) = range
        && (x < lo || x > hi)
    {
        ctx.err(path, format!("{n} does not fit the format"));
    }
}

fn check_array(
    ctx: &mut Ctx,
    s: &serde_json::Map<String, Value>,
    items: &[Value],
    path: &str,
    structural: bool,
) {
    let n = items.len() as u64;
    if let Some(m) = s.get("maxItems").and_then(Value::as_u64)
        && n > m
    {
        ctx.err(path, format!("more than {m} items"));
    }
    if let Some(m) = s.get("minItems").and_then(Value::as_u64)
        && n < m
    {
        ctx.err(path, format!("fewer than {m} items"));
    }
    let list_type = s.get("x-kubernetes-list-type").and_then(Value::as_str);
    if list_type == Some("set") || s.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
        let mut seen = HashSet::new();
        for it in items {
            if !seen.insert(it.to_string()) {
                ctx.err(path, format!("duplicate item {it}"));
            }
        }
    }
    if list_type == Some("map") {
        let keys: Vec<&str> = s
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, it) in items.iter().enumerate() {
            let key: Vec<String> = keys.iter().map(|k| it[*k].to_string()).collect();
            if !seen.insert(key.clone()) {
                ctx.err(
                    &format!("{path}[{i}]"),
                    format!("duplicate map-list key {key:?}"),
                );
            }
        }
    }
    match s.get("items") {
        Some(item_schema) => {
            for (i, it) in items.iter().enumerate() {
                validate_node(ctx, item_schema, it, &format!("{path}[{i}]"), structural);
            }
        }
        None if structural && !items.is_empty() => {
            ctx.err(path, "array schema without items");
        }
        None => {}
    }
}

fn check_object(
    ctx: &mut Ctx,
    s: &serde_json::Map<String, Value>,
    map: &serde_json::Map<String, Value>,
    path: &str,
    structural: bool,
) {
    let n = map.len() as u64;
    if let Some(m) = s.get("maxProperties").and_then(Value::as_u64)
        && n > m
    {
        ctx.err(path, format!("more than {m} properties"));
    }
    if let Some(m) = s.get("minProperties").and_then(Value::as_u64)
        && n < m
    {
        ctx.err(path, format!("fewer than {m} properties"));
    }
    if let Some(req) = s.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                ctx.err(&format!("{path}.{r}"), "required");
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties");
    let preserve = s
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (k, v) in map {
        let p = format!("{path}.{k}");
        if let Some(ps) = props.and_then(|p| p.get(k)) {
            validate_node(ctx, ps, v, &p, structural);
            continue;
        }
        match additional {
            Some(Value::Bool(false)) => ctx.err(&p, "unknown field"),
            Some(Value::Bool(true)) => {}
            Some(a) => validate_node(ctx, a, v, &p, structural),
            None if structural && !preserve => ctx.err(&p, "unknown field"),
            None => {}
        }
    }
}

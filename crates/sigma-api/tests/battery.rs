//! The hostile-input battery: a real sigma-api (SQLite and PostgreSQL), its own OpenAPI
//! document walked operation by operation, and every operation sent the classes of bad input
//! and bad credentials an attacker or a broken client would send.
//!
//! Nothing here names an operation except the role table (the document does not state which
//! roles may call what; the day it does, in the OpenAPI 3.1 way — role names in the `security`
//! requirement's array — the document wins). A new endpoint therefore gets the whole battery
//! without touching this file, and an endpoint the battery cannot classify (an authenticated
//! operation missing from the role table, a path parameter of an unknown collection) fails it.
//!
//! The rules checked, per operation:
//! - credentials: no key, a malformed `Authorization`, an unknown key, a known prefix with a
//!   wrong secret, an unknown enrollment token and a revoked key are 401; every credential
//!   that may not call the operation (admin, operator, readonly, agent keys, an enrollment
//!   token) is 403 (an enrollment token outside register may also be 401: it is no API key);
//!   public operations (no `security`) answer whatever the credentials;
//! - bodies: malformed, truncated, trailing data, two objects, an array instead of the object,
//!   empty, wrong types (per property of the schema), unknown field, duplicate key, 10,000
//!   levels of nesting, control characters (NUL, ESC, U+202E) in every string, oversized (413),
//!   wrong or missing content type (415) — a 4xx JSON error naming the field with a key that may
//!   call it, and 401/403 with credentials that may not (credentials are checked before the
//!   body, so a caller without rights learns nothing about the schema);
//! - path parameters: invalid UTF-8, NUL, ESC, U+202E, very long, `..%2F`, unicode and a UUID
//!   that does not exist — a 4xx JSON error;
//! - query parameters (from the document): wrong types, negative and huge numbers, control
//!   characters, invalid UTF-8, repeated keys, an unknown key — a 4xx JSON error or a
//!   documented 2xx;
//! - every answer: below 500, and every 4xx is `{"error", "message", …}` as `application/json`;
//! - afterwards: the inventory seeded before (providers, purposes, VPS with addresses, routes,
//!   keys, tokens, read back through the API) is unchanged and the server is healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, both_backends};

both_backends!(battery);

/// `--max-body-bytes` of the server under test: small, so the oversized class stays cheap.
const MAX_BODY: usize = 64 * 1024;
/// Levels of nesting of the deep-nesting class.
const NESTING: usize = 10_000;
/// A UUID no seeded object has.
const NO_SUCH_UUID: &str = "6f1c2a4e-5b7d-4c3e-9a8f-00000000beef";
/// A name no seeded object has.
const NO_SUCH_NAME: &str = "battery-nonexistent";
/// Longest one request may take: the only waiting endpoint (the agent's long poll) is always
/// asked with `wait_seconds=1`, so a slower answer is a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The field name of the unknown-field class.
const UNKNOWN_FIELD: &str = "battery_unknown_field";

// ---------------------------------------------------------------------------------------------
// Credentials and roles

/// A credential that can call some operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    Admin,
    Operator,
    Readonly,
    Agent,
    Enrollment,
}

impl Cred {
    const ALL: [Cred; 5] = [
        Cred::Admin,
        Cred::Operator,
        Cred::Readonly,
        Cred::Agent,
        Cred::Enrollment,
    ];

    fn name(self) -> &'static str {
        match self {
            Cred::Admin => "admin",
            Cred::Operator => "operator",
            Cred::Readonly => "readonly",
            Cred::Agent => "agent",
            Cred::Enrollment => "enrollment",
        }
    }

    fn from_name(s: &str) -> Option<Cred> {
        Cred::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The least privileged credentials first: the battery calls an operation with the
    /// weakest credential that may, so a check that only holds for admins is not mistaken for
    /// the rule.
    fn preference(self) -> u8 {
        match self {
            Cred::Enrollment => 0,
            Cred::Agent => 1,
            Cred::Readonly => 2,
            Cred::Operator => 3,
            Cred::Admin => 4,
        }
    }
}

use Cred::{Admin, Agent, Enrollment, Operator, Readonly};

const READERS: &[Cred] = &[Admin, Operator, Readonly];
const OPERATORS: &[Cred] = &[Admin, Operator];
const ADMINS: &[Cred] = &[Admin];
const AGENTS: &[Cred] = &[Agent];

/// Who may call each authenticated operation (README "API" table, docs/security.md), for as
/// long as the document does not say so itself. Every authenticated operation of the document
/// must be here and every entry must be in the document.
const ROLE_TABLE: &[(&str, &str, &[Cred])] = &[
    ("get", "/metrics", READERS),
    (
        "get",
        "/api/openapi.json",
        &[Admin, Operator, Readonly, Agent],
    ),
    ("get", "/api/prometheus/targets", READERS),
    ("get", "/api/providers", READERS),
    ("post", "/api/providers", OPERATORS),
    ("get", "/api/providers/{id}", READERS),
    ("patch", "/api/providers/{id}", OPERATORS),
    ("delete", "/api/providers/{id}", OPERATORS),
    ("get", "/api/purposes", READERS),
    ("post", "/api/purposes", OPERATORS),
    ("get", "/api/purposes/{name}", READERS),
    ("patch", "/api/purposes/{name}", OPERATORS),
    ("delete", "/api/purposes/{name}", OPERATORS),
    ("get", "/api/vps", READERS),
    ("post", "/api/vps", OPERATORS),
    ("get", "/api/vps/{id}", READERS),
    ("patch", "/api/vps/{id}", OPERATORS),
    ("delete", "/api/vps/{id}", OPERATORS),
    ("post", "/api/vps/{id}/retire", OPERATORS),
    ("post", "/api/vps/{id}/restore", OPERATORS),
    ("post", "/api/agent/register", &[Enrollment, Agent]),
    ("post", "/api/agent/heartbeat", AGENTS),
    ("get", "/api/api-keys", ADMINS),
    ("post", "/api/api-keys", ADMINS),
    ("post", "/api/api-keys/{id}/revoke", ADMINS),
    ("get", "/api/enrollment-tokens", OPERATORS),
    ("post", "/api/enrollment-tokens", OPERATORS),
    ("post", "/api/enrollment-tokens/{id}/revoke", OPERATORS),
    ("get", "/api/audit", ADMINS),
    ("get", "/api/vps/{id}/envoy-routes", READERS),
    ("post", "/api/vps/{id}/envoy-routes", OPERATORS),
    ("put", "/api/vps/{id}/envoy-routes", OPERATORS),
    ("get", "/api/envoy-routes/{id}", READERS),
    ("patch", "/api/envoy-routes/{id}", OPERATORS),
    ("delete", "/api/envoy-routes/{id}", OPERATORS),
    ("get", "/api/vps/{id}/envoy-routes/plan", READERS),
    ("get", "/api/agent/envoy-config", AGENTS),
    (
        "get",
        "/api/agent/istio-bootstrap",
        &[Admin, Operator, Agent],
    ),
    ("get", "/api/mesh/manifests", READERS),
    ("get", "/api/vps/{id}/mesh", READERS),
    ("get", "/api/prometheus/contracts", READERS),
    ("get", "/api/exchange-rates", READERS),
    ("put", "/api/exchange-rates/{from}/{to}", OPERATORS),
    ("delete", "/api/exchange-rates/{from}/{to}", OPERATORS),
    ("get", "/api/costs/summary", READERS),
    ("get", "/api/vps/export", READERS),
    ("post", "/api/vps/import", OPERATORS),
];

// ---------------------------------------------------------------------------------------------
// The document

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// One operation of the document, classified.
#[derive(Debug)]
struct Op {
    method: &'static str,
    /// The path template (`/api/vps/{id}`).
    path: String,
    /// `POST /api/vps`.
    id: String,
    /// No `security`: anyone may call it.
    public: bool,
    /// Who may call it (empty when public).
    allowed: Vec<Cred>,
    /// The JSON schema of the request body.
    body: Option<Value>,
    /// Names of the path parameters, in template order.
    path_params: Vec<String>,
    /// Query parameters: name, schema, required.
    query: Vec<(String, Value, bool)>,
    /// Documented 2xx statuses.
    success: Vec<u16>,
}

impl Op {
    /// The weakest credential that may call it.
    fn caller(&self) -> Cred {
        *self
            .allowed
            .iter()
            .min_by_key(|c| c.preference())
            .expect("an authenticated operation has a caller")
    }

    fn forbidden(&self) -> Vec<Cred> {
        Cred::ALL
            .into_iter()
            .filter(|c| !self.allowed.contains(c))
            .collect()
    }
}

/// Walks `paths × methods` of the document; every problem that stops an operation from being
/// classified is returned, all at once.
fn classify(doc: &Value) -> Result<Vec<Op>, Vec<String>> {
    let mut ops = Vec::new();
    let mut problems = Vec::new();
    let paths = doc["paths"].as_object().expect("document has paths");
    let global_security = doc.get("security");
    let mut table_used = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let id = format!("{} {path}", method.to_uppercase());
            let security = op.get("security").or(global_security);
            let requirements = security
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // `{}` in the list is "no credentials" (optional security).
            let public = requirements.is_empty()
                || requirements
                    .iter()
                    .any(|r| r.as_object().is_some_and(Map::is_empty));
            let mut allowed = Vec::new();
            if !public {
                let stated: Vec<String> = requirements
                    .iter()
                    .filter_map(Value::as_object)
                    .flat_map(|r| r.values())
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                let from_table = ROLE_TABLE
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path);
                if let Some((m, p, _)) = from_table {
                    table_used.insert((*m, *p));
                }
                if !stated.is_empty() {
                    for r in stated {
                        match Cred::from_name(&r) {
                            Some(c) => allowed.push(c),
                            None => problems.push(format!("{id}: unknown role {r:?} in security")),
                        }
                    }
                } else if let Some((_, _, roles)) = from_table {
                    allowed = roles.to_vec();
                } else {
                    problems.push(format!(
                        "{id}: authenticated, but neither the document nor the battery's role table says who may call it"
                    ));
                    continue;
                }
            }
            let body = op
                .pointer("/requestBody/content")
                .and_then(Value::as_object)
                .map(|c| {
                    c.iter()
                        .find(|(ct, _)| ct.starts_with("application/json"))
                        .map(|(_, m)| m["schema"].clone())
                        .ok_or_else(|| format!("{id}: a request body that is not JSON"))
                });
            let body = match body.transpose() {
                Ok(b) => b,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            let mut path_params = Vec::new();
            let mut query = Vec::new();
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    item.get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            for p in params {
                let p = resolve(doc, p);
                let name = p["name"].as_str().unwrap_or_default().to_string();
                match p["in"].as_str() {
                    Some("path") => path_params.push(name),
                    Some("query") => query.push((
                        name,
                        p.get("schema").cloned().unwrap_or(json!({})),
                        p["required"].as_bool() == Some(true),
                    )),
                    Some("header") | Some("cookie") => {}
                    other => problems.push(format!("{id}: parameter {name} in {other:?}")),
                }
            }
            for seg in path.split('/') {
                if let Some(n) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if !path_params.iter().any(|p| p == n) {
                        problems.push(format!("{id}: path parameter {n} is not documented"));
                    }
                    if seed_kind(path, n).is_none() {
                        problems.push(format!(
                            "{id}: the battery does not know which seeded object {{{n}}} names here"
                        ));
                    }
                }
            }
            // The import takes its options (dry_run, mode) in the query and has no object to aim
            // at: its hostile-query probes send the valid body, and the snapshot after the
            // battery shows whether any of them wrote.
            let query_only_ok = method == "post" && path == "/api/vps/import";
            if !query.is_empty() && method != "get" && path_params.is_empty() && !query_only_ok {
                // Query classes aim a changing operation at an object that does not exist, so a
                // query accepted as documented changes nothing; without a path there is none.
                problems.push(format!(
                    "{id}: a changing operation with query parameters and no path id to aim at a missing object"
                ));
            }
            let success = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.parse::<u16>().ok())
                .filter(|s| (200..300).contains(s))
                .collect();
            ops.push(Op {
                method,
                path: path.clone(),
                id,
                public,
                allowed,
                body,
                path_params,
                query,
                success,
            });
        }
    }
    for (m, p, _) in ROLE_TABLE {
        if !table_used.contains(&(*m, *p)) {
            problems.push(format!(
                "role table: {} {p} is not an authenticated operation of the document",
                m.to_uppercase()
            ));
        }
    }
    if problems.is_empty() {
        Ok(ops)
    } else {
        Err(problems)
    }
}

/// What a path parameter names: the collection segment before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeedKind {
    Provider,
    Purpose,
    Vps,
    Route,
    ApiKey,
    Token,
    /// `{from}` of an exchange rate (seeded: USD→EUR).
    RateFrom,
    /// `{to}` of an exchange rate.
    RateTo,
}

fn seed_kind(path: &str, param: &str) -> Option<SeedKind> {
    let segs: Vec<&str> = path.split('/').collect();
    let i = segs.iter().position(|s| *s == format!("{{{param}}}"))?;
    let collection = *segs.get(i.checked_sub(1)?)?;
    Some(match (collection, param) {
        ("providers", "id") => SeedKind::Provider,
        ("purposes", "name") => SeedKind::Purpose,
        ("vps", "id") => SeedKind::Vps,
        ("envoy-routes", "id") => SeedKind::Route,
        ("api-keys", "id") => SeedKind::ApiKey,
        ("enrollment-tokens", "id") => SeedKind::Token,
        ("exchange-rates", "from") => SeedKind::RateFrom,
        (_, "to") if segs.get(i.wrapping_sub(2)) == Some(&"exchange-rates") => SeedKind::RateTo,
        _ => return None,
    })
}

/// The schema a `$ref` points to. A dangling reference (a defect of the document, reported by
/// [`dangling_refs`]) reads as the empty schema, which admits anything.
fn resolve<'a>(doc: &'a Value, mut s: &'a Value) -> &'a Value {
    static ANYTHING: Value = Value::Null;
    for _ in 0..64 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => match doc.pointer(r.trim_start_matches('#')) {
                Some(t) => s = t,
                None => return &ANYTHING,
            },
            None => return s,
        }
    }
    panic!("$ref loop")
}

/// Every `$ref` of the document that points nowhere, with where it is.
fn dangling_refs(doc: &Value) -> Vec<String> {
    fn walk(doc: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str)
                    && doc.pointer(r.trim_start_matches('#')).is_none()
                {
                    out.push(format!("document: dangling $ref {r} at {at}"));
                }
                for (k, x) in m {
                    walk(doc, x, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(doc, x, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, doc, "", &mut out);
    out
}

/// The properties of an object schema (its `allOf` parts merged) and whether it refuses
/// properties it does not list (`additionalProperties: false`).
fn properties_of(doc: &Value, s: &Value) -> (Vec<(String, Value)>, bool) {
    let s = resolve(doc, s);
    let mut props: Vec<(String, Value)> = s["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut closed = s.get("additionalProperties") == Some(&Value::Bool(false));
    for part in s["allOf"].as_array().into_iter().flatten() {
        let (p, c) = properties_of(doc, part);
        props.extend(p);
        closed |= c;
    }
    (props, closed)
}

/// The JSON types a schema admits (`integer` within `number`); `None` when it admits anything.
fn admitted(doc: &Value, s: &Value) -> Option<BTreeSet<String>> {
    let s = resolve(doc, s);
    let mut out = BTreeSet::new();
    if let Some(vs) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
    {
        for v in vs {
            out.extend(admitted(doc, v)?);
        }
        return Some(out);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        return all.iter().find_map(|v| admitted(doc, v));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(e.iter().map(|v| json_type(v).to_string()).collect());
    }
    match s.get("type") {
        Some(Value::String(t)) => {
            out.insert(t.clone());
        }
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ if s.get("properties").is_some() => {
            out.insert("object".into());
        }
        _ => return None,
    }
    if s.get("nullable") == Some(&Value::Bool(true)) {
        out.insert("null".into());
    }
    Some(out)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn admits(types: &BTreeSet<String>, v: &Value) -> bool {
    let t = json_type(v);
    types.contains(t) || (t == "integer" && types.contains("number"))
}

/// A value of a type the schema does not admit, if there is one.
fn wrong_value(doc: &Value, s: &Value) -> Option<Value> {
    let types = admitted(doc, s)?;
    [
        json!(true),
        json!(12345),
        json!("battery-wrong-type"),
        json!({"battery": 1}),
        json!(["battery"]),
    ]
    .into_iter()
    .find(|v| !admits(&types, v))
}

/// A plausible string for a property, so that the rest of a body does not fail on its own.
fn string_for(name: &str, format: Option<&str>) -> String {
    match format {
        Some("uuid") => return NO_SUCH_UUID.into(),
        Some("date-time") => return "2026-01-01T00:00:00Z".into(),
        Some("ipv4") | Some("ip") => return "192.0.2.10".into(),
        Some("ipv6") => return "2001:db8::10".into(),
        Some("uri") | Some("url") => return "https://battery.example.net".into(),
        Some("date") => return "2026-06-01".into(),
        _ => {}
    }
    match name {
        "hostname" => "battery-probe.example.net",
        "ip" | "backend_host" => "192.0.2.10",
        "country" => "DE",
        "website" | "url" => "https://battery.example.net",
        "label" => "public",
        "purpose" => "xrayr",
        // Exact decimals and ISO 4217 codes (issue 20), which the schema types as strings.
        "cost" | "cost_min" | "cost_max" | "rate" => "4.99",
        "currency" | "from" | "to" => "EUR",
        _ => "battery-probe",
    }
    .into()
}

/// A value the schema admits: with `full`, every property of every object; otherwise the
/// required ones only.
fn synth(doc: &Value, s: &Value, name: &str, full: bool, depth: usize) -> Value {
    assert!(depth < 16, "schema too deep at {name}");
    let s = resolve(doc, s);
    if let Some(vs) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
    {
        let v = vs
            .iter()
            .find(|v| resolve(doc, v).get("type") != Some(&json!("null")))
            .unwrap_or(&Value::Null);
        return synth(doc, v, name, full, depth + 1);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut out = Map::new();
        for v in all {
            match synth(doc, v, name, full, depth + 1) {
                Value::Object(m) => out.extend(m),
                other => return other,
            }
        }
        return Value::Object(out);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e
            .iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null);
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.get("properties").is_some() => "object",
        _ => "any",
    };
    match ty {
        "object" => {
            let required: BTreeSet<&str> = s["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut out = Map::new();
            for (k, ps) in s["properties"].as_object().into_iter().flatten() {
                if full || required.contains(k.as_str()) {
                    out.insert(k.clone(), synth(doc, ps, k, full, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            // The document states no length for a load average; the server wants three.
            let hinted = if name == "load_average" { 3 } else { 1 };
            let min = s["minItems"].as_u64().unwrap_or(0);
            let n = if full { min.max(hinted) } else { min };
            Value::Array(
                (0..n)
                    .map(|_| synth(doc, &s["items"], name, full, depth + 1))
                    .collect(),
            )
        }
        "string" => Value::String(string_for(name, s["format"].as_str())),
        // The documented range starts at 60 s; the schema does not say so.
        "integer" if name == "ttl_seconds" => json!(3600),
        "integer" => {
            let min = s["minimum"].as_i64().unwrap_or(1).max(1);
            json!(s["maximum"].as_i64().map_or(min, |max| min.min(max)))
        }
        "number" => json!(1),
        "boolean" => json!(false),
        "null" => Value::Null,
        // A free-form value (e.g. a purpose's mesh settings): the empty object means "nothing".
        _ => json!({}),
    }
}

/// Every string leaf of a value: its JSON path and the top-level property it is under.
fn string_leaves(v: &Value) -> Vec<(Vec<PathSeg>, String)> {
    fn walk(v: &Value, path: &mut Vec<PathSeg>, out: &mut Vec<Vec<PathSeg>>) {
        match v {
            Value::String(_) => out.push(path.clone()),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(PathSeg::Index(i));
                    walk(x, path, out);
                    path.pop();
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(PathSeg::Key(k.clone()));
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out.into_iter()
        .filter_map(|p| match p.first() {
            Some(PathSeg::Key(k)) => {
                let top = k.clone();
                Some((p, top))
            }
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum PathSeg {
    Key(String),
    Index(usize),
}

fn leaf_mut<'a>(v: &'a mut Value, path: &[PathSeg]) -> &'a mut Value {
    path.iter().fold(v, |v, seg| match seg {
        PathSeg::Key(k) => &mut v[k.as_str()],
        PathSeg::Index(i) => &mut v[*i],
    })
}

fn path_text(path: &[PathSeg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) if s.is_empty() => s.push_str(k),
            PathSeg::Key(k) => {
                let _ = write!(s, ".{k}");
            }
            PathSeg::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Requests and verdicts

/// The `Authorization` header of a request.
#[derive(Clone)]
enum Authz {
    None,
    Raw(Vec<u8>),
}

fn bearer(secret: &str) -> Authz {
    Authz::Raw(format!("Bearer {secret}").into_bytes())
}

struct Resp {
    status: u16,
    ctype: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn excerpt(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t: String = t.chars().take(160).collect();
        t.replace('\n', " ")
    }
}

/// The status an answer must have.
#[derive(Clone, Copy)]
enum Want {
    /// One of these.
    OneOf(&'static [u16]),
    /// A 4xx other than these.
    ClientErrorBut(&'static [u16]),
    /// A 4xx or a documented 2xx.
    ClientErrorOrSuccess,
    /// A documented 2xx.
    Success,
}

/// What a 4xx must name.
#[derive(Clone)]
enum Names {
    Nothing,
    /// A key of `fields` that is this property or under it.
    Field(String),
    /// This text anywhere in the error.
    Mention(String),
}

struct Failure {
    op: String,
    detail: String,
    status: u16,
    reason: String,
}

/// Per class: the operations it was sent to, requests sent, failures.
#[derive(Default)]
struct ClassTally {
    ops: BTreeSet<String>,
    requests: usize,
    failures: Vec<Failure>,
}

struct Battery<'a> {
    s: &'a SigmaApi,
    http: reqwest::Client,
    /// For oversized bodies: a server may answer before reading such a body and then close the
    /// connection, which a pooled connection would only notice on its next request.
    unpooled: reqwest::Client,
    classes: BTreeMap<String, ClassTally>,
    requests: usize,
}

impl<'a> Battery<'a> {
    fn new(s: &'a SigmaApi) -> Self {
        Battery {
            s,
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            unpooled: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            classes: BTreeMap::new(),
            requests: 0,
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        auth: &Authz,
        body: Option<(Option<&str>, Vec<u8>)>,
    ) -> Result<Resp, String> {
        self.requests += 1;
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let oversized = body.as_ref().is_some_and(|(_, b)| b.len() > MAX_BODY);
        let client = if oversized {
            &self.unpooled
        } else {
            &self.http
        };
        let mut req = client.request(m, self.s.url(path));
        if let Authz::Raw(h) = auth {
            let v = reqwest::header::HeaderValue::from_bytes(h)
                .map_err(|e| format!("header not sendable: {e}"))?;
            req = req.header(reqwest::header::AUTHORIZATION, v);
        }
        if let Some((ctype, bytes)) = body {
            if let Some(ct) = ctype {
                req = req.header(reqwest::header::CONTENT_TYPE, ct);
            }
            req = req.body(bytes);
        }
        let resp = req.send().await.map_err(|e| format!("transport: {e:?}"))?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e:?}"))?
            .to_vec();
        Ok(Resp {
            status,
            ctype,
            body,
        })
    }

    /// Sends one request and judges the answer.
    #[allow(clippy::too_many_arguments)]
    async fn probe(
        &mut self,
        op: &Op,
        class: &str,
        detail: &str,
        path: &str,
        auth: &Authz,
        body: Option<(Option<&str>, Vec<u8>)>,
        want: Want,
        names: Names,
    ) {
        let r = self.send(op.method, path, auth, body).await;
        let tally = self.classes.entry(class.to_string()).or_default();
        tally.ops.insert(op.id.clone());
        tally.requests += 1;
        let (status, reason) = match r {
            Err(e) => (0, Some(e)),
            Ok(r) => (r.status, judge(op, &r, want, &names)),
        };
        if let Some(reason) = reason {
            tally.failures.push(Failure {
                op: op.id.clone(),
                detail: detail.to_string(),
                status,
                reason,
            });
        }
    }
}

/// Why an answer breaks the rule, if it does.
fn judge(op: &Op, r: &Resp, want: Want, names: &Names) -> Option<String> {
    let s = r.status;
    if s >= 500 {
        return Some(format!("server error: {}", r.excerpt()));
    }
    if (400..500).contains(&s) {
        let v = r.json();
        let is_error = v["error"].is_string() && v["message"].is_string();
        if !r.ctype.starts_with("application/json") || !is_error {
            return Some(format!(
                "a 4xx that is not a JSON error ({}): {}",
                r.ctype,
                r.excerpt()
            ));
        }
    }
    let documented = op.success.contains(&s);
    let ok = match want {
        Want::OneOf(set) => set.contains(&s),
        Want::ClientErrorBut(not) => (400..500).contains(&s) && !not.contains(&s),
        Want::ClientErrorOrSuccess => (400..500).contains(&s) || documented,
        Want::Success => documented,
    };
    if !ok {
        let expected = match want {
            Want::OneOf(set) => format!("{set:?}"),
            Want::ClientErrorBut(not) => format!("4xx but {not:?}"),
            Want::ClientErrorOrSuccess => format!("4xx or {:?}", op.success),
            Want::Success => format!("{:?}", op.success),
        };
        return Some(format!("expected {expected}: {}", r.excerpt()));
    }
    if (400..500).contains(&s) {
        let v = r.json();
        match names {
            Names::Nothing => {}
            Names::Field(f) => {
                let named = v["fields"].as_object().is_some_and(|m| {
                    m.keys().any(|k| {
                        k == f || k.starts_with(&format!("{f}.")) || k.starts_with(&format!("{f}["))
                    })
                });
                if !named {
                    return Some(format!(
                        "the error does not name field {f}: {}",
                        r.excerpt()
                    ));
                }
            }
            Names::Mention(t) => {
                if !v.to_string().contains(t.as_str()) {
                    return Some(format!("the error does not mention {t}: {}", r.excerpt()));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The seeded inventory

struct Seed {
    creds: BTreeMap<Cred, String>,
    revoked_admin: String,
    provider_id: String,
    purpose: String,
    /// The VPS path parameters name (routes, retire, delete...): not the agent's.
    vps_id: String,
    agent_hostname: String,
    route_id: String,
    key_id: String,
    token_id: String,
    /// Every VPS id, for reading their routes back.
    vps_ids: Vec<String>,
}

impl Seed {
    fn value(&self, kind: SeedKind) -> &str {
        match kind {
            SeedKind::Provider => &self.provider_id,
            SeedKind::Purpose => &self.purpose,
            SeedKind::Vps => &self.vps_id,
            SeedKind::Route => &self.route_id,
            SeedKind::ApiKey => &self.key_id,
            SeedKind::Token => &self.token_id,
            SeedKind::RateFrom => "USD",
            SeedKind::RateTo => "EUR",
        }
    }

    fn auth(&self, c: Cred) -> Authz {
        bearer(&self.creds[&c])
    }
}

async fn created(s: &SigmaApi, path: &str, body: Value) -> Value {
    let (st, v) = s.post(path, ADMIN_KEY, body).await;
    assert!(st == 201 || st == 200, "seeding {path}: {st} {v}");
    v
}

/// The id of an object, or of the object a creation answer wraps (`{"key", "api_key"}`).
fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .or_else(|| v["api_key"]["id"].as_str())
        .or_else(|| v["enrollment_token"]["id"].as_str())
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

async fn seed(s: &SigmaApi) -> Seed {
    let provider = created(
        s,
        "/api/providers",
        json!({"name": "battery-hetzner", "country": "de", "website": "https://hetzner.example.com", "notes": "seeded"}),
    )
    .await;
    created(s, "/api/providers", json!({"name": "battery-ovh"})).await;
    created(
        s,
        "/api/purposes",
        json!({"name": "battery-edge", "display_name": "Edge"}),
    )
    .await;
    let vps = |hostname: &str, purpose: &str, provider: &str, n: u8| {
        json!({
            "hostname": hostname, "purpose": purpose, "provider": provider, "country": "DE",
            "city": "Falkenstein", "alias": format!("b{n}"), "tags": ["env=prod", "battery"],
            "ip_addresses": [
                {"ip": format!("203.0.113.{n}"), "label": "public"},
                {"ip": format!("2001:db8::{n}"), "label": "public"},
                {"ip": format!("10.0.0.{n}"), "label": "private"},
            ],
        })
    };
    let victim = id_of(
        &created(
            s,
            "/api/vps",
            vps("victim-1.example.net", "battery-edge", "battery-hetzner", 1),
        )
        .await,
    );
    let agent_vps = id_of(
        &created(
            s,
            "/api/vps",
            vps("agent-1.example.net", "xrayr", "battery-ovh", 2),
        )
        .await,
    );
    let retired = id_of(
        &created(
            s,
            "/api/vps",
            vps("retired-1.example.net", "vpn-relay", "battery-ovh", 3),
        )
        .await,
    );
    let (st, v) = s
        .post(
            &format!("/api/vps/{retired}/retire?force=true"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let deleted = id_of(
        &created(
            s,
            "/api/vps",
            vps("deleted-1.example.net", "monitor", "battery-ovh", 4),
        )
        .await,
    );
    let (st, v) = s.delete(&format!("/api/vps/{deleted}"), ADMIN_KEY).await;
    assert_eq!(st, 200, "{v}");

    let route = created(
        s,
        &format!("/api/vps/{victim}/envoy-routes"),
        json!({"name": "wg", "listen_port": 51820, "backend_host": "192.0.2.1", "backend_port": 51820}),
    )
    .await;
    created(
        s,
        &format!("/api/vps/{victim}/envoy-routes"),
        json!({"name": "https", "listen_port": 443, "backend_host": "origin.example.com", "backend_port": 8443, "proxy_protocol": "v2"}),
    )
    .await;
    created(
        s,
        &format!("/api/vps/{agent_vps}/envoy-routes"),
        json!({"name": "wg", "listen_port": 51820, "backend_host": "192.0.2.2", "backend_port": 51820}),
    )
    .await;

    let key = |name: &str, role: &str, vps: Option<&str>| {
        let mut b = json!({"name": name, "role": role});
        if let Some(v) = vps {
            b["vps_id"] = json!(v);
        }
        b
    };
    let mut creds = BTreeMap::new();
    creds.insert(Admin, ADMIN_KEY.to_string());
    for (c, body) in [
        (Operator, key("battery operator", "operator", None)),
        (Readonly, key("battery readonly", "readonly", None)),
        (Agent, key("battery agent", "agent", Some(&agent_vps))),
    ] {
        let v = created(s, "/api/api-keys", body).await;
        creds.insert(c, v["key"].as_str().unwrap().to_string());
    }
    let victim_key = created(s, "/api/api-keys", key("battery victim", "readonly", None)).await;
    let revoked = created(s, "/api/api-keys", key("battery revoked", "admin", None)).await;
    let (st, v) = s
        .post(
            &format!("/api/api-keys/{}/revoke", id_of(&revoked)),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    let (st, v) = s
        .request(
            "PUT",
            "/api/exchange-rates/USD/EUR",
            Some(ADMIN_KEY),
            Some(json!({"rate": "0.9"})),
        )
        .await;
    assert_eq!(st, 200, "seeding a rate: {v}");

    // Many uses: a defect that enrolls with it must not hide the next one behind a used-up
    // token.
    let token = created(
        s,
        "/api/enrollment-tokens",
        json!({"purpose": "xrayr", "max_uses": 1000}),
    )
    .await;
    creds.insert(Enrollment, token["token"].as_str().unwrap().to_string());
    let victim_token = created(
        s,
        "/api/enrollment-tokens",
        json!({"purpose": "battery-edge", "provider": "battery-hetzner", "country": "DE"}),
    )
    .await;
    let revoked_token = created(s, "/api/enrollment-tokens", json!({})).await;
    let (st, v) = s
        .post(
            &format!("/api/enrollment-tokens/{}/revoke", id_of(&revoked_token)),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    Seed {
        creds,
        revoked_admin: revoked["key"].as_str().unwrap().to_string(),
        provider_id: id_of(&provider),
        purpose: "battery-edge".into(),
        vps_id: victim.clone(),
        agent_hostname: "agent-1.example.net".into(),
        route_id: id_of(&route),
        key_id: id_of(&victim_key),
        token_id: id_of(&victim_token),
        vps_ids: vec![victim, agent_vps, retired, deleted],
    }
}

/// The stored inventory as the API shows it, minus what reading it changes (a key's
/// `last_used_at`).
async fn snapshot(s: &SigmaApi, seed: &Seed) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let get = async |path: &str| {
        let (st, v) = s.get(path, ADMIN_KEY).await;
        assert_eq!(st, 200, "snapshot {path}: {v}");
        v
    };
    let items = |v: Value| v["items"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<(String, Value)> = Vec::new();
    for p in items(get("/api/providers?limit=1000").await) {
        rows.push((format!("provider {}", p["name"]), p));
    }
    for p in items(get("/api/purposes?limit=1000").await) {
        rows.push((format!("purpose {}", p["name"]), p));
    }
    for r in get("/api/exchange-rates")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        rows.push((format!("exchange rate {}/{}", r["from"], r["to"]), r));
    }
    let mut vps = items(get("/api/vps?limit=1000").await);
    vps.extend(items(get("/api/vps?status=deleted&limit=1000").await));
    let mut vps_ids: BTreeSet<String> = seed.vps_ids.iter().cloned().collect();
    for v in vps {
        vps_ids.insert(id_of(&v));
        rows.push((format!("vps {}", v["hostname"]), v));
    }
    for id in vps_ids {
        let routes = get(&format!("/api/vps/{id}/envoy-routes")).await;
        for r in routes.as_array().cloned().unwrap_or_default() {
            rows.push((format!("route {} of vps {id}", r["name"]), r));
        }
    }
    for mut k in items(get("/api/api-keys?limit=1000").await) {
        if let Some(m) = k.as_object_mut() {
            m.remove("last_used_at");
        }
        rows.push((format!("api key {}", k["prefix"]), k));
    }
    for t in items(get("/api/enrollment-tokens?limit=1000").await) {
        rows.push((format!("enrollment token {}", t["prefix"]), t));
    }
    for (k, v) in rows {
        let k = if out.contains_key(&k) {
            format!("{k} #{}", id_of(&v))
        } else {
            k
        };
        out.insert(k, v);
    }
    out
}

fn snapshot_diff(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, b) in before {
        match after.get(k) {
            None => out.push(format!("{k}: gone")),
            Some(a) if a != b => {
                let changed: Vec<String> = b
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(f, v)| a.get(f.as_str()) != Some(*v))
                    .map(|(f, v)| {
                        format!("{f}: {v} -> {}", a.get(f.as_str()).unwrap_or(&Value::Null))
                    })
                    .collect();
                out.push(format!("{k}: changed ({})", changed.join("; ")));
            }
            Some(_) => {}
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            out.push(format!("{k}: appeared"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The classes

/// A body for one class: a content type (`None`: no header) and bytes.
struct BodyCase {
    class: String,
    detail: String,
    ctype: Option<&'static str>,
    bytes: Vec<u8>,
    want: Want,
    names: Names,
}

const JSON: Option<&str> = Some("application/json");
/// What a malformed body gets from a caller that may call the operation.
const BAD_BODY: Want = Want::OneOf(&[400, 422]);

/// `{"k": v, …}` as text, keeping the given order (duplicates included).
fn object_text(entries: &[(String, Value)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn entries(v: &Value) -> Vec<(String, Value)> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

const CONTROLS: [(&str, &str); 3] = [("NUL", "\u{0}"), ("ESC", "\u{1b}"), ("U+202E", "\u{202e}")];

/// Inserts `c` in the middle of a string (or makes it the whole string).
fn with_control(s: &str, c: &str) -> String {
    let mid = s
        .char_indices()
        .nth(s.chars().count() / 2)
        .map_or(s.len(), |(i, _)| i);
    format!("{}{c}{}", &s[..mid], &s[mid..])
}

/// The body classes of an operation whose body has this schema. `per_property` adds one case
/// per property (wrong type) and per string leaf and control character.
fn body_cases(doc: &Value, schema: &Value, per_property: bool) -> Vec<BodyCase> {
    let base = synth(doc, schema, "body", false, 0);
    let full = synth(doc, schema, "body", true, 0);
    let text = base.to_string();
    let (props, closed) = properties_of(doc, schema);
    // The property the structural classes put their payload in: the first required one, else
    // the first one.
    let first = base
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .or_else(|| props.first().map(|(k, _)| k.clone()))
        .unwrap_or_else(|| "battery".into());
    let first_value = full.get(&first).cloned().unwrap_or(json!("battery-probe"));
    let case = |class: &str, detail: &str, bytes: Vec<u8>, want: Want, names: Names| BodyCase {
        class: format!("body:{class}"),
        detail: detail.to_string(),
        ctype: JSON,
        bytes,
        want,
        names,
    };
    let mut out = vec![
        case(
            "malformed",
            "{not json",
            b"{\"battery\": }".to_vec(),
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "truncated",
            "the base body without its last byte",
            text.as_bytes()[..text.len() - 1].to_vec(),
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "trailing-data",
            "base body + ' garbage'",
            format!("{text} garbage").into_bytes(),
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "two-objects",
            "base body twice",
            format!("{text}{text}").into_bytes(),
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "array-empty",
            "[]",
            b"[]".to_vec(),
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "array-positional",
            "the full body's values as an array",
            Value::Array(entries(&full).into_iter().map(|(_, v)| v).collect())
                .to_string()
                .into_bytes(),
            BAD_BODY,
            Names::Nothing,
        ),
        case("empty", "no bytes", Vec::new(), BAD_BODY, Names::Nothing),
        case("scalar", "null", b"null".to_vec(), BAD_BODY, Names::Nothing),
        case(
            "duplicate-key",
            &first,
            {
                let mut e = vec![(first.clone(), first_value.clone())];
                if !entries(&base).iter().any(|(k, _)| *k == first) {
                    e.push((first.clone(), first_value.clone()));
                }
                e.extend(entries(&base));
                object_text(&e).into_bytes()
            },
            BAD_BODY,
            Names::Mention(first.clone()),
        ),
        case(
            "deep-nesting",
            &format!("{NESTING} levels of arrays in {first}"),
            {
                let mut e: Vec<(String, Value)> = entries(&base)
                    .into_iter()
                    .filter(|(k, _)| *k != first)
                    .collect();
                e.push((first.clone(), json!(0)));
                let t = object_text(&e);
                let nested = format!("{}{}", "[".repeat(NESTING), "]".repeat(NESTING));
                t.replacen(
                    &format!("{}:0", Value::String(first.clone())),
                    &format!("{}:{nested}", Value::String(first.clone())),
                    1,
                )
                .into_bytes()
            },
            BAD_BODY,
            Names::Nothing,
        ),
        case(
            "oversized",
            &format!("base body padded to {} bytes", MAX_BODY + 1),
            {
                let mut b = b"{".to_vec();
                b.extend(std::iter::repeat_n(b' ', MAX_BODY + 1));
                b.extend_from_slice(&text.as_bytes()[1..]);
                b
            },
            Want::OneOf(&[413]),
            Names::Nothing,
        ),
    ];
    // Only where the document says the object is closed: agents' reports keep what a newer
    // agent adds.
    if closed {
        out.push(case(
            "unknown-field",
            UNKNOWN_FIELD,
            {
                let mut e = entries(&base);
                e.push((UNKNOWN_FIELD.into(), json!(1)));
                object_text(&e).into_bytes()
            },
            BAD_BODY,
            Names::Mention(UNKNOWN_FIELD.into()),
        ));
    }
    out.push(BodyCase {
        class: "body:content-type".into(),
        detail: "text/plain".into(),
        ctype: Some("text/plain"),
        bytes: text.clone().into_bytes(),
        want: Want::OneOf(&[415]),
        names: Names::Nothing,
    });
    out.push(BodyCase {
        class: "body:no-content-type".into(),
        detail: "no Content-Type".into(),
        ctype: None,
        bytes: text.clone().into_bytes(),
        want: Want::OneOf(&[415]),
        names: Names::Nothing,
    });
    let leaves = string_leaves(&full);
    let controls: &[(&str, &str)] = if per_property {
        &CONTROLS
    } else {
        &CONTROLS[..1]
    };
    let leaves: Vec<_> = if per_property {
        leaves
    } else {
        leaves.into_iter().take(1).collect()
    };
    for (path, top) in leaves {
        for (cname, c) in controls {
            let mut b = full.clone();
            let leaf = leaf_mut(&mut b, &path);
            let s = leaf.as_str().unwrap_or_default().to_string();
            *leaf = Value::String(with_control(&s, c));
            out.push(case(
                &format!("control-char:{cname}"),
                &path_text(&path),
                b.to_string().into_bytes(),
                BAD_BODY,
                Names::Field(top.clone()),
            ));
        }
    }
    let props: Vec<_> = if per_property {
        props
    } else {
        props.into_iter().take(1).collect()
    };
    for (k, ps) in props {
        let Some(wrong) = wrong_value(doc, &ps) else {
            continue;
        };
        let mut b = base.clone();
        b[k.as_str()] = wrong.clone();
        out.push(case(
            "wrong-type",
            &format!("{k}: {wrong}"),
            b.to_string().into_bytes(),
            BAD_BODY,
            Names::Field(k.clone()),
        ));
    }
    out
}

/// Hostile path parameter values (already percent-encoded where needed).
fn hostile_path_values() -> Vec<(&'static str, String)> {
    vec![
        ("invalid-utf8", "%FF".into()),
        ("invalid-utf8-mixed", "abc%C3%28".into()),
        ("nul", "a%00b".into()),
        ("esc", "a%1Bb".into()),
        ("rtl-override", "a%E2%80%AEb".into()),
        ("very-long", "a".repeat(10_000)),
        ("dot-dot-slash", "..%2F..%2Fhealthz".into()),
        ("unicode", "%C3%BC%C3%B1%C3%AE%E2%98%83".into()),
        ("missing-uuid", NO_SUCH_UUID.into()),
    ]
}

/// Hostile values of one query parameter: (class, raw query text of the parameter).
fn hostile_query_values(
    doc: &Value,
    name: &str,
    schema: &Value,
    base: &str,
) -> Vec<(String, String)> {
    let types = admitted(doc, schema).unwrap_or_default();
    let free_string = types.contains("string") && resolve(doc, schema).get("enum").is_none();
    let mut out = Vec::new();
    if !free_string {
        out.push((
            "query:wrong-type".into(),
            format!(
                "{name}=battery-not-a-{}",
                types.iter().next().map_or("value", String::as_str)
            ),
        ));
    }
    if types.contains("integer") || types.contains("number") {
        out.push(("query:negative".into(), format!("{name}=-1")));
        out.push((
            "query:huge".into(),
            format!("{name}=99999999999999999999999"),
        ));
        out.push((
            "query:i64-max".into(),
            format!("{name}=9223372036854775807"),
        ));
        out.push(("query:fraction".into(), format!("{name}=1.5")));
    }
    out.push(("query:empty".into(), format!("{name}=")));
    out.push(("query:nul".into(), format!("{name}={base}%00x")));
    out.push(("query:esc".into(), format!("{name}={base}%1Bx")));
    out.push((
        "query:rtl-override".into(),
        format!("{name}={base}%E2%80%AEx"),
    ));
    out.push(("query:invalid-utf8".into(), format!("{name}=%FF")));
    out.push((
        "query:very-long".into(),
        format!("{name}={}", "a".repeat(10_000)),
    ));
    out.push((
        "query:repeated".into(),
        format!("{name}={base}&{name}={base}"),
    ));
    out
}

/// The value a query parameter has when another one is under test.
fn query_base(doc: &Value, seed: &Seed, name: &str, schema: &Value) -> String {
    match name {
        "hostname" => seed.agent_hostname.clone(),
        // The agent's long poll answers within a second.
        "wait_seconds" => "1".into(),
        _ => match synth(doc, schema, name, false, 0) {
            Value::String(s) => s,
            other => other.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The run

async fn battery(db: TestDb) {
    let started = Instant::now();
    let s = SigmaApi::builder()
        .store(&db)
        .envs(vec![("SIGMA_MAX_BODY_BYTES".into(), MAX_BODY.to_string())])
        .start();
    let (st, doc) = s.get("/api/openapi.json", ADMIN_KEY).await;
    assert_eq!(st, 200, "{doc}");
    let ops = classify(&doc).unwrap_or_else(|problems| {
        panic!(
            "the battery cannot classify the document:\n  {}",
            problems.join("\n  ")
        )
    });
    assert!(
        ops.len() >= 30,
        "only {} operations in the document",
        ops.len()
    );
    let seed = seed(&s).await;
    let before = snapshot(&s, &seed).await;
    let mut b = Battery::new(&s);

    for op in &ops {
        let real_path = concrete(op, &seed, false);
        let missing_path = concrete(op, &seed, true);
        let base_body = op.body.as_ref().map(|sc| synth(&doc, sc, "body", false, 0));
        let valid = || {
            base_body
                .as_ref()
                .map(|v| (JSON, v.to_string().into_bytes()))
        };
        let base_query = required_query(&doc, &seed, op, None);
        let path_q = |p: &str, q: &str| {
            if q.is_empty() {
                p.to_string()
            } else {
                format!("{p}?{q}")
            }
        };

        // Credentials.
        let unknown_key = "sgm_deadbeef_battery-unknown-key-0123456789abcdef0123456";
        let wrong_secret = format!("{}x", &ADMIN_KEY[..ADMIN_KEY.len() - 1]);
        let long = "k".repeat(600);
        let mut bad_creds: Vec<(&str, &str, Authz)> = vec![
            ("cred:none", "no Authorization", Authz::None),
            ("cred:unknown-key", "unknown sgm_ key", bearer(unknown_key)),
            (
                "cred:wrong-secret",
                "admin prefix, wrong secret",
                bearer(&wrong_secret),
            ),
            (
                "cred:unknown-token",
                "unknown sge_ token",
                bearer("sge_deadbeef_battery-unknown-token-0123456789abcdef012345"),
            ),
            (
                "cred:revoked-key",
                "revoked admin key",
                bearer(&seed.revoked_admin),
            ),
        ];
        for (detail, raw) in [
            ("Bearer without a key", b"Bearer".to_vec()),
            ("Bearer and spaces", b"Bearer    ".to_vec()),
            ("Basic scheme", b"Basic YWRtaW46YWRtaW4=".to_vec()),
            (
                "the admin key without a scheme",
                ADMIN_KEY.as_bytes().to_vec(),
            ),
            (
                "the admin key under scheme Token",
                format!("Token {ADMIN_KEY}").into_bytes(),
            ),
            ("non-ASCII bytes", b"Bearer \xff\xfe\xfd".to_vec()),
            ("a 600-byte key", format!("Bearer {long}").into_bytes()),
            (
                "two keys",
                format!("Bearer {ADMIN_KEY} {ADMIN_KEY}").into_bytes(),
            ),
        ] {
            bad_creds.push(("cred:malformed-auth", detail, Authz::Raw(raw)));
        }
        let p = path_q(&real_path, &base_query);
        for (class, detail, auth) in &bad_creds {
            let want = if op.public {
                Want::Success
            } else {
                Want::OneOf(&[401])
            };
            b.probe(op, class, detail, &p, auth, valid(), want, Names::Nothing)
                .await;
        }
        if op.public {
            continue;
        }

        // Roles that may not call it.
        for c in op.forbidden() {
            let want = if c == Enrollment {
                Want::OneOf(&[401, 403])
            } else {
                Want::OneOf(&[403])
            };
            b.probe(
                op,
                &format!("role:{}", c.name()),
                "base body",
                &p,
                &seed.auth(c),
                valid(),
                want,
                Names::Nothing,
            )
            .await;
        }

        // Bodies.
        if let Some(schema) = &op.body {
            let caller = seed.auth(op.caller());
            for bc in body_cases(&doc, schema, true) {
                b.probe(
                    op,
                    &bc.class,
                    &bc.detail,
                    &p,
                    &caller,
                    Some((bc.ctype, bc.bytes)),
                    bc.want,
                    bc.names,
                )
                .await;
            }
            // Credentials first: the same bodies from whoever may not call it.
            let mut denied: Vec<(String, Authz, Want)> = vec![
                ("no key".into(), Authz::None, Want::OneOf(&[401])),
                (
                    "unknown key".into(),
                    bearer(unknown_key),
                    Want::OneOf(&[401]),
                ),
                (
                    "revoked key".into(),
                    bearer(&seed.revoked_admin),
                    Want::OneOf(&[401]),
                ),
            ];
            for c in op.forbidden() {
                let want = if c == Enrollment {
                    Want::OneOf(&[401, 403])
                } else {
                    Want::OneOf(&[403])
                };
                denied.push((format!("{} key", c.name()), seed.auth(c), want));
            }
            for bc in body_cases(&doc, schema, false) {
                for (who, auth, want) in &denied {
                    let class = format!("denied-{}", bc.class);
                    b.probe(
                        op,
                        &class,
                        &format!("{who}; {}", bc.detail),
                        &p,
                        auth,
                        Some((bc.ctype, bc.bytes.clone())),
                        *want,
                        Names::Nothing,
                    )
                    .await;
                }
            }
        }

        // Path parameters.
        let caller = seed.auth(op.caller());
        for param in &op.path_params {
            for (class, value) in hostile_path_values() {
                let path = concrete_with(op, &seed, false, Some((param, &value)));
                b.probe(
                    op,
                    &format!("path:{class}"),
                    &format!("{{{param}}} = {}", abbreviate(&value)),
                    &path_q(&path, &base_query),
                    &caller,
                    valid(),
                    Want::ClientErrorBut(&[401, 403, 405]),
                    Names::Nothing,
                )
                .await;
            }
        }

        // Query parameters: a changing operation is aimed at a missing object, so a query
        // accepted as documented changes nothing.
        let qpath = if op.method == "get" {
            &real_path
        } else {
            &missing_path
        };
        for (name, schema, _) in &op.query {
            let base = query_base(&doc, &seed, name, schema);
            let others = required_query(&doc, &seed, op, Some(name));
            for (class, q) in hostile_query_values(&doc, name, schema, &base) {
                let q = if others.is_empty() {
                    q.clone()
                } else {
                    format!("{others}&{q}")
                };
                b.probe(
                    op,
                    &class,
                    &abbreviate(&q),
                    &path_q(qpath, &q),
                    &caller,
                    valid(),
                    Want::ClientErrorOrSuccess,
                    Names::Nothing,
                )
                .await;
            }
        }
        if !op.query.is_empty() {
            let q = if base_query.is_empty() {
                "battery_unknown=1".to_string()
            } else {
                format!("{base_query}&battery_unknown=1")
            };
            b.probe(
                op,
                "query:unknown-key",
                "battery_unknown=1",
                &path_q(qpath, &q),
                &caller,
                valid(),
                Want::ClientErrorOrSuccess,
                Names::Nothing,
            )
            .await;
        }
    }

    // Still healthy, and nothing stored before has changed.
    let mut after_failures = dangling_refs(&doc);
    for path in ["/healthz", "/readyz"] {
        let (st, v) = s.request("GET", path, None, None).await;
        if st != 200 {
            after_failures.push(format!("{path}: {st} {v}"));
        }
    }
    let after = snapshot(&s, &seed).await;
    after_failures.extend(snapshot_diff(&before, &after));

    // The summary.
    let classes_of: BTreeMap<&str, usize> = ops
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                b.classes.values().filter(|t| t.ops.contains(&o.id)).count(),
            )
        })
        .collect();
    let failures: usize = b.classes.values().map(|t| t.failures.len()).sum();
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "battery: {} operations, {} classes, {} requests, {} failures, {} changes after, {:.1}s",
        ops.len(),
        b.classes.len(),
        b.requests,
        failures,
        after_failures.len(),
        started.elapsed().as_secs_f64()
    );
    for (op, n) in &classes_of {
        let _ = writeln!(summary, "  {op}: {n} classes");
    }
    for (class, t) in &b.classes {
        let _ = writeln!(
            summary,
            "  class {class}: {} operations, {} requests, {} failures",
            t.ops.len(),
            t.requests,
            t.failures.len()
        );
    }
    println!("{summary}");

    let mut report = String::new();
    for (class, t) in &b.classes {
        if t.failures.is_empty() {
            continue;
        }
        let _ = writeln!(report, "== {class} ({} failures)", t.failures.len());
        for f in &t.failures {
            let _ = writeln!(
                report,
                "  {} [{}] -> {}: {}",
                f.op, f.detail, f.status, f.reason
            );
        }
    }
    if !after_failures.is_empty() {
        let _ = writeln!(report, "== after the battery");
        for f in &after_failures {
            let _ = writeln!(report, "  {f}");
        }
    }
    assert!(
        report.is_empty(),
        "the battery found {failures} failing requests and {} problems after it:\n{report}",
        after_failures.len()
    );
}

fn abbreviate(s: &str) -> String {
    if s.len() > 60 {
        format!("{}…({} bytes)", &s[..40], s.len())
    } else {
        s.to_string()
    }
}

/// The operation's path with seeded values (or values naming nothing, with `missing`).
fn concrete(op: &Op, seed: &Seed, missing: bool) -> String {
    concrete_with(op, seed, missing, None)
}

fn concrete_with(op: &Op, seed: &Seed, missing: bool, over: Option<(&String, &String)>) -> String {
    let mut p = op.path.clone();
    for name in &op.path_params {
        let value = match over {
            Some((n, v)) if n == name => v.clone(),
            _ => {
                let kind = seed_kind(&op.path, name).expect("classified");
                if missing {
                    match kind {
                        SeedKind::Purpose => NO_SUCH_NAME.into(),
                        // A valid pair no rate is entered for.
                        SeedKind::RateFrom => "CHF".into(),
                        SeedKind::RateTo => "JPY".into(),
                        _ => NO_SUCH_UUID.into(),
                    }
                } else {
                    seed.value(kind).to_string()
                }
            }
        };
        p = p.replace(&format!("{{{name}}}"), &value);
    }
    p
}

/// The query every request of the operation carries: its required parameters (and a short
/// long-poll wait), but not `except`.
fn required_query(doc: &Value, seed: &Seed, op: &Op, except: Option<&String>) -> String {
    op.query
        .iter()
        .filter(|(n, _, required)| (*required || n == "wait_seconds") && Some(n) != except)
        .map(|(n, s, _)| format!("{n}={}", query_base(doc, seed, n, s)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------------------------------------
// The battery's own rules, checked without a server: each can fail.

#[test]
fn an_operation_the_battery_cannot_classify_fails_it() {
    let doc = json!({
        "paths": {
            "/api/gadgets": {"get": {"security": [{"bearer": []}], "responses": {"200": {}}}},
            "/api/gadgets/{id}": {"get": {
                "security": [{"bearer": []}],
                "parameters": [{"name": "id", "in": "path", "schema": {"type": "string"}}],
                "responses": {"200": {}}
            }},
            "/healthz": {"get": {"responses": {"200": {}}}}
        }
    });
    let problems = classify(&doc).expect_err("unknown operations must not pass");
    let text = problems.join("\n");
    assert!(text.contains("GET /api/gadgets: authenticated"), "{text}");
    assert!(text.contains("{id}"), "{text}");
    // Every table entry the document lacks is stale, and said so.
    assert!(text.contains("role table: GET /api/vps is not"), "{text}");
}

#[test]
fn roles_stated_by_the_document_win_over_the_table() {
    let mut paths = Map::new();
    for (m, p, _) in ROLE_TABLE {
        let params: Vec<Value> = p
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|n| json!({"name": n, "in": "path", "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry(p.to_string()).or_insert_with(|| json!({}));
        entry[*m] =
            json!({"security": [{"bearer": []}], "parameters": params, "responses": {"200": {}}});
    }
    paths["/api/vps"]["get"]["security"] = json!([{"bearer": ["admin"]}]);
    let ops = classify(&json!({ "paths": paths })).expect("the table's own operations classify");
    let list = ops.iter().find(|o| o.id == "GET /api/vps").unwrap();
    assert_eq!(list.allowed, vec![Admin]);
    assert_eq!(list.caller(), Admin);
    let get = ops.iter().find(|o| o.id == "GET /api/vps/{id}").unwrap();
    assert_eq!(get.allowed, READERS);
    assert_eq!(get.caller(), Readonly);
}

#[test]
fn the_verdict_refuses_5xx_bare_4xx_and_unnamed_fields() {
    let op = Op {
        method: "post",
        path: "/x".into(),
        id: "POST /x".into(),
        public: false,
        allowed: vec![Admin],
        body: None,
        path_params: vec![],
        query: vec![],
        success: vec![201],
    };
    let resp = |status: u16, ctype: &str, body: &str| Resp {
        status,
        ctype: ctype.into(),
        body: body.as_bytes().to_vec(),
    };
    let error = r#"{"error":"validation","message":"invalid name","fields":{"name":"bad"}}"#;
    let json_ct = "application/json";
    let bad = Want::OneOf(&[400, 422]);
    assert!(
        judge(
            &op,
            &resp(422, json_ct, error),
            bad,
            &Names::Field("name".into())
        )
        .is_none()
    );
    assert!(judge(&op, &resp(500, json_ct, error), bad, &Names::Nothing).is_some());
    assert!(
        judge(
            &op,
            &resp(400, "text/plain", "Invalid URL"),
            bad,
            &Names::Nothing
        )
        .is_some()
    );
    assert!(
        judge(
            &op,
            &resp(422, json_ct, r#"{"detail":"x"}"#),
            bad,
            &Names::Nothing
        )
        .is_some()
    );
    assert!(judge(&op, &resp(201, json_ct, "{}"), bad, &Names::Nothing).is_some());
    assert!(
        judge(
            &op,
            &resp(422, json_ct, error),
            bad,
            &Names::Field("city".into())
        )
        .is_some()
    );
    assert!(
        judge(
            &op,
            &resp(422, json_ct, error),
            bad,
            &Names::Field("nam".into())
        )
        .is_some()
    );
    assert!(
        judge(
            &op,
            &resp(201, json_ct, "{}"),
            Want::ClientErrorOrSuccess,
            &Names::Nothing
        )
        .is_none()
    );
    assert!(
        judge(
            &op,
            &resp(200, json_ct, "{}"),
            Want::ClientErrorOrSuccess,
            &Names::Nothing
        )
        .is_some()
    );
}

#[test]
fn synthesized_bodies_follow_the_schema() {
    let doc = json!({"components": {"schemas": {
        "Kind": {"enum": ["a", "b"], "type": "string"},
        "Thing": {
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string"},
                "kind": {"$ref": "#/components/schemas/Kind"},
                "port": {"type": ["integer", "null"], "minimum": 1},
                "tags": {"type": "array", "items": {"type": "string"}},
                "inner": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {"os": {"type": "string"}}}]}
            },
            "required": ["name", "kind"],
            "type": "object"
        }
    }}});
    let s = json!({"$ref": "#/components/schemas/Thing"});
    assert_eq!(
        synth(&doc, &s, "body", false, 0),
        json!({"name": "battery-probe", "kind": "a"})
    );
    let full = synth(&doc, &s, "body", true, 0);
    assert_eq!(full["tags"], json!(["battery-probe"]));
    assert_eq!(full["inner"], json!({"os": "battery-probe"}));
    let leaves: Vec<String> = string_leaves(&full)
        .iter()
        .map(|(p, _)| path_text(p))
        .collect();
    assert_eq!(leaves, ["inner.os", "kind", "name", "tags[0]"]);
    assert_eq!(
        wrong_value(&doc, &json!({"$ref": "#/components/schemas/Kind"})),
        Some(json!(true))
    );
    assert_eq!(
        wrong_value(&doc, &json!({"type": ["boolean", "null"]})),
        Some(json!(12345))
    );
    assert_eq!(wrong_value(&doc, &json!({})), None);
    assert!(
        properties_of(&doc, &s).1,
        "additionalProperties: false is a closed object"
    );
    assert!(dangling_refs(&json!({"a": {"$ref": "#/components/schemas/Nope"}})).len() == 1);
}

//! The JSON bodies of sigma-api's HTTP interface.
//!
//! Request bodies that operators write reject unknown fields, so a misspelt field is an error
//! rather than silently ignored. Bodies that agents send accept unknown fields, so a newer agent
//! can talk to an older sigma-api.
//!
//! Split by endpoint family into submodules, every one re-exported here (and at the crate
//! root), so `sigma_types::api::Vps` and `sigma_types::Vps` stay the names of the types; this
//! module keeps the limits, enums and checks the families share and the list and error bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::validate::{self as v, FieldErrors};

mod agent;
mod audit;
mod keys;
mod provider;
mod purpose;
mod vps;
mod vps_body;

pub use agent::*;
pub use audit::*;
pub use keys::*;
pub use provider::*;
pub use purpose::*;
pub use vps::*;
pub use vps_body::*;

/// Longest alias, city, display name, provider name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest notes field.
pub const MAX_NOTES_LEN: usize = 4096;
/// Most addresses one VPS may list.
pub const MAX_IPS: usize = 64;
/// Most tags on one VPS.
pub const MAX_TAGS: usize = 64;
/// Largest serialized `system_info` or `mesh` object, in bytes.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size of list endpoints.
pub const MAX_LIMIT: i64 = 1000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including keys and the audit log.
    Admin,
    /// The inventory and enrollment tokens.
    Operator,
    /// Reads only.
    Readonly,
    /// One VPS's agent: register and heartbeat as that VPS only.
    Agent,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Readonly => "readonly",
            Role::Agent => "agent",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "readonly" => Role::Readonly,
            "agent" => Role::Agent,
            _ => return None,
        })
    }
}

/// Where a VPS is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VpsStatus {
    /// Known to the inventory, its agent has not registered yet.
    Provisioning,
    /// In service.
    Active,
    /// Being taken out of service: its agent stops what it manages.
    Retiring,
    /// Out of service; its agent may still report, nothing is re-activated by it.
    Retired,
    /// Soft-deleted; can be restored.
    Deleted,
}

impl VpsStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [VpsStatus; 5] = [
        VpsStatus::Provisioning,
        VpsStatus::Active,
        VpsStatus::Retiring,
        VpsStatus::Retired,
        VpsStatus::Deleted,
    ];

    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            VpsStatus::Provisioning => "provisioning",
            VpsStatus::Active => "active",
            VpsStatus::Retiring => "retiring",
            VpsStatus::Retired => "retired",
            VpsStatus::Deleted => "deleted",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<VpsStatus> {
        VpsStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether an operator may move a VPS from `self` to `to` by editing its status.
    /// Deleting and restoring have endpoints of their own.
    pub fn can_become(self, to: VpsStatus) -> bool {
        use VpsStatus::*;
        self == to
            || matches!(
                (self, to),
                (Provisioning, Active)
                    | (Provisioning, Retiring)
                    | (Provisioning, Retired)
                    | (Active, Retiring)
                    | (Active, Retired)
                    | (Retiring, Active)
                    | (Retiring, Retired)
                    | (Retired, Provisioning)
            )
    }
}

/// One address of a VPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpAddress {
    /// IPv4 or IPv6 address.
    pub ip: String,
    /// `public`, `private`, or an operator's own label.
    pub label: String,
}

fn normalize_ips(ips: Vec<IpAddress>, field: &str, e: &mut FieldErrors) -> Vec<IpAddress> {
    if ips.len() > MAX_IPS {
        e.add(field, format!("at most {MAX_IPS} addresses"));
        return ips;
    }
    let mut out: Vec<IpAddress> = Vec::with_capacity(ips.len());
    for (i, a) in ips.into_iter().enumerate() {
        let ip = e.check(&format!("{field}[{i}].ip"), v::ip(&a.ip));
        let label = e.check(&format!("{field}[{i}].label"), v::ip_label(&a.label));
        if let (Some(ip), Some(label)) = (ip, label) {
            if out.iter().any(|o| o.ip == ip) {
                // `v::ip` has already turned `::ffff:a.b.c.d` into `a.b.c.d`, so both
                // spellings of one address meet here and are refused, not stored twice.
                let spelled = if a.ip.trim() == ip {
                    String::new()
                } else {
                    format!(" ({:?} is the same address)", a.ip)
                };
                e.add(
                    format!("{field}[{i}].ip"),
                    format!("{ip} is listed twice{spelled}"),
                );
            } else {
                out.push(IpAddress { ip, label });
            }
        }
    }
    out
}

fn normalize_tags(tags: Vec<String>, field: &str, e: &mut FieldErrors) -> Vec<String> {
    if tags.len() > MAX_TAGS {
        e.add(field, format!("at most {MAX_TAGS} tags"));
        return tags;
    }
    let mut out: Vec<String> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        if let Some(t) = e.check(&format!("{field}[{i}]"), v::tag(t))
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out.sort();
    out
}

fn check_object(value: &serde_json::Value, field: &str, e: &mut FieldErrors) {
    if !value.is_object() {
        e.add(field, "must be a JSON object");
    } else if serde_json::to_vec(value).map_or(0, |b| b.len()) > MAX_OBJECT_BYTES {
        e.add(field, format!("larger than {MAX_OBJECT_BYTES} bytes"));
    } else {
        v::json_strings(value, field, e);
    }
}

/// Checks the free-form fields an agent sends beside the known ones (see [`v::json_strings`]).
fn check_extra(extra: &BTreeMap<String, serde_json::Value>, field: &str, e: &mut FieldErrors) {
    for (k, value) in extra {
        let mut one = serde_json::Map::new();
        one.insert(k.clone(), value.clone());
        v::json_strings(&serde_json::Value::Object(one), field, e);
    }
}

/// A provider's own name: a single-line name that does not parse as a UUID, since every
/// endpoint that takes "a provider id or name" reads a UUID as an id (a provider named like
/// one could not be reached by name).
pub fn provider_name(s: &str) -> Result<String, String> {
    let n = v::name(s, MAX_NAME_LEN)?;
    if Uuid::parse_str(&n).is_ok() {
        return Err(format!(
            "{n:?} reads as a UUID, which the API takes as a provider id; choose another name"
        ));
    }
    Ok(n)
}

fn opt<T>(
    v: Option<String>,
    field: &str,
    e: &mut FieldErrors,
    f: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    v.and_then(|s| e.check(field, f(&s)))
}

fn opt2<T>(
    v: Option<Option<String>>,
    field: &str,
    e: &mut FieldErrors,
    f: impl Fn(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    match v {
        None => None,
        Some(None) => Some(None),
        Some(Some(s)) => e.check(field, f(&s)).map(Some),
    }
}

/// A list page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// How many items match, over all pages.
    pub total: i64,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code (`validation`, `not_found`, `conflict`, …).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// For validation errors: the reason per field path.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// Checks a page's limit and offset, returning them with defaults applied.
pub fn page(limit: Option<i64>, offset: Option<i64>, e: &mut FieldErrors) -> (i64, i64) {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        e.add("limit", format!("must be 1-{MAX_LIMIT}"));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        e.add("offset", "must be >= 0");
    }
    (limit, offset)
}

/// Page of a plain list endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl PageQuery {
    /// Checked limit and offset.
    pub fn checked(self) -> Result<(i64, i64), FieldErrors> {
        let mut e = FieldErrors::new();
        let p = page(self.limit, self.offset, &mut e);
        e.into_result().map(|_| p)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Normalize;

    #[test]
    fn vps_create_normalizes_and_names_bad_fields() {
        let c: VpsCreate = serde_json::from_value(serde_json::json!({
            "hostname": "Edge-1.Example.NET",
            "purpose": "xrayr",
            "country": "de",
            "ip_addresses": [{"ip": "2001:DB8::1", "label": "public"}],
            "tags": ["b", "a", "a"],
        }))
        .unwrap();
        let c = c.normalize().unwrap();
        assert_eq!(c.hostname, "edge-1.example.net");
        assert_eq!(c.country.as_deref(), Some("DE"));
        assert_eq!(c.ip_addresses[0].ip, "2001:db8::1");
        assert_eq!(c.tags, vec!["a", "b"]);
        assert_eq!(c.status, Some(VpsStatus::Provisioning));

        let bad: VpsCreate = serde_json::from_value(serde_json::json!({
            "hostname": "bad_host",
            "purpose": "X",
            "country": "XX",
            "ip_addresses": [{"ip": "1.2.3", "label": "public"}, {"ip": "::1", "label": "Bad Label"}],
            "node_exporter_port": 70000,
            "status": "retired",
        }))
        .unwrap();
        let e = bad.normalize().unwrap_err();
        for f in [
            "hostname",
            "purpose",
            "country",
            "ip_addresses[0].ip",
            "ip_addresses[1].label",
            "node_exporter_port",
            "status",
        ] {
            assert!(e.0.contains_key(f), "{f} missing from {e:?}");
        }
    }

    #[test]
    fn patch_rejects_null_for_required_fields() {
        let p: VpsPatch =
            serde_json::from_str(r#"{"hostname": null, "alias": null, "purpose": null}"#).unwrap();
        let e = p.normalize().unwrap_err();
        assert!(e.0.contains_key("hostname"));
        assert!(e.0.contains_key("purpose"));
        assert!(!e.0.contains_key("alias"));
        let p: VpsPatch = serde_json::from_str(r#"{"alias": null, "tags": null}"#).unwrap();
        let p = p.normalize().unwrap();
        assert_eq!(p.alias, Some(None));
        assert_eq!(p.tags, Some(Some(vec![])));
        assert!(p.hostname.is_none());
    }

    #[test]
    fn unknown_fields_and_enum_values_are_rejected() {
        assert!(serde_json::from_str::<VpsPatch>(r#"{"hostnme": "x"}"#).is_err());
        assert!(serde_json::from_str::<VpsPatch>(r#"{"status": "gone"}"#).is_err());
        // Agents may be newer than sigma-api.
        assert!(
            serde_json::from_str::<HeartbeatRequest>(r#"{"hostname": "a", "future": 1}"#).is_ok()
        );
    }

    #[test]
    fn status_transitions() {
        use VpsStatus::*;
        assert!(Provisioning.can_become(Active));
        assert!(Active.can_become(Retiring));
        assert!(Retired.can_become(Provisioning));
        assert!(!Retired.can_become(Active));
        assert!(!Active.can_become(Provisioning));
        assert!(!Active.can_become(Deleted));
    }

    #[test]
    fn key_binding_rules() {
        let k = ApiKeyCreate {
            name: "x".into(),
            role: Role::Agent,
            vps_id: None,
            ttl_seconds: None,
        };
        assert!(k.normalize().unwrap_err().0.contains_key("vps_id"));
        let k = ApiKeyCreate {
            name: "x".into(),
            role: Role::Readonly,
            vps_id: Some(Uuid::nil()),
            ttl_seconds: Some(1),
        };
        let e = k.normalize().unwrap_err();
        assert!(e.0.contains_key("vps_id") && e.0.contains_key("ttl_seconds"));
    }

    #[test]
    fn provider_names_that_read_as_ids_are_refused() {
        for bad in [
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567E89B12D3A456426614174000",
            "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
        ] {
            let e = ProviderCreate {
                name: bad.into(),
                ..Default::default()
            }
            .normalize()
            .unwrap_err();
            assert!(e.0.contains_key("name"), "{bad}");
            let e = ProviderPatch {
                name: Some(Some(bad.into())),
                ..Default::default()
            }
            .normalize()
            .unwrap_err();
            assert!(e.0.contains_key("name"), "{bad}");
        }
        assert!(provider_name("hetzner-123e4567").is_ok());
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_address() {
        let mut e = FieldErrors::new();
        let ips = normalize_ips(
            vec![
                IpAddress {
                    ip: "::ffff:192.0.2.9".into(),
                    label: "public".into(),
                },
                IpAddress {
                    ip: "192.0.2.9".into(),
                    label: "private".into(),
                },
            ],
            "ip_addresses",
            &mut e,
        );
        assert_eq!(ips[0].ip, "192.0.2.9");
        assert!(e.0["ip_addresses[1].ip"].contains("listed twice"), "{e:?}");
    }

    #[test]
    fn bound_tokens_have_no_presets_one_use_and_a_short_life() {
        let t: EnrollmentTokenCreate = serde_json::from_value(serde_json::json!({
            "vps_id": Uuid::nil(), "purpose": "xrayr", "provider": "p", "country": "DE",
            "tags": ["a"], "max_uses": 2, "ttl_seconds": MAX_BOUND_TOKEN_TTL_SECONDS + 1,
        }))
        .unwrap();
        let e = t.normalize().unwrap_err();
        for f in [
            "purpose",
            "provider",
            "country",
            "tags",
            "max_uses",
            "ttl_seconds",
        ] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        let t: EnrollmentTokenCreate =
            serde_json::from_value(serde_json::json!({"vps_id": Uuid::nil()})).unwrap();
        let t = t.normalize().unwrap();
        assert_eq!((t.max_uses, t.vps_id), (1, Some(Uuid::nil())));
    }

    #[test]
    fn agent_reports_with_control_characters_are_refused() {
        let h: HeartbeatRequest = serde_json::from_value(serde_json::json!({
            "hostname": "a.example.net",
            "system_info": {"os": "Debian\u{0}", "gpu": {"model": "\u{1b}[2J"}},
            "agent_state": {"last_nack": {"version": "1\n", "type_url": "t", "detail": "line\nline",
                            "at": "2026-01-01T00:00:00Z"}, "x": ["\u{0}"]},
        }))
        .unwrap();
        let e = h.normalize().unwrap_err();
        for f in [
            "system_info.os",
            "system_info.gpu.model",
            "agent_state.last_nack.version",
            "agent_state.x[0]",
        ] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        assert!(!e.0.contains_key("agent_state.last_nack.detail"));
    }

    #[test]
    fn system_info_keeps_unknown_fields() {
        let s: SystemInfo = serde_json::from_str(r#"{"cpu_cores": 2, "gpu": "none"}"#).unwrap();
        assert_eq!(s.cpu_cores, Some(2));
        assert_eq!(s.extra["gpu"], "none");
        let mut e = FieldErrors::new();
        SystemInfo {
            load_average: Some([f64::NAN, 0.0, 0.0]),
            ..Default::default()
        }
        .check("system_info", &mut e);
        assert!(e.0.contains_key("system_info.load_average"));
    }
}

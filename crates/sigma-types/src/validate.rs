//! Validation of values that come from outside (HTTP bodies, query strings, agent reports).
//!
//! Every check returns a human-readable reason; callers collect them per field in
//! [`FieldErrors`] so one 422 response names every bad field at once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// Reasons per field path (`hostname`, `ip_addresses[1].ip`, …), sorted for stable output.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    /// An empty set of errors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` for `field`; the first reason for a field wins.
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| reason.into());
    }

    /// Records the outcome of a check that returns `Err(reason)`.
    pub fn check<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    /// True when no field failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when no field failed, the errors otherwise.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// `field: reason; field: reason`, in field order: the one text form of a set of errors for
/// logs and error messages (the JSON form is the map itself).
impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (field, reason)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {reason}")?;
        }
        Ok(())
    }
}

/// A request body or query that checks itself beyond what its types already enforce and
/// returns itself in canonical form (lower-cased hostnames, upper-cased countries,
/// canonical IP text, trimmed names).
pub trait Normalize: Sized {
    /// The canonical value, or every problem found, each naming its field.
    fn normalize(self) -> Result<Self, FieldErrors>;
}

/// Longest hostname accepted (RFC 1035 presentation limit).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// A hostname per RFC 1123: dot-separated labels of letters, digits and hyphens, each
/// 1–63 characters, not starting or ending with a hyphen. Returned lower-cased, since
/// hostnames compare case-insensitively; a single trailing dot is dropped.
pub fn hostname(s: &str) -> Result<String, String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_HOSTNAME_LEN {
        return Err(format!("longer than {MAX_HOSTNAME_LEN} characters"));
    }
    let mut last = "";
    for label in s.split('.') {
        last = label;
        if label.is_empty() {
            return Err("has an empty label (two dots in a row?)".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} may only hold letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} must not start or end with '-'"));
        }
    }
    // RFC 1123 2.1: the top-level label is never all digits, which is what tells a name from a
    // dotted-decimal address. `256.1.1.1` or `1.2.3.4.5` would otherwise pass as names (and
    // become DNS clusters that never resolve).
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not a DNS name: its last label {last:?} is all digits (and it is not an IP address)"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// A DNS-1123 label (Kubernetes' rule for names that end up in object names and labels):
/// lower-case letters, digits and '-', 1–63 characters, starting and ending alphanumeric.
pub fn dns_label(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only hold lower-case letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(s.to_string())
}

/// An ISO 3166-1 alpha-2 country code, returned upper-cased.
pub fn country(s: &str) -> Result<String, String> {
    crate::country::normalize(s)
        .ok_or_else(|| format!("{s:?} is not an ISO 3166-1 alpha-2 country code"))
}

/// An IPv4 or IPv6 address, returned in canonical text form.
///
/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.9`) is the IPv4 address seen through an IPv6
/// socket: it is returned as that IPv4 address (`192.0.2.9`), so one host address has one
/// spelling wherever addresses are stored or compared.
pub fn ip(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<IpAddr>()
        .map(|a| canonical_ip(a).to_string())
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

/// The canonical form of an address: IPv4-mapped IPv6 addresses become IPv4.
pub fn canonical_ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// A TCP/UDP port, 1–65535.
pub fn port(p: i64) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{p} is not a port (1-65535)"))
}

/// The label of an address: `public`, `private`, or an operator's own label made of
/// lower-case letters, digits, '-' and '_' (1–32 characters).
pub fn ip_label(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 32 {
        return Err("must be 1-32 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("may only hold lower-case letters, digits, '-' and '_'".into());
    }
    Ok(s.to_string())
}

/// A tag: 1–63 characters of letters, digits and `-_.:/=`; case is kept.
pub fn tag(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1-63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=".contains(&b))
    {
        return Err(format!("{s:?} may only hold letters, digits and '-_.:/='"));
    }
    Ok(s.to_string())
}

/// Whether text may span lines.
///
/// The rule for every text input of sigma (bodies, queries, agent reports): NUL and every other
/// control character (Unicode category Cc: C0, DEL, C1) and the bidirectional and line-separator
/// format characters are refused, on both databases alike
/// (PostgreSQL cannot store NUL in text; SQLite could, and would then disagree). Only
/// [`Lines::Multi`] fields — free notes, error details reported by agents, and strings inside
/// free-form JSON objects — may hold a line feed (`\n`) or a tab; a carriage return never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Names, labels, hostnames, versions: one line, no tab.
    Single,
    /// Notes and reported details: `\n` and tab allowed.
    Multi,
}

/// Checks `s` against the control-character rule of [`Lines`].
pub fn no_control(s: &str, lines: Lines) -> Result<(), String> {
    for c in s.chars() {
        let allowed = lines == Lines::Multi && (c == '\n' || c == '\t');
        if is_bidi_control(c) {
            return Err(format!(
                "must not contain bidirectional or line-separator controls (found U+{:04X})",
                u32::from(c)
            ));
        }
        if c.is_control() && !allowed {
            return Err(match (c, lines) {
                ('\0', _) => "must not contain NUL characters".into(),
                ('\n' | '\r' | '\t', Lines::Single) => {
                    "must be a single line (no line breaks or tabs)".into()
                }
                _ => format!(
                    "must not contain control characters (found U+{:04X})",
                    u32::from(c)
                ),
            });
        }
    }
    Ok(())
}

/// The format characters that reorder or break displayed text without being Cc controls: the
/// bidirectional embeddings, overrides and isolates ("Trojan Source", CVE-2021-42574), which let
/// a hostname or an agent's report show as something else in a console or a terminal, and the
/// Unicode line and paragraph separators. Left-to-right and right-to-left marks stay allowed
/// (ordinary right-to-left text uses them).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Free text: at most `max` characters; line feeds and tabs allowed, no other control
/// character (see [`Lines`]).
pub fn text(s: &str, max: usize) -> Result<String, String> {
    if s.chars().count() > max {
        return Err(format!("longer than {max} characters"));
    }
    no_control(s, Lines::Multi)?;
    Ok(s.to_string())
}

/// A single line of at most `max` characters (may be empty); no control character at all.
pub fn line(s: &str, max: usize) -> Result<String, String> {
    if s.chars().count() > max {
        return Err(format!("longer than {max} characters"));
    }
    no_control(s, Lines::Single)?;
    Ok(s.to_string())
}

/// A non-empty single-line name of at most `max` characters, trimmed.
pub fn name(s: &str, max: usize) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    line(t, max)
}

/// Deepest nesting accepted in a free-form JSON object.
pub const MAX_JSON_DEPTH: usize = 32;

/// Checks every key and string inside a free-form JSON value (an agent's unknown report
/// fields, a purpose's mesh object) against the [`Lines::Multi`] rule, naming the path of the
/// first bad one under `field` (`system_info.gpu`, `mesh.labels.x`); nesting is capped at
/// [`MAX_JSON_DEPTH`].
pub fn json_strings(value: &serde_json::Value, field: &str, e: &mut FieldErrors) {
    fn walk(v: &serde_json::Value, path: &str, depth: usize, e: &mut FieldErrors) -> bool {
        if depth > MAX_JSON_DEPTH {
            e.add(path, format!("nested deeper than {MAX_JSON_DEPTH} levels"));
            return false;
        }
        match v {
            serde_json::Value::String(s) => {
                if let Err(r) = no_control(s, Lines::Multi) {
                    e.add(path, r);
                    return false;
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !walk(item, &format!("{path}[{i}]"), depth + 1, e) {
                        return false;
                    }
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    let p = format!("{path}.{}", printable_key(k));
                    if let Err(r) = no_control(k, Lines::Single) {
                        e.add(p, format!("field name {r}"));
                        return false;
                    }
                    if !walk(item, &p, depth + 1, e) {
                        return false;
                    }
                }
            }
            _ => {}
        }
        true
    }
    walk(value, field, 0, e);
}

/// A key as it can appear in a field path of an error (control characters escaped).
fn printable_key(k: &str) -> String {
    k.chars().flat_map(char::escape_debug).take(64).collect()
}

/// An http(s) URL of at most 2048 characters (a website field, not fetched by sigma).
pub fn url(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    if t.len() > 2048
        || t.chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c))
    {
        return Err("is not a valid URL".into());
    }
    Ok(t.to_string())
}

/// A duration like `500ms`, `30s`, `5m`, `1h` or a bare number of seconds; at least 1 ms.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 1h)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    if ms == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(
            hostname("Node-1.Example.com.").unwrap(),
            "node-1.example.com"
        );
        assert!(hostname("").is_err());
        assert!(hostname("-a").is_err());
        assert!(hostname("a..b").is_err());
        assert!(hostname("a_b").is_err());
        assert!(hostname(&"a".repeat(64)).is_err());
        assert!(hostname(&["a"; 130].join(".")).is_err());
        assert!(hostname("héllo").is_err());
        assert_eq!(hostname("1-2-3").unwrap(), "1-2-3");
    }

    #[test]
    fn labels_countries_ips_ports() {
        assert!(dns_label("vpn-exit").is_ok());
        assert!(dns_label("VPN").is_err());
        assert!(dns_label("a-").is_err());
        assert_eq!(country("fr").unwrap(), "FR");
        assert!(country("ZZ").is_err());
        assert_eq!(ip(" 2001:DB8::1 ").unwrap(), "2001:db8::1");
        assert!(ip("300.1.1.1").is_err());
        assert!(port(0).is_err());
        assert!(port(65536).is_err());
        assert_eq!(port(9100).unwrap(), 9100);
        assert!(ip_label("public").is_ok());
        assert!(ip_label("Public").is_err());
        assert!(tag("env=prod").is_ok());
        assert!(tag("a b").is_err());
        assert!(text("a\u{0}", 10).is_err());
        assert!(name("  ", 10).is_err());
        assert!(url("https://example.org/x").is_ok());
        assert!(url("ftp://x").is_err());
        assert!(url("https://").is_err());
    }

    #[test]
    fn a_numeric_last_label_is_no_dns_name() {
        for bad in ["256.1.1.1", "1.2.3.4.5", "1.2.3.4", "example.123", "123"] {
            let e = hostname(bad).unwrap_err();
            assert!(e.contains("all digits"), "{bad}: {e}");
        }
        for good in [
            "example.com",
            "1.2.3.x4",
            "123.example",
            "a1",
            "1-2-3",
            "9gag.com",
        ] {
            assert!(hostname(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert_eq!(ip("::ffff:192.0.2.9").unwrap(), "192.0.2.9");
        assert_eq!(ip("::FFFF:c000:209").unwrap(), "192.0.2.9");
        // Other IPv6 addresses, including the deprecated IPv4-compatible form, stay IPv6.
        assert_eq!(ip("::192.0.2.9").unwrap(), "::c000:209");
        assert_eq!(ip("2001:db8::ffff:1").unwrap(), "2001:db8::ffff:1");
        assert_eq!(ip("::1").unwrap(), "::1");
    }

    #[test]
    fn control_characters_by_kind_of_field() {
        for c in [
            '\0', '\u{1b}', '\u{7f}', '\u{85}', '\r', '\u{202E}', '\u{2066}', '\u{2028}',
        ] {
            let s = format!("a{c}b");
            assert!(text(&s, 10).is_err(), "{s:?}");
            assert!(line(&s, 10).is_err(), "{s:?}");
            assert!(name(&s, 10).is_err(), "{s:?}");
        }
        assert!(text("a\u{0}", 10).unwrap_err().contains("NUL"));
        assert_eq!(text("l1\nl2\tx", 20).unwrap(), "l1\nl2\tx");
        for s in ["l1\nl2", "a\tb"] {
            assert!(line(s, 20).is_err(), "{s:?}");
            assert!(name(s, 20).is_err(), "{s:?}");
        }
        assert_eq!(name("  Hetzner Online  ", 20).unwrap(), "Hetzner Online");
        assert_eq!(line("", 5).unwrap(), "");
        // Non-ASCII text is fine; only control characters are refused.
        assert!(name("Zürich – Ost", 20).is_ok());
        assert!(name("\u{200F}שלום", 20).is_ok());
    }

    #[test]
    fn json_strings_name_the_first_bad_path() {
        let mut e = FieldErrors::new();
        json_strings(
            &serde_json::json!({"a": ["ok", {"b": "x\u{0}"}], "c": "multi\nline"}),
            "system_info",
            &mut e,
        );
        assert_eq!(e.0.keys().collect::<Vec<_>>(), ["system_info.a[1].b"]);
        let mut e = FieldErrors::new();
        json_strings(&serde_json::json!({"k\u{0}": 1}), "x", &mut e);
        assert!(e.0.contains_key("x.k\\0"), "{e:?}");
        let mut deep = serde_json::json!("leaf");
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        let mut e = FieldErrors::new();
        json_strings(&deep, "x", &mut e);
        assert!(!e.is_empty());
        let mut e = FieldErrors::new();
        json_strings(&serde_json::json!({"fine": "Debian\tGNU\n"}), "x", &mut e);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("5").unwrap(), Duration::from_secs(5));
        assert!(duration("0s").is_err());
        assert!(duration("1d").is_err());
        assert!(duration("x").is_err());
        assert!(duration("99999999999999999999h").is_err());
    }

    #[test]
    fn field_errors_keep_first_reason() {
        let mut e = FieldErrors::new();
        e.add("a", "one");
        e.add("a", "two");
        assert_eq!(e.0["a"], "one");
        e.add("Z", "first by order");
        assert_eq!(e.to_string(), "Z: first by order; a: one");
        assert_eq!(FieldErrors::new().to_string(), "");
        assert!(e.into_result().is_err());
    }
}

//! Parsing what operators type or write: JSON/YAML documents, durations, times, addresses.

use std::io::Read;

use serde_json::Value;
use sigma_types::IpAddress;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// Reads a JSON or YAML document from a file, or from standard input for `-`.
///
/// `.json` files are JSON, `.yaml`/`.yml` files YAML; anything else (and standard input) is
/// JSON when it starts with `{` or `[`, YAML otherwise.
pub fn read_document(path: &str) -> Result<Value> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| Error::Io {
                path: "standard input".into(),
                source,
            })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?
    };
    parse_document(&text, path)
}

/// Parses a JSON or YAML document; `name` (a file name) picks the syntax by its extension.
pub fn parse_document(text: &str, name: &str) -> Result<Value> {
    let lower = name.to_ascii_lowercase();
    let json = if lower.ends_with(".json") {
        true
    } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        false
    } else {
        text.trim_start().starts_with(['{', '['])
    };
    let err = |kind: &str, e: &dyn std::fmt::Display| Error::Input {
        source_name: if name == "-" {
            "standard input".into()
        } else {
            name.into()
        },
        message: format!("not valid {kind}: {e}"),
    };
    if json {
        serde_json::from_str(text).map_err(|e| err("JSON", &e))
    } else {
        yaml_serde::from_str(text).map_err(|e| err("YAML", &e))
    }
}

/// Parses inline JSON given with a flag (`--mesh '{"a": 1}'`).
pub fn parse_inline_json(text: &str, flag: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Input {
        source_name: flag.into(),
        message: format!("not valid JSON: {e}"),
    })
}

/// A duration in whole seconds: `90` or `90s`, `30m`, `12h`, `7d`, `2w`.
pub fn duration_secs(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 3600, 30m, 12h, 7d, 2w)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ));
        }
    };
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if secs == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(secs)
}

/// A point in time for a filter: RFC 3339 (`2026-05-01T12:00:00Z`) or a duration before
/// `now` (`1h` = an hour ago); returned as RFC 3339.
pub fn time_arg(s: &str, now: OffsetDateTime) -> std::result::Result<String, String> {
    if let Ok(t) = OffsetDateTime::parse(s.trim(), &Rfc3339) {
        return t.format(&Rfc3339).map_err(|e| e.to_string());
    }
    let secs = duration_secs(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-05-01T12:00:00Z) nor a duration ago (30m, 12h, 7d)")
    })?;
    (now - time::Duration::seconds(secs))
        .format(&Rfc3339)
        .map_err(|e| e.to_string())
}

/// An address with its label: `IP` (labelled `public`) or `LABEL=IP`.
pub fn ip_address(s: &str) -> std::result::Result<IpAddress, String> {
    let (label, ip) = s.split_once('=').unwrap_or(("public", s));
    let ip = sigma_types::validate::ip(ip.trim())?;
    let label = sigma_types::validate::ip_label(label.trim())?;
    Ok(IpAddress { ip, label })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_by_extension_or_content() {
        let v = serde_json::json!({"a": [1, 2], "b": {"c": "d"}});
        assert_eq!(
            parse_document(r#"{"a":[1,2],"b":{"c":"d"}}"#, "m.json").unwrap(),
            v
        );
        assert_eq!(
            parse_document("a: [1, 2]\nb:\n  c: d\n", "m.yaml").unwrap(),
            v
        );
        assert_eq!(parse_document("a:\n- 1\n- 2\nb: {c: d}\n", "-").unwrap(), v);
        assert_eq!(
            parse_document(r#"{"a":[1,2],"b":{"c":"d"}}"#, "-").unwrap(),
            v
        );
        let e = parse_document("{", "m.json").unwrap_err().to_string();
        assert!(e.starts_with("m.json: not valid JSON"), "{e}");
        let e = parse_document("a: [", "m.yml").unwrap_err().to_string();
        assert!(e.starts_with("m.yml: not valid YAML"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs("90"), Ok(90));
        assert_eq!(duration_secs("30m"), Ok(1800));
        assert_eq!(duration_secs("7d"), Ok(604_800));
        assert_eq!(duration_secs("2w"), Ok(1_209_600));
        assert!(duration_secs("0s").is_err());
        assert!(duration_secs("5y").unwrap_err().contains("unknown unit"));
        assert!(duration_secs("soon").is_err());
    }

    #[test]
    fn times() {
        let now = OffsetDateTime::parse("2026-05-01T12:00:00Z", &Rfc3339).unwrap();
        assert_eq!(time_arg("1h", now).unwrap(), "2026-05-01T11:00:00Z");
        assert_eq!(
            time_arg("2026-04-01T00:00:00+02:00", now).unwrap(),
            "2026-04-01T00:00:00+02:00"
        );
        assert!(time_arg("yesterday", now).is_err());
    }

    #[test]
    fn addresses() {
        let a = ip_address("203.0.113.7").unwrap();
        assert_eq!((a.ip.as_str(), a.label.as_str()), ("203.0.113.7", "public"));
        let a = ip_address("private=2001:DB8::1").unwrap();
        assert_eq!(
            (a.ip.as_str(), a.label.as_str()),
            ("2001:db8::1", "private")
        );
        assert!(ip_address("1.2.3").is_err());
        assert!(ip_address("Bad Label=1.2.3.4").is_err());
    }
}

//! The syntax Kubernetes and Istio accept for names, label keys and label values, and the
//! sanitising that turns any inventory string (a hostname, a provider name, a city) into one.
//!
//! Sanitising must never make two different inputs collide, because an object name or a label
//! value that two VPS share would silently merge them. The rule that guarantees it:
//!
//! * an input that is already valid and does not contain `--` is used verbatim;
//! * anything else becomes `<cleaned body>--<hash>`, where the body has every run of `-` collapsed
//!   (so it never contains `--`) and the hash is the first 8 hex digits of the SHA-256 of the raw
//!   input.
//!
//! Verbatim outputs never contain `--` and hashed outputs always do, so the two sets are disjoint;
//! two hashed outputs are equal only when both their bodies and their hashes are. The desired-state
//! computation still checks the final names for duplicates, so even a hash collision is reported
//! instead of merging two VPS.

use sha2::{Digest, Sha256};

/// Longest Kubernetes label value and DNS-1123 label (and so the longest object name sigma
/// generates; Istio rejects some kinds with names longer than a DNS label).
pub const MAX_LABEL_LEN: usize = 63;

/// Longest DNS-1123 subdomain (service accounts, label key prefixes, hostnames).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// Hex digits of the SHA-256 kept as a suffix: 32 bits, enough for names that already share
/// their whole cleaned body.
const HASH_LEN: usize = 8;

/// Separates a cleaned body from its hash; never appears in a verbatim output.
const HASH_SEP: &str = "--";

/// True for a DNS-1123 label: 1–63 lower-case letters, digits and `-`, starting and ending
/// alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// True for a DNS-1123 subdomain: dot-separated DNS labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBDOMAIN_LEN && s.split('.').all(is_dns_label)
}

/// True for a Kubernetes label value: empty, or 1–63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= MAX_LABEL_LEN
        && b.iter().copied().all(label_value_byte)
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// True for a Kubernetes label or annotation key: an optional DNS-subdomain prefix and `/`,
/// then a name of 1–63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return false;
    }
    !name.is_empty() && is_label_value(name)
}

fn label_value_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.'
}

fn dns_label_byte(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// The first 8 hex digits of the SHA-256 of `raw`: stable across releases and platforms, which
/// a `std` hasher is not.
pub fn short_hash(raw: &str) -> String {
    let mut out = String::with_capacity(HASH_LEN);
    push_hash(&mut out, raw);
    out
}

/// `raw` as a DNS-1123 label (an object name): verbatim when already valid and free of `--`,
/// otherwise lower-cased, cleaned, cut to fit and suffixed with a hash of `raw` (see the module
/// documentation for why this never makes two inputs collide).
pub fn dns_label(raw: &str) -> String {
    dns_label_within(raw, MAX_LABEL_LEN)
}

/// [`dns_label`] cut to at most `max` characters (at least 16), leaving room for a fixed
/// suffix; appending the same suffix to every name keeps them distinct.
pub fn dns_label_within(raw: &str, max: usize) -> String {
    let max = max.clamp(16, MAX_LABEL_LEN);
    if raw.len() <= max && is_dns_label(raw) && !raw.contains(HASH_SEP) {
        return raw.to_string();
    }
    hashed(raw, true, dns_label_byte, max)
}

/// `raw` as a Kubernetes label value: verbatim when already valid, non-empty and free of `--`,
/// otherwise cleaned (case kept), cut to fit and suffixed with a hash of `raw`.
pub fn label_value(raw: &str) -> String {
    label_value_within(raw, MAX_LABEL_LEN)
}

/// [`label_value`] cut to at most `max` characters (at least 16), leaving room for a fixed
/// prefix or suffix.
pub fn label_value_within(raw: &str, max: usize) -> String {
    let max = max.clamp(16, MAX_LABEL_LEN);
    if !raw.is_empty() && raw.len() <= max && is_label_value(raw) && !raw.contains(HASH_SEP) {
        return raw.to_string();
    }
    hashed(raw, false, label_value_byte, max)
}

fn hashed(raw: &str, lower: bool, allowed: fn(u8) -> bool, max: usize) -> String {
    let max_body = max - HASH_SEP.len() - HASH_LEN;
    let mut out = String::with_capacity(max);
    for c in raw.chars() {
        let c = if lower { c.to_ascii_lowercase() } else { c };
        let c = if c.is_ascii() && allowed(c as u8) {
            c
        } else {
            '-'
        };
        // Collapsing every run of '-' is what keeps "--" out of the body; leading
        // non-alphanumerics are dropped because a name must start with one.
        if (c == '-' && out.ends_with('-')) || (out.is_empty() && !c.is_ascii_alphanumeric()) {
            continue;
        }
        if out.len() == max_body {
            break;
        }
        out.push(c);
    }
    // The body is ASCII, so truncating at any byte is safe.
    let end = out
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .len();
    out.truncate(end);
    // A bare hash could equal some verbatim input; a fixed body keeps the "--" marker.
    if out.is_empty() {
        out.push('x');
    }
    out.push_str(HASH_SEP);
    push_hash(&mut out, raw);
    out
}

fn push_hash(out: &mut String, raw: &str) {
    let digest = Sha256::digest(raw.as_bytes());
    for b in digest.iter().take(HASH_LEN / 2) {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
}

/// One component of an Istio locality (`region/zone/subzone`): lower-case letters, digits and
/// `-`, with common Latin accents folded (`São Paulo` → `sao-paulo`) so that Kiali shows a
/// readable name. Returns `None` when nothing usable is left. No hash is added: two cities that
/// clean to the same token only share a load-balancing zone, which merges nothing else.
pub fn locality_component(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut push = |c: char| {
        if c != '-' {
            out.push(c);
        } else if !(out.is_empty() || out.ends_with('-')) {
            out.push('-');
        }
    };
    for c in raw.chars().flat_map(char::to_lowercase) {
        if let Some(folded) = fold_accent(c) {
            folded.chars().for_each(&mut push);
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() {
            push(c);
        } else {
            push('-');
        }
    }
    let trimmed = out.trim_end_matches('-');
    let cut = trimmed[..trimmed.len().min(MAX_LABEL_LEN)].trim_end_matches('-');
    (!cut.is_empty()).then(|| cut.to_string())
}

fn fold_accent(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' | 'ľ' | 'ĺ' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ř' | 'ŕ' => "r",
        'ś' | 'š' | 'ş' | 'ș' => "s",
        'ß' => "ss",
        'ť' | 'ţ' | 'ț' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ų' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_checks() {
        assert!(is_dns_label("vps-a1"));
        assert!(!is_dns_label("Vps"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label(""));
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("sigma-vm"));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&format!("{}.a", "a".repeat(253))));
        assert!(is_label_value(""));
        assert!(is_label_value("Hetzner_Cloud.1"));
        assert!(!is_label_value("_a"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/managed-by"));
        assert!(!is_label_key("App.io/x"));
        assert!(!is_label_key("a/"));
        assert!(!is_label_key("/a"));
        assert!(!is_label_key("a/b/c"));
    }

    #[test]
    fn valid_names_are_kept() {
        assert_eq!(dns_label("vps-node1"), "vps-node1");
        assert_eq!(label_value("Hetzner"), "Hetzner");
        assert_eq!(label_value("FR"), "FR");
    }

    #[test]
    fn invalid_names_are_cleaned_and_hashed() {
        let n = dns_label("vps-Node_1.example.com");
        assert!(is_dns_label(&n), "{n}");
        assert!(n.starts_with("vps-node-1-example-com--"), "{n}");
        assert_eq!(n.len(), "vps-node-1-example-com--".len() + 8);
        // Stable: the same input always gives the same name.
        assert_eq!(n, dns_label("vps-Node_1.example.com"));
        let long = dns_label(&format!("vps-{}", "a".repeat(300)));
        assert_eq!(long.len(), 63);
        assert!(is_dns_label(&long));
        let uni = dns_label("vps-ñandú-東京");
        assert!(is_dns_label(&uni), "{uni}");
        assert!(uni.starts_with("vps-and--"), "{uni}");
        let lv = label_value("Hetzner Online GmbH");
        assert!(is_label_value(&lv), "{lv}");
        assert!(lv.starts_with("Hetzner-Online-GmbH--"), "{lv}");
        let empty = label_value("東京");
        assert!(empty.starts_with("x--"), "{empty}");
        assert!(is_label_value(&empty));
    }

    #[test]
    fn verbatim_and_hashed_never_collide() {
        // An input that looks like a hashed output is itself hashed, so it cannot equal one.
        let hashed = dns_label("vps-a.b");
        assert_ne!(dns_label(&hashed), hashed);
        let inputs = [
            "vps-a.b",
            "vps-a-b",
            "vps-a_b",
            "vps-A-b",
            "vps-a--b",
            "vps-a---b",
            "vps-a-b-",
        ];
        let outs: std::collections::BTreeSet<String> =
            inputs.iter().map(|s| dns_label(s)).collect();
        assert_eq!(outs.len(), inputs.len(), "{outs:?}");
        for o in &outs {
            assert!(is_dns_label(o), "{o}");
        }
    }

    #[test]
    fn truncation_keeps_distinct_long_names_apart() {
        let a = format!("vps-{}a", "x".repeat(100));
        let b = format!("vps-{}b", "x".repeat(100));
        assert_ne!(dns_label(&a), dns_label(&b));
        assert_eq!(dns_label(&a).len(), 63);
    }

    #[test]
    fn room_for_a_suffix() {
        assert_eq!(dns_label_within("short", 58), "short");
        let n = dns_label_within(&"a".repeat(60), 58);
        assert_eq!(n.len(), 58);
        assert!(n.contains("--"));
        assert_ne!(n, dns_label_within(&"a".repeat(61), 58));
    }

    #[test]
    fn locality_components() {
        assert_eq!(locality_component("São Paulo").unwrap(), "sao-paulo");
        assert_eq!(locality_component("FR").unwrap(), "fr");
        assert_eq!(
            locality_component("Frankfurt am Main").unwrap(),
            "frankfurt-am-main"
        );
        assert_eq!(locality_component("  Köln / Bonn ").unwrap(), "koln-bonn");
        assert_eq!(locality_component("東京"), None);
        assert_eq!(locality_component(""), None);
        assert!(locality_component(&"ab ".repeat(50)).unwrap().len() <= 63);
    }

    #[test]
    fn hash_is_sha256_prefix() {
        // SHA-256("abc") starts with ba7816bf.
        assert_eq!(short_hash("abc"), "ba7816bf");
    }
}

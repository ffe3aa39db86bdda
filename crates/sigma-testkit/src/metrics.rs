//! The metric families a binary exports, kept in a list checked into its crate
//! (`metrics.txt`: one `name type` a line, sorted), which `docs/check` reads to check the docs
//! against the real, full names (sub-registry prefixes included) in both directions.

use std::path::Path;

/// Set to `1` to rewrite the lists instead of comparing them.
pub const UPDATE_ENV: &str = "SIGMA_UPDATE_METRICS";

/// The families of a registry's text encoding (its `# TYPE` lines) as `name type`, sorted.
pub fn families(encoded: &str) -> Vec<String> {
    let mut out: Vec<String> = encoded
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Asserts that `list` names exactly the families of `registries`, after its `#` comment
/// lines (`header`, rewritten with the list); with [`UPDATE_ENV`]`=1` writes the list instead.
///
/// Each registry is given as its text encoding and its `{:?}` form. A family without any
/// sample is left out of the encoding, so the caller gives every family one; the `Debug` form
/// counts the families registered, so one the caller missed fails here instead of going
/// unlisted.
pub fn assert_listed(registries: &[(String, String)], list: &Path, header: &str) {
    let mut want = Vec::new();
    for (encoded, debug) in registries {
        let encoded_families = families(encoded);
        let registered = debug.matches("Descriptor {").count();
        assert_eq!(
            encoded_families.len(),
            registered,
            "{registered} families registered but {} encoded: give every family a sample \
             before encoding. Encoded:\n{}",
            encoded_families.len(),
            encoded_families.join("\n")
        );
        want.extend(encoded_families);
    }
    want.sort();
    want.dedup();
    let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
    for f in &want {
        text.push_str(f);
        text.push('\n');
    }
    if std::env::var(UPDATE_ENV).as_deref() == Ok("1") {
        std::fs::write(list, &text).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
        return;
    }
    let have = std::fs::read_to_string(list).unwrap_or_default();
    assert!(
        have == text,
        "{} is out of date; rewrite it with {UPDATE_ENV}=1 and document what changed \
         (docs/check). Registered:\n{}",
        list.display(),
        want.join("\n")
    );
}

//! The block sigma manages in `/etc/hosts`, between [`HOSTS_BEGIN`] and [`HOSTS_END`].
//!
//! Only lines inside the markers are ever changed. The block always sits at the end of the file:
//! a block whose end marker is missing (the file was cut short, or edited by hand) therefore
//! runs to the end of the file, and a stray end marker is dropped.

use sigma_types::mesh::{HOSTS_BEGIN, HOSTS_END};

/// Checks the bundle's `hosts` lines (`address name [name…]`, comments and blank lines
/// dropped) and returns them normalised, one entry per line.
pub fn check_entries(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let addr = words.next().unwrap_or("");
        if addr.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "hosts line {}: {addr:?} is not an IP address",
                i + 1
            ));
        }
        let names: Vec<&str> = words.collect();
        if names.is_empty() {
            return Err(format!("hosts line {}: no host name", i + 1));
        }
        for n in &names {
            sigma_types::validate::hostname(n)
                .map_err(|e| format!("hosts line {}: {n:?}: {e}", i + 1))?;
        }
        out.push(format!("{addr} {}", names.join(" ")));
    }
    Ok(out)
}

/// `existing` without any sigma block (and without stray markers).
pub fn strip_block(existing: &str) -> String {
    let mut out = String::with_capacity(existing.len());
    let mut inside = false;
    for line in existing.split_inclusive('\n') {
        let t = line.trim();
        if t == HOSTS_BEGIN {
            inside = true;
            continue;
        }
        if t == HOSTS_END {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
        }
    }
    out
}

/// `existing` with the sigma block holding `entries` at its end (no block when `entries` is
/// empty). Applying it to its own output gives the same text.
pub fn with_block(existing: &str, entries: &[String]) -> String {
    let mut out = strip_block(existing);
    if entries.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(HOSTS_BEGIN);
    out.push('\n');
    for e in entries {
        out.push_str(e);
        out.push('\n');
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<String> {
        check_entries("203.0.113.9  istiod.istio-system.svc\n# egress\n127.0.0.2 xboard.sigma.svc.cluster.local\n")
            .unwrap()
    }

    #[test]
    fn adds_replaces_and_is_idempotent() {
        let base = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";
        let once = with_block(base, &entries());
        assert_eq!(
            once,
            format!(
                "{base}{HOSTS_BEGIN}\n203.0.113.9 istiod.istio-system.svc\n127.0.0.2 xboard.sigma.svc.cluster.local\n{HOSTS_END}\n"
            )
        );
        assert_eq!(with_block(&once, &entries()), once);
        // A line added by someone else after the block survives, above the new block.
        let edited = format!("{once}10.0.0.5 db\n");
        let again = with_block(&edited, &entries());
        assert!(
            again.starts_with(&format!("{base}10.0.0.5 db\n{HOSTS_BEGIN}")),
            "{again}"
        );
        assert_eq!(strip_block(&again), format!("{base}10.0.0.5 db\n"));
    }

    #[test]
    fn handles_a_missing_newline_and_half_blocks() {
        assert_eq!(
            with_block("127.0.0.1 localhost", &entries()).lines().next(),
            Some("127.0.0.1 localhost")
        );
        let half =
            format!("127.0.0.1 localhost\n{HOSTS_BEGIN}\n203.0.113.9 istiod.istio-system.svc\n");
        assert_eq!(strip_block(&half), "127.0.0.1 localhost\n");
        let stray = format!("127.0.0.1 localhost\n{HOSTS_END}\n10.0.0.1 a\n");
        assert_eq!(strip_block(&stray), "127.0.0.1 localhost\n10.0.0.1 a\n");
        assert_eq!(
            with_block("127.0.0.1 localhost\n", &[]),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(with_block("", &entries()).lines().next(), Some(HOSTS_BEGIN));
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in ["istiod 1.2.3.4\n", "1.2.3.4\n", "1.2.3.4 bad_name\n"] {
            assert!(check_entries(bad).is_err(), "{bad}");
        }
    }
}

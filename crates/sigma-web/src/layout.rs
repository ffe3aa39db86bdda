//! The page shell and small rendering helpers shared by every page.

use maud::{DOCTYPE, Markup, html};
use sigma_store::sessions::Session;
use time::OffsetDateTime;

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Vps,
    Chains,
    Enrollment,
    Purposes,
    Providers,
    Keys,
    Audit,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · sigma" }
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/console.js" defer {}
        }
    }
}

/// A page for a signed-in operator: navigation, who is signed in, the sign-out form.
pub fn page(title: &str, section: Section, s: &Session, body: Markup) -> Markup {
    let admin = s.principal.role == sigma_types::Role::Admin;
    // Pages a role may not open are not offered (the server refuses them anyway).
    let nav = [
        (Section::Overview, "/", "Overview", true),
        (Section::Vps, "/vps", "VPS", true),
        (Section::Chains, "/chains", "Chains", true),
        (Section::Enrollment, "/enrollment", "Enrollment", true),
        (Section::Purposes, "/purposes", "Purposes", true),
        (Section::Providers, "/providers", "Providers", true),
        (Section::Keys, "/api-keys", "API keys", admin),
        (Section::Audit, "/audit", "Audit log", admin),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/" { "sigma" }
                    nav aria-label="Main" {
                        @for (sec, href, label, shown) in nav {
                            @if !shown {
                            } @else if sec == section {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    form.signout method="post" action="/logout" {
                        span.who { (s.principal.prefix) " · " (s.principal.role.as_str()) }
                        (csrf(s))
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.narrow { (body) } }
        }
    }
}

/// The hidden CSRF field of every mutating form.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf_token); }
}

/// A UTC time as `2026-12-04 19:07:52 UTC`.
pub fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long ago `t` was, coarsely (`42s ago`, `5m ago`, `3h ago`, `2d ago`).
pub fn ago(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds();
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// A duration in its largest whole unit (`6 h`, `10 min`, `45 s`, `2 d`).
pub fn span(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A byte count in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        let t = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(time(t), "1970-01-01 00:00:00 UTC");
        let d = std::time::Duration::from_secs;
        assert_eq!(span(d(6 * 3600)), "6 h");
        assert_eq!(span(d(600)), "10 min");
        assert_eq!(span(d(90)), "90 s");
        assert_eq!(span(d(2 * 86_400)), "2 d");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let hostile = "<script>alert(1)</script>\"'&";
        let out = html! { p title=(hostile) { (hostile) } }.into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
        assert!(out.contains("&quot;"), "{out}");
    }
}

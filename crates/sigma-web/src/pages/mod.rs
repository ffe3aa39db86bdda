//! The console's pages, one module per section.

pub mod enroll;
pub mod overview;
pub mod vps;

/// `?key=value` query text with every value form-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let q = serde_urlencoded::to_string(pairs).unwrap_or_default();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{q}")
    }
}

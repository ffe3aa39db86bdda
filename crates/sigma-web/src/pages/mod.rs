//! The console's pages, one module per section.

pub mod admin;
pub mod chains;
pub mod enroll;
pub mod lifecycle;
pub mod mesh;
pub mod overview;
pub mod purposes;
pub mod routes;
pub mod vps;
pub mod vps_detail;

use maud::{Markup, html};
use sigma_types::FieldErrors;

/// A field's error message, referenced by the field's `aria-describedby` (`err-<name>`).
pub fn field_error(e: &FieldErrors, name: &str) -> Markup {
    html! {
        @if let Some(m) = e.0.get(name) {
            span.field-error id={ "err-" (name) } role="alert" { (m) }
        }
    }
}

/// `?key=value` query text with every value form-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let q = serde_urlencoded::to_string(pairs).unwrap_or_default();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{q}")
    }
}

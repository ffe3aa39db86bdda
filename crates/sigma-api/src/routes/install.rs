//! The agent installer, `GET /install.sh`: deploy/install-agent.sh as built into the binary,
//! with this server's defaults written into it, so that the command `sigmactl enroll create`
//! prints (`curl -fsSL <api>/install.sh | … sh`) installs an agent without more arguments.
//!
//! Two defaults are filled in, each as a single-quoted shell word (a value can never end the
//! quote or start a command):
//!
//! * `DEFAULT_BINARY_URL`, the script's own placeholder for whoever serves it, from
//!   `--agent-binary-url`;
//! * `DEFAULT_API_URL`, the sigma-api URL used on a first install when neither `--api-url` nor
//!   `SIGMA_API_URL` is given (a re-run keeps the URL agent.env already holds), from
//!   `--public-url`, else from the request's `Host` header (and `X-Forwarded-Proto`) when that
//!   is a plain `host[:port]`. Any other header text is ignored, never copied into the script.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

use crate::AppState;

/// deploy/install-agent.sh, as it was when this binary was built.
pub const SCRIPT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/install-agent.sh"
));

/// The script's placeholder for the binary's download URL.
pub const BINARY_URL_LINE: &str = "DEFAULT_BINARY_URL=\"\"\n";

/// The script's placeholder for sigma-api's URL, used only on a first install without one.
pub const API_URL_LINE: &str = "DEFAULT_API_URL=\"\"\n";

/// What the server writes into the script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallerDefaults {
    /// Where the agent binary is downloaded from (`--agent-binary-url`).
    pub agent_binary_url: Option<String>,
    /// sigma-api's URL as VPS reach it (`--public-url`), without a trailing `/`.
    pub public_url: Option<String>,
}

/// The script with `binary_url` and `api_url` as its defaults (each only when given).
pub fn render(binary_url: Option<&str>, api_url: Option<&str>) -> String {
    let mut out = SCRIPT.to_string();
    if let Some(u) = binary_url {
        out = out.replacen(
            BINARY_URL_LINE,
            &format!(
                "DEFAULT_BINARY_URL={}\n",
                sigma_mesh::bundle::shell_quote(u)
            ),
            1,
        );
    }
    if let Some(u) = api_url {
        out = out.replacen(
            API_URL_LINE,
            &format!("DEFAULT_API_URL={}\n", sigma_mesh::bundle::shell_quote(u)),
            1,
        );
    }
    out
}

/// Whether `s` is a DNS name, an IPv4 address or a bracketed IPv6 address, optionally with
/// `:port`: the only `Host` header text that may become part of the script.
pub fn is_host_port(s: &str) -> bool {
    if s.is_empty() || s.len() > 261 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(p) = port
        && !(p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return false;
    }
    match host {
        None => true,
        Some(h) => {
            let h = h.strip_suffix('.').unwrap_or(h);
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }
    }
}

/// sigma-api's URL as this request reached it, when its headers describe it plainly.
fn url_from_request(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if !is_host_port(host) {
        return None;
    }
    // A TLS-terminating proxy in front says so; sigma-api itself serves plain HTTP.
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// The agent installer (deploy/install-agent.sh) with this server's defaults: the agent
/// binary's download URL (`--agent-binary-url`) and sigma-api's URL (`--public-url`, else the
/// request's `Host` when it is a plain `host[:port]`). No key needed: the script holds no
/// secret, and a VPS runs it before it has any credential.
#[utoipa::path(get, path = "/install.sh", tag = "system",
    responses((status = 200, body = String, content_type = "text/x-shellscript")))]
pub async fn install_script(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let d = &s.installer;
    let api = d.public_url.clone().or_else(|| url_from_request(&headers));
    let body = render(d.agent_binary_url.as_deref(), api.as_deref());
    (
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            // The answer depends on how it was asked for; no shared cache may mix them up.
            (header::CACHE_CONTROL, "no-cache"),
            (header::VARY, "Host, X-Forwarded-Proto"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_has_both_anchors_once() {
        assert_eq!(SCRIPT.matches(BINARY_URL_LINE).count(), 1);
        assert_eq!(SCRIPT.matches(API_URL_LINE).count(), 1);
    }

    #[test]
    fn values_are_single_quoted() {
        let s = render(Some("https://x/a'b $(id)"), Some("http://h:1"));
        assert!(
            s.contains("DEFAULT_BINARY_URL='https://x/a'\\''b $(id)'\n"),
            "{s}"
        );
        assert!(s.contains("DEFAULT_API_URL='http://h:1'\n"));
        assert_eq!(render(None, None), SCRIPT);
    }

    #[test]
    fn only_plain_host_ports_pass() {
        for ok in [
            "sigma.example.net",
            "sigma.example.net:8443",
            "localhost",
            "127.0.0.1:3000",
            "[::1]:3000",
            "[2001:db8::1]",
            "sigma.example.net.",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "", "a b", "x;reboot", "$(id)", "`id`", "h:0", "h:99999", "h:", "h:12a", "[::1",
            "[nope]:1", "a..b", "-a.b", "h'q", "h\"q", "a/b", "user@h",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}

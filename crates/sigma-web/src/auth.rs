//! Sign-in, sign-out, the session of a request, and the cross-site checks of every mutation.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use sigma_store::sessions::Session;
use sigma_types::Role;

use crate::Web;
use crate::error::{WebError, WebResult};
use crate::layout;

/// The cookie holding the session id.
pub const COOKIE: &str = "sigma_session";

/// Whether the request reached the proxy in front of sigma-api over https (only when told to
/// believe the proxy; sigma-api itself serves plain HTTP).
fn is_https(trust_forwarded_proto: bool, headers: &HeaderMap) -> bool {
    trust_forwarded_proto
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Whether `s` is plain `host[:port]` text (a DNS name or address), nothing that could carry
/// a path or markup.
fn is_plain_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 261
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// This server's origin as the browser sees it (`http(s)://host[:port]`), from the `Host`
/// header; `None` when the header is missing or not a plain host.
pub fn own_origin(trust_forwarded_proto: bool, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if !is_plain_host(host) {
        return None;
    }
    let scheme = if is_https(trust_forwarded_proto, headers) {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{host}"))
}

/// Refuses a mutation that does not come from this server's own pages: the `Origin` header
/// (every current browser sends it on a form POST) or else the `Referer` must be this origin.
/// A request with neither is refused too: the console's own forms always have one.
pub fn check_origin(trust_forwarded_proto: bool, headers: &HeaderMap) -> WebResult<()> {
    let own = own_origin(trust_forwarded_proto, headers)
        .ok_or(WebError::CrossSite("no usable Host header"))?;
    if let Some(o) = headers.get(header::ORIGIN) {
        return if o.to_str().ok() == Some(own.as_str()) {
            Ok(())
        } else {
            Err(WebError::CrossSite("the Origin is another site"))
        };
    }
    match headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        Some(r) if r == own || r.starts_with(&format!("{own}/")) => Ok(()),
        Some(_) => Err(WebError::CrossSite("the Referer is another site")),
        None => Err(WebError::CrossSite("neither Origin nor Referer was sent")),
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The signed-in session of a request. For any method but GET and HEAD, the request's origin
/// is checked too, so no mutating handler can forget it (the CSRF token is checked by
/// [`Form::csrf`]).
pub struct Signed(pub Session);

impl FromRequestParts<Web> for Signed {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> WebResult<Self> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            check_origin(web.settings.trust_forwarded_proto, &parts.headers)?;
        }
        let id = cookie_value(&parts.headers, COOKIE).ok_or(WebError::SignIn)?;
        match web.store.session(id, web.settings.sessions).await {
            Ok(s) => Ok(Signed(s)),
            Err(sigma_store::Error::Unauthorized(_)) => Err(WebError::SignIn),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a role may do in the console: the same rules as sigma-api's JSON API
/// (`sigma-api/src/extract.rs`): everyone signed in reads, admins and operators change the
/// inventory and issue enrollment tokens.
pub trait Roles {
    /// The role of the session.
    fn role(&self) -> Role;

    /// May change the inventory and enrollment tokens.
    fn may_operate(&self) -> bool {
        matches!(self.role(), Role::Admin | Role::Operator)
    }

    /// Refuses unless [`Roles::may_operate`].
    fn require_operator(&self) -> WebResult<()> {
        if self.may_operate() {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "a {} key may not do this (needs admin or operator)",
                self.role().as_str()
            )))
        }
    }
}

impl Roles for Session {
    fn role(&self) -> Role {
        self.principal.role
    }
}

/// A submitted `application/x-www-form-urlencoded` form.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decodes a form body.
    pub fn parse(body: &Bytes) -> WebResult<Form> {
        serde_urlencoded::from_bytes(body)
            .map(Form)
            .map_err(|e| WebError::BadRequest(format!("the form could not be read: {e}")))
    }

    /// A form from name/value pairs (the values an edit form starts with).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Form {
        Form(pairs)
    }

    /// Every name/value pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value trimmed, `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Refuses the form unless it carries the session's CSRF token.
    pub fn csrf(&self, s: &Session) -> WebResult<()> {
        if s.csrf_matches(self.get("csrf").unwrap_or("")) {
            Ok(())
        } else {
            Err(WebError::CrossSite(
                "the form's CSRF token is missing or wrong",
            ))
        }
    }
}

fn login_form(error: Option<&str>) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            h1 { "Sign in to sigma" }
            @if let Some(e) = error { p.error-message role="alert" { (e) } }
            form.card method="post" action="/login" {
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="off" required autofocus;
                p.hint { "Your key is exchanged for a session; the browser keeps only the session cookie." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `GET /login`.
pub async fn login_page() -> maud::Markup {
    login_form(None)
}

/// `POST /login`: exchanges an API key for a session cookie.
pub async fn login(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = check_origin(web.settings.trust_forwarded_proto, &headers) {
        return e.into_response();
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let key = form.get("key").unwrap_or("").trim();
    if key.is_empty() || key.len() > 512 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            login_form(Some("Enter an API key.")),
        )
            .into_response();
    }
    match web.store.create_session(key, web.settings.sessions).await {
        Ok(s) => {
            let max_age = web.settings.sessions.absolute.as_secs();
            let secure = if is_https(web.settings.trust_forwarded_proto, &headers) {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
                s.id
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(sigma_store::Error::Unauthorized(_)) | Err(sigma_store::Error::Forbidden(_)) => (
            StatusCode::UNAUTHORIZED,
            login_form(Some(
                "That key was not accepted (unknown, revoked, expired, or an agent key).",
            )),
        )
            .into_response(),
        Err(e) => WebError::from(e).into_response(),
    }
}

/// `POST /logout`: ends the session everywhere and clears the cookie.
pub async fn logout(
    State(web): State<Web>,
    Signed(s): Signed,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    Form::parse(&body)?.csrf(&s)?;
    if let Some(id) = cookie_value(&headers, COOKIE) {
        web.store.end_session(id).await?;
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; sigma_session=abc; b=2")]);
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn only_plain_hosts_make_an_origin() {
        assert!(is_plain_host("127.0.0.1:3000"));
        assert!(is_plain_host("[::1]:80"));
        assert!(is_plain_host("sigma.example.net"));
        assert!(!is_plain_host("a/b"));
        assert!(!is_plain_host("a b"));
        assert!(!is_plain_host("<x>"));
        assert!(!is_plain_host(""));
    }

    #[test]
    fn mutations_must_come_from_this_origin() {
        let host = ("host", "sigma.test:3000");
        assert!(
            check_origin(
                false,
                &headers(&[host, ("origin", "http://sigma.test:3000")])
            )
            .is_ok()
        );
        assert!(check_origin(false, &headers(&[host, ("origin", "https://evil.test")])).is_err());
        assert!(check_origin(false, &headers(&[host, ("origin", "null")])).is_err());
        // Origin wins over a matching Referer.
        assert!(
            check_origin(
                false,
                &headers(&[
                    host,
                    ("origin", "http://evil.test"),
                    ("referer", "http://sigma.test:3000/vps")
                ])
            )
            .is_err()
        );
        assert!(
            check_origin(
                false,
                &headers(&[host, ("referer", "http://sigma.test:3000/vps")])
            )
            .is_ok()
        );
        // A look-alike host in the Referer is not this origin.
        assert!(
            check_origin(
                false,
                &headers(&[host, ("referer", "http://sigma.test:3000.evil.test/")])
            )
            .is_err()
        );
        assert!(check_origin(false, &headers(&[host])).is_err());
        assert!(check_origin(false, &headers(&[("origin", "http://sigma.test:3000")])).is_err());
    }

    #[test]
    fn forwarded_proto_counts_only_when_trusted() {
        let h = headers(&[
            ("host", "sigma.test"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://sigma.test"),
        ]);
        assert!(check_origin(true, &h).is_ok());
        assert!(check_origin(false, &h).is_err());
        assert!(is_https(true, &h));
        assert!(!is_https(false, &h));
    }
}

//! Request extractors that turn every client mistake into a JSON 4xx naming the field.
//!
//! The order is credentials (401), then role (403), then what the request says (path, query,
//! body: 4xx naming the field). Every handler takes a role extractor ([`Reader`], [`Operator`],
//! [`Admin`], [`MeshIdentity`], [`AgentKey`], [`Registrant`]) before [`ApiPath`] and
//! [`ApiQuery`]; axum runs extractors in argument order and the body extractor ([`ApiJson`])
//! last, so a caller without rights never has the request read, and learns nothing about it.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use sigma_store::Principal;
use sigma_types::Role;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

fn serde_field(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." || p.is_empty() {
        "body".into()
    } else {
        p
    }
}

/// A JSON body: exactly one JSON object (see [`crate::json`]). The caller's credentials and
/// role are checked first by the extractors before it in the handler's signature, so a caller
/// without rights learns nothing about the schema. Wrong content type → 415, too large → 413,
/// malformed JSON, trailing data, a non-object, duplicate keys, wrong types, unknown fields or
/// enum values → 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json") || m.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body too large",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("could not read the body: {r}"),
                )
            }
        })?;
        Ok(ApiJson(crate::json::decode(&bytes)?))
    }
}

/// A query string, with the same error rules as [`ApiJson`]. Every name and value must be
/// UTF-8 without control characters (422 naming the parameter): nothing holding a NUL reaches
/// the database, which PostgreSQL would refuse with an error of its own.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        check_query(q)?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let field = serde_field(e.path());
                let field = if field == "body" {
                    "query".into()
                } else {
                    field
                };
                ApiError::field(&field, e.inner().to_string())
            })
    }
}

/// Longest path or query parameter value accepted; no id, name or filter comes near it.
const MAX_PARAM_LEN: usize = 1024;

/// Why a decoded parameter value is refused, if it is.
fn param_problem(v: &str) -> Option<&'static str> {
    if v.len() > MAX_PARAM_LEN {
        Some("is too long (at most 1024 bytes)")
    } else if v.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// Refuses a query string whose names or values, once decoded, are not UTF-8 or hold control
/// characters. `form_urlencoded` would replace invalid UTF-8 with U+FFFD silently, so the bytes
/// are decoded here first.
fn check_query(q: &str) -> Result<(), ApiError> {
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(k))
            .ok()
            .filter(|k| param_problem(k).is_none())
            .ok_or_else(|| {
                ApiError::field(
                    "query",
                    "a parameter name is not UTF-8 text without control characters",
                )
            })?;
        let value = String::from_utf8(percent_decode(v))
            .map_err(|_| ApiError::field(&name, "is not valid UTF-8"))?;
        if let Some(problem) = param_problem(&value) {
            return Err(ApiError::field(&name, problem));
        }
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding to bytes: `+` is a space, `%XX` a byte, and a
/// `%` not followed by two hex digits stays as it is (as `form_urlencoded` does).
fn percent_decode(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 1 < b.len() => match (hex(b[i + 1]), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Path parameters, with the same error rules as [`ApiQuery`]: invalid UTF-8, control
/// characters or a value that does not parse → 422 naming the parameter (`id`, `name`),
/// never axum's plain-text 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        for (k, v) in &raw {
            if let Some(problem) = param_problem(v) {
                return Err(ApiError::field(k, problem));
            }
        }
        let Path(v) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(ApiPath(v))
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind as K;
    match r {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            K::InvalidUtf8InPathParam { key } => ApiError::field(key, "is not valid UTF-8"),
            K::ParseErrorAtKey {
                key, expected_type, ..
            } => ApiError::field(key, format!("is not a valid {expected_type}")),
            K::Message(m) => ApiError::field("path", m.clone()),
            _ => ApiError::field("path", e.body_text()),
        },
        // A route whose handler asks for parameters its template lacks: a bug, not the
        // client's mistake.
        other => ApiError::internal(&other.body_text()),
    }
}

/// The bearer secret of a request, not yet checked.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let v = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key>"))?;
        let v = v
            .to_str()
            .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
        let (scheme, secret) = v
            .split_once(' ')
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <key>'"))?;
        let secret = secret.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() || secret.len() > 512 {
            return Err(ApiError::unauthorized(
                "Authorization must be 'Bearer <key>'",
            ));
        }
        Ok(Bearer(secret.to_string()))
    }
}

/// An authenticated API key of any role (agent keys included).
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Bearer(secret) = Bearer::from_request_parts(parts, state).await?;
        if secret.starts_with("sge_") {
            return Err(ApiError::unauthorized(
                "an enrollment token only serves POST /api/agent/register",
            ));
        }
        Ok(Auth(state.store.authenticate(&secret).await?))
    }
}

/// 403 unless the principal has one of `roles`; `why` says why the others may not.
fn allow(p: &Principal, roles: &[Role], why: Option<&str>) -> Result<(), ApiError> {
    if roles.contains(&p.role) {
        return Ok(());
    }
    let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    Err(ApiError::forbidden(format!(
        "a {} key may not do this{why} (needs {})",
        p.role.as_str(),
        allowed.join(" or ")
    )))
}

/// Declares an extractor that authenticates the key and then admits only some roles. Handlers
/// take one as their first extractor, so credentials (401) and role (403) are settled before
/// the path, the query or the body is looked at.
macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident: $($role:ident)|+ $(, $why:literal)?) => {
        $(#[$doc])*
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                let Auth(p) = Auth::from_request_parts(parts, state).await?;
                allow(&p, &[$(Role::$role),+], None $(.or(Some($why)))?)?;
                Ok($name(p))
            }
        }
    };
}

role_extractor!(
    /// A key of someone who may read the inventory: admin, operator or readonly.
    Reader: Admin | Operator | Readonly
);
role_extractor!(
    /// A key of someone who may change the inventory: admin or operator.
    Operator: Admin | Operator
);
role_extractor!(
    /// An admin key.
    Admin: Admin
);
role_extractor!(
    /// A key that may fetch an Istio bootstrap bundle: admin, operator, or an agent key (which
    /// the handler then limits to its own VPS). Readonly keys may not: the bundle holds a
    /// credential of the VPS's mesh identity.
    MeshIdentity: Admin | Operator | Agent,
    "a bootstrap bundle holds a credential of the VPS's mesh identity"
);

/// An agent key bound to a VPS: the agent endpoints' caller.
pub struct AgentKey(pub Principal);

impl FromRequestParts<AppState> for AgentKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Auth(p) = Auth::from_request_parts(parts, state).await?;
        agent_only(p).map(AgentKey)
    }
}

fn agent_only(p: Principal) -> Result<Principal, ApiError> {
    match (p.role, p.vps_id) {
        (Role::Agent, Some(_)) => Ok(p),
        _ => Err(ApiError::forbidden(format!(
            "only an agent key bound to a VPS may do this; {} is a {} key",
            p.prefix,
            p.role.as_str()
        ))),
    }
}

/// The credential of `POST /api/agent/register`: an enrollment token (first contact) or the
/// agent's own key. An API key is authenticated and must be an agent's before the body is read.
pub enum Registrant {
    /// An enrollment token's secret, checked (and one use taken) by the store with the request.
    Token(String),
    /// An authenticated agent key.
    Agent(Principal),
}

impl FromRequestParts<AppState> for Registrant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Bearer(secret) = Bearer::from_request_parts(parts, state).await?;
        if secret.starts_with("sge_") {
            // Only sigma's own token shape can name a stored token; anything else is unknown
            // without a database read.
            if sigma_store::secret::prefix_of(&secret).starts_with("ext_") {
                return Err(ApiError::unauthorized("unknown enrollment token"));
            }
            // Checked (read-only) before the body is read; the use is taken with the request.
            state.store.check_enrollment_token(&secret).await?;
            return Ok(Registrant::Token(secret));
        }
        let p = state.store.authenticate(&secret).await?;
        agent_only(p).map(Registrant::Agent)
    }
}

/// Parses a path id.
pub fn uuid_param(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::field("id", format!("{s:?} is not a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_matches_form_urlencoded() {
        assert_eq!(percent_decode("a+b%20c"), b"a b c");
        assert_eq!(percent_decode("%41%4a%4A"), b"AJJ");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%"), b"%zz%");
        assert_eq!(percent_decode("%FF"), [0xFF]);
        for q in ["a=1&b=x+y%2Fz", "q=%C3%A9t%C3%A9", "k=%%%&=v"] {
            let ours: Vec<(String, String)> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        String::from_utf8(percent_decode(k)).unwrap(),
                        String::from_utf8(percent_decode(v)).unwrap(),
                    )
                })
                .collect();
            let theirs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "{q}");
        }
    }

    fn refused_field(q: &str) -> Option<String> {
        check_query(q)
            .err()
            .map(|e| e.fields.0.into_keys().next().unwrap())
    }

    #[test]
    fn query_values_are_utf8_without_control_characters() {
        assert_eq!(refused_field("hostname=web-1&limit=10&q=caf%C3%A9+x"), None);
        assert_eq!(refused_field(""), None);
        assert_eq!(refused_field("q=a%00b").as_deref(), Some("q"));
        assert_eq!(refused_field("limit=1&actor=%FF").as_deref(), Some("actor"));
        assert_eq!(refused_field("tag=%0A").as_deref(), Some("tag"));
        assert_eq!(refused_field("tag=%C2%85").as_deref(), Some("tag"));
        assert_eq!(refused_field("tag=%7F").as_deref(), Some("tag"));
        assert_eq!(refused_field("a%00=1").as_deref(), Some("query"));
        assert_eq!(refused_field("%FF=1").as_deref(), Some("query"));
        let long = format!("q={}", "a".repeat(MAX_PARAM_LEN + 1));
        assert_eq!(refused_field(&long).as_deref(), Some("q"));
    }
}

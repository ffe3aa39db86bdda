//! Request extractors that turn every client mistake into a JSON 4xx naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
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

/// A JSON body. Wrong content type → 415, too large → 413, malformed JSON, wrong types,
/// unknown fields or enum values → 422 naming the field.
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
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(e) => {
                let inner = e.inner();
                let field = if inner.is_syntax() || inner.is_eof() {
                    "body".to_string()
                } else {
                    serde_field(e.path())
                };
                Err(ApiError::field(&field, inner.to_string()))
            }
        }
    }
}

/// A query string, with the same error rules as [`ApiJson`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(q));
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

fn form_urlencoded_parse(q: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(q.as_bytes())
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

/// An authenticated API key.
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

impl Auth {
    /// Allows the request only for these roles.
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, ApiError> {
        if roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "a {} key may not do this (needs {})",
                self.0.role.as_str(),
                allowed.join(" or ")
            )))
        }
    }

    /// People who may read the inventory.
    pub fn reader(&self) -> Result<&Principal, ApiError> {
        self.require(&[Role::Admin, Role::Operator, Role::Readonly])
    }

    /// People who may change the inventory.
    pub fn operator(&self) -> Result<&Principal, ApiError> {
        self.require(&[Role::Admin, Role::Operator])
    }

    /// Admins only.
    pub fn admin(&self) -> Result<&Principal, ApiError> {
        self.require(&[Role::Admin])
    }
}

/// Parses a path id.
pub fn uuid_param(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::field("id", format!("{s:?} is not a UUID")))
}

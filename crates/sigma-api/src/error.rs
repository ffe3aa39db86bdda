//! The one error type of the HTTP API: a status code and a JSON body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sigma_types::{ErrorBody, FieldErrors};

/// An error answer. 5xx details are logged here and never sent to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Message for a person.
    pub message: String,
    /// Reasons per field, for validation errors.
    pub fields: FieldErrors,
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error without field details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: FieldErrors::new(),
        }
    }

    /// 422 naming fields.
    pub fn validation(fields: FieldErrors) -> Self {
        let names: Vec<&str> = fields.0.keys().map(String::as_str).collect();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation",
            message: format!("invalid {}", names.join(", ")),
            fields,
        }
    }

    /// 422 for one field.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        let mut f = FieldErrors::new();
        f.add(field, reason);
        Self::validation(f)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500, with the cause logged.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<FieldErrors> for ApiError {
    fn from(f: FieldErrors) -> Self {
        ApiError::validation(f)
    }
}

impl From<sigma_store::Error> for ApiError {
    fn from(e: sigma_store::Error) -> Self {
        use sigma_store::Error as E;
        match e {
            E::Invalid(f) => ApiError::validation(f),
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            E::Unauthorized(m) => ApiError::unauthorized(m),
            E::Forbidden(m) => ApiError::forbidden(m),
            E::Unavailable(cause) => {
                tracing::error!(error = %cause, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again",
                )
            }
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
            fields: self.fields.0,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// `errors` with each field put under `prefix` (`purposes.xrayr` + `ports` →
/// `purposes.xrayr.ports`).
pub(crate) fn fields_under(prefix: &str, errors: FieldErrors) -> FieldErrors {
    let mut fields = FieldErrors::new();
    for (k, v) in errors.0 {
        fields.add(format!("{prefix}.{k}"), v);
    }
    fields
}

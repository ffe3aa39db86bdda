//! The console's error type: each kind becomes a page that says what to do next.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::layout;

/// What can stop a console request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No live session: the browser is sent to the sign-in page.
    #[error("not signed in")]
    SignIn,
    /// The request looks cross-site (foreign or missing origin, wrong CSRF token).
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    /// The session's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such page or resource.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (not a form the console sends).
    #[error("{0}")]
    BadRequest(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] sigma_store::Error),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, advice) = match &self {
            WebError::SignIn => return Redirect::to("/login").into_response(),
            WebError::CrossSite(_) => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "The request did not come from a console page of this server. Reload the page and try again.",
            ),
            WebError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your API key's role does not allow this. Ask an admin for an operator key.",
            ),
            WebError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "Not found",
                "It may have been deleted. Go back to the VPS list.",
            ),
            WebError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "Bad request",
                "Reload the page and send the form again.",
            ),
            WebError::Store(e) => match e {
                sigma_store::Error::Unauthorized(_) => {
                    return Redirect::to("/login").into_response();
                }
                sigma_store::Error::NotFound(_) => (
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "It may have been deleted. Go back to the VPS list.",
                ),
                sigma_store::Error::Forbidden(_) => (
                    StatusCode::FORBIDDEN,
                    "Not allowed",
                    "Your API key's role does not allow this.",
                ),
                sigma_store::Error::Conflict(_) | sigma_store::Error::Invalid(_) => (
                    StatusCode::CONFLICT,
                    "Not possible now",
                    "Reload the page to see the current state, then try again.",
                ),
                sigma_store::Error::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Database unavailable",
                    "The database did not answer in time. Try again in a moment.",
                ),
                _ => {
                    tracing::error!(error = %e, "console request failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Something went wrong",
                        "The error was logged. Try again; if it persists, check sigma-api's log.",
                    )
                }
            },
        };
        // Internal failures are logged above; their text (SQL, paths) is not shown.
        let message = match &self {
            WebError::Store(
                sigma_store::Error::Db(_)
                | sigma_store::Error::Corrupt(_)
                | sigma_store::Error::Migrate(_)
                | sigma_store::Error::Config(_),
            ) => String::new(),
            other => other.to_string(),
        };
        let body = html! {
            h1 { (title) }
            @if !message.is_empty() { p.error-message { (message) } }
            p { (advice) }
            p { a href="/" { "Overview" } " · " a href="/vps" { "VPS list" } }
        };
        (status, layout::bare(title, body)).into_response()
    }
}

/// The console's result.
pub type WebResult<T> = Result<T, WebError>;

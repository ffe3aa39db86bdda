//! The one error type of sigmactl's library, and the exit code each kind maps to.

use std::fmt;
use std::path::PathBuf;

use sigma_types::ErrorBody;

/// Exit code of a successful command.
pub const EXIT_OK: u8 = 0;
/// Exit code of a command that failed (API error, network error, bad configuration, …).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line that cannot be carried out as written (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

/// Result of sigmactl's library functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in sigmactl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something that cannot be done as written (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration (flags, environment, config file) is wrong or incomplete.
    #[error("{0}")]
    Config(String),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed (a closed pipe is not reported; see [`Error::is_broken_pipe`]).
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// An input file (mesh settings, routes) could not be parsed.
    #[error("{source_name}: {message}")]
    Input {
        /// The file name, or `-` for standard input, or the flag the text came from.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// sigma-api could not be reached at all.
    #[error(
        "could not reach sigma-api at {url}: {cause}\n\
         Check --api-url (or SIGMA_API_URL, or the profile's api_url) and that sigma-api is running there."
    )]
    Network {
        /// The URL of the request.
        url: String,
        /// The cause, e.g. `connection refused`.
        cause: String,
    },
    /// sigma-api answered with an error status.
    #[error("{0}")]
    Api(ApiError),
    /// sigma-api answered something that is not what its API promises.
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    Protocol {
        /// The URL of the request.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// A name given on the command line matches nothing.
    #[error("{0}")]
    NotFound(String),
    /// A name given on the command line matches several things.
    #[error("{0}")]
    Ambiguous(String),
    /// sigma-api lacks an endpoint the command needs (it answered 404 for the route).
    #[error(
        "sigma-api at {api_url} does not serve {endpoint}: it is older than this sigmactl; upgrade sigma-api"
    )]
    Unsupported {
        /// sigma-api's URL.
        api_url: String,
        /// The missing endpoint, e.g. `GET /api/agent/istio-bootstrap`.
        endpoint: String,
    },
    /// A file or directory the command would write is unsafe or unusable as it is.
    #[error("{0}")]
    Refused(String),
    /// An error with what the command was doing when it happened.
    #[error("{context}: {source}")]
    Context {
        /// What was being done (`no bootstrap bundle for edge-1.example.net`).
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
    /// Checks ran and some failed (`mesh doctor`); the details were printed already.
    #[error("{0}")]
    Checks(String),
}

impl Error {
    /// The process exit code for this error: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Context { source, .. } => source.exit_code(),
            _ => EXIT_FAILURE,
        }
    }

    /// Whether this is a write to a closed pipe (`sigmactl vps list | head`), which is not a
    /// failure worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The HTTP status, when sigma-api answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(e) => Some(e.status),
            Error::Context { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The error with what was being done when it happened.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// An error answer of sigma-api, with what is needed to explain it to a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The error body sigma-api sent (or one made up from the status, if it sent none).
    pub body: ErrorBody,
    /// Where the API key of the request came from (`SIGMA_API_KEY`, a file, a profile).
    pub key_source: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.body.message;
        match self.status {
            401 => write!(
                f,
                "unauthorized (HTTP 401): {m}\nCheck your API key (it came from {}): it may be mistyped, revoked or expired.",
                self.key_source
            ),
            403 => write!(
                f,
                "forbidden (HTTP 403): {m}\nYour key's role may not do this; use a key with a role that may (admin keys may do everything)."
            ),
            404 => write!(f, "not found (HTTP 404): {m}"),
            409 => write!(f, "conflict (HTTP 409): {m}"),
            413 => write!(f, "request too large (HTTP 413): {m}"),
            415 => write!(f, "unsupported media type (HTTP 415): {m}"),
            422 => {
                write!(f, "invalid input (HTTP 422): {m}")?;
                for (field, reason) in &self.body.fields {
                    write!(f, "\n  {field}: {reason}")?;
                }
                Ok(())
            }
            503 => write!(
                f,
                "sigma-api is unavailable (HTTP 503): {m}\nTry again shortly; if it persists, check sigma-api's database and log."
            ),
            s if s >= 500 => write!(
                f,
                "sigma-api failed (HTTP {s}): {m}\nTry again; if it persists, see sigma-api's log."
            ),
            s => write!(f, "HTTP {s}: {m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn api(status: u16, message: &str, fields: &[(&str, &str)]) -> Error {
        Error::Api(ApiError {
            status,
            body: ErrorBody {
                error: "x".into(),
                message: message.into(),
                fields: fields
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            },
            key_source: "SIGMA_API_KEY".into(),
        })
    }

    #[test]
    fn messages_explain_each_status() {
        let e = api(401, "unknown key", &[]).to_string();
        assert!(
            e.contains("Check your API key") && e.contains("SIGMA_API_KEY"),
            "{e}"
        );
        let e = api(403, "a readonly key may not do this", &[]).to_string();
        assert!(e.contains("role may not") && e.contains("readonly"), "{e}");
        let e = api(
            422,
            "invalid hostname, country",
            &[("hostname", "bad"), ("country", "unknown")],
        )
        .to_string();
        assert!(e.contains("\n  country: unknown\n  hostname: bad"), "{e}");
        assert!(
            api(500, "boom", &[])
                .to_string()
                .contains("sigma-api's log")
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(api(404, "x", &[]).exit_code(), EXIT_FAILURE);
        assert_eq!(Error::Config("x".into()).exit_code(), EXIT_FAILURE);
        assert_eq!(
            Error::Usage("x".into()).context("doing y").exit_code(),
            EXIT_USAGE
        );
        let e = api(409, "mesh off", &[]).context("no bundle for h");
        assert_eq!(e.status(), Some(409));
        assert_eq!(
            e.to_string(),
            "no bundle for h: conflict (HTTP 409): mesh off"
        );
        assert!(
            Error::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).is_broken_pipe()
        );
    }
}

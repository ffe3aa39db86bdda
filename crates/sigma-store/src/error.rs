//! The storage layer's error type.

use sigma_types::FieldErrors;

/// What can go wrong in the storage layer. The API layer maps each kind to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input broke a rule that needs the database to check (an unknown purpose, …).
    #[error("invalid input")]
    Invalid(FieldErrors),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (a name taken, a lifecycle rule).
    #[error("{0}")]
    Conflict(String),
    /// The credentials are missing, unknown, revoked or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// The credentials are valid but do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The database could not be reached or did not answer in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database URL or another setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(e)
            }
            sqlx::Error::Database(ref d)
                if d.message().contains("database is locked") || d.message().contains("busy") =>
            {
                Error::Unavailable(e)
            }
            e => Error::Db(e),
        }
    }
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let mut e = FieldErrors::new();
        e.add(field, reason);
        Error::Invalid(e)
    }
}

impl From<FieldErrors> for Error {
    fn from(e: FieldErrors) -> Self {
        Error::Invalid(e)
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The storage layer's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Connections, schema migrations and a small SQL builder shared by both backends.
//!
//! Both backends go through sqlx's `Any` driver with one set of queries. To stay portable the
//! schema uses only text and 64-bit integers: times are Unix milliseconds, JSON is text, flags are
//! 0/1 (the `Any` driver cannot decode SQLite booleans). Placeholders are `$N`, which both
//! PostgreSQL and SQLite understand.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Executor};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Which database sits behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file in WAL mode.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Pools for one database. SQLite allows one writer at a time, so writes go through a pool of
/// one connection (queueing in-process instead of spinning on `SQLITE_BUSY`) while reads use
/// several; PostgreSQL uses one pool for both.
#[derive(Clone, Debug)]
pub struct Pools {
    pub(crate) read: AnyPool,
    pub(crate) write: AnyPool,
    pub(crate) backend: Backend,
}

/// Settings for [`Pools::connect`].
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// `sqlite://PATH`, `sqlite:PATH` or `postgres://…`.
    pub url: String,
    /// Largest number of connections (PostgreSQL) or reader connections (SQLite).
    pub max_connections: u32,
    /// How long a request waits for a free connection.
    pub acquire_timeout: Duration,
}

impl Pools {
    /// Opens the database (creating an SQLite file if needed) and applies the schema.
    pub async fn connect(s: &ConnectSettings) -> Result<Pools> {
        sqlx::any::install_default_drivers();
        let url = s.url.trim();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Config(
                "database URL must start with sqlite: or postgres://".into(),
            ));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let opts = AnyConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("database URL: {e}")))?;
        let pools = match backend {
            Backend::Sqlite => {
                let pool = |n: u32, writer: bool| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .min_connections(1)
                        .acquire_timeout(s.acquire_timeout)
                        .after_connect(move |conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                                )
                                .await?;
                                if writer {
                                    // Heartbeat batches touch rows all over the table; a larger
                                    // page cache for the one writer keeps them in memory.
                                    conn.execute("PRAGMA cache_size = -65536").await?;
                                }
                                Ok(())
                            })
                        })
                        .connect_with(opts.clone())
                };
                // The writer first, so the file exists and is in WAL mode before readers open it.
                let write = pool(1, true).await?;
                let read = pool(s.max_connections.max(1), false).await?;
                Pools {
                    read,
                    write,
                    backend,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(s.max_connections.max(2))
                    .acquire_timeout(s.acquire_timeout)
                    .connect_with(opts)
                    .await?;
                Pools {
                    read: pool.clone(),
                    write: pool,
                    backend,
                }
            }
        };
        pools.migrate().await?;
        Ok(pools)
    }

    async fn migrate(&self) -> Result<()> {
        // sqlx takes an advisory lock on PostgreSQL, so replicas starting together apply the
        // schema once.
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.write)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.write)
                    .await?
            }
        }
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (after the last flush).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// A bind value; the `Any` driver supports only a few types, all of them covered here.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::I64(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<uuid::Uuid> for Arg {
    fn from(v: uuid::Uuid) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<Option<uuid::Uuid>> for Arg {
    fn from(v: Option<uuid::Uuid>) -> Self {
        Arg::Text(v.map(|u| u.to_string()))
    }
}

/// SQL text with numbered placeholders and their values, for queries built at run time.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sql {
    pub(crate) text: String,
    args: Vec<Arg>,
    /// Use `?` instead of `$N`. SQLite looks named parameters up in a linear list, so binding
    /// thousands of `$N` costs O(n²) (it was 70% of a heartbeat batch's time); plain `?`
    /// parameters bind in order at no lookup cost. PostgreSQL only knows `$N`.
    anonymous: bool,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
            anonymous: false,
        }
    }

    /// A builder for statements with many parameters, using the backend's cheapest form.
    pub(crate) fn bulk(backend: Backend, text: &str) -> Self {
        Sql {
            anonymous: backend == Backend::Sqlite,
            ..Sql::new(text)
        }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder for `v`.
    pub(crate) fn bind(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.args.push(v.into());
        if self.anonymous {
            self.text.push('?');
        } else {
            self.text.push('$');
            self.text.push_str(&self.args.len().to_string());
        }
        self
    }

    /// Appends another fragment, renumbering its placeholders after this one's.
    pub(crate) fn push_sql(&mut self, other: &Sql) -> &mut Self {
        debug_assert!(!self.anonymous && !other.anonymous);
        let base = self.args.len();
        let mut out = String::with_capacity(other.text.len());
        let mut chars = other.text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                match n.parse::<usize>() {
                    Ok(n) => out.push_str(&format!("${}", n + base)),
                    Err(_) => out.push('$'),
                }
            } else {
                out.push(c);
            }
        }
        self.text.push_str(&out);
        self.args.extend(other.args.iter().cloned());
        self
    }

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// Now, as stored: Unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

/// A time as stored.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A stored time.
pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_renumbered() {
        let mut f = Sql::new(" WHERE a = ");
        f.bind(1i64).push(" AND b = ").bind("x");
        let mut q = Sql::new("SELECT 1 WHERE c = ");
        q.bind(2i64).push_sql(&f);
        assert_eq!(q.text, "SELECT 1 WHERE c = $1 WHERE a = $2 AND b = $3");
        assert_eq!(q.args.len(), 3);
    }

    #[test]
    fn bulk_statements_use_anonymous_parameters_on_sqlite() {
        let mut q = Sql::bulk(Backend::Sqlite, "VALUES ");
        q.bind(1i64).push(", ").bind(2i64);
        assert_eq!(q.text, "VALUES ?, ?");
        let mut q = Sql::bulk(Backend::Postgres, "VALUES ");
        q.bind(1i64).push(", ").bind(2i64);
        assert_eq!(q.text, "VALUES $1, $2");
    }
}

//! A fresh database for each test, SQLite or PostgreSQL.
//!
//! PostgreSQL uses `SIGMA_TEST_POSTGRES_URL` (a server URL whose user may create databases);
//! each [`TestDb`] is a new database on it. When the variable is unset the PostgreSQL variants
//! are skipped with a note, unless `SIGMA_TEST_REQUIRE_POSTGRES=1` (set by the test command
//! and CI), which turns a missing server into a failure.

use std::path::PathBuf;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A file in the test's directory.
    Sqlite,
    /// A fresh database on `SIGMA_TEST_POSTGRES_URL`'s server.
    Postgres,
}

/// A database for one test, and a directory for its files (the SQLite file, kubeconfigs, a
/// server's working directory).
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Which backend.
    pub backend: Backend,
    /// The connection URL (`sqlite://…` or `postgres://…/<fresh database>`).
    pub url: String,
    /// The test's directory.
    pub dir: PathBuf,
}

impl TestDb {
    /// A fresh database; `None` when PostgreSQL is asked for but not configured (and not
    /// required).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let dir = crate::temp_dir("test");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.join("sigma.db").display()),
            Backend::Postgres => postgres_database().await?,
        };
        Some(TestDb { backend, url, dir })
    }

    /// A fresh SQLite database (never skipped).
    pub async fn sqlite() -> TestDb {
        TestDb::new(Backend::Sqlite).await.expect("SQLite")
    }
}

/// The URL of a new, empty database on `SIGMA_TEST_POSTGRES_URL`'s server; `None` (with a
/// note) when the variable is unset, a failure instead when `SIGMA_TEST_REQUIRE_POSTGRES=1`.
pub async fn postgres_database() -> Option<String> {
    let Ok(base) = std::env::var("SIGMA_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("SIGMA_TEST_REQUIRE_POSTGRES").as_deref(),
            Ok("1"),
            "SIGMA_TEST_REQUIRE_POSTGRES=1 but SIGMA_TEST_POSTGRES_URL is unset"
        );
        eprintln!("note: SIGMA_TEST_POSTGRES_URL unset; PostgreSQL variant skipped");
        return None;
    };
    let name = crate::unique("sigma");
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (head, _) = base.rsplit_once('/').expect("URL with a database path");
    Some(format!("{head}/{name}"))
}

/// A `sigma_store::Store` on `db`, migrated, with [`crate::ADMIN_KEY`] as its admin key.
#[cfg(feature = "store")]
pub async fn open_store(db: &TestDb) -> sigma_store::Store {
    let store = sigma_store::Store::open(
        &sigma_store::ConnectSettings {
            url: db.url.clone(),
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(30),
        },
        sigma_store::StoreSettings::default(),
    )
    .await
    .expect("open store");
    store
        .bootstrap_admin(Some(crate::ADMIN_KEY))
        .await
        .expect("admin key");
    store
}

/// Runs each named scenario (`async fn name(db: TestDb)`) once on SQLite and once on
/// PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::TestDb::new($crate::Backend::Postgres).await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

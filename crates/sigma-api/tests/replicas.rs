//! Several sigma-api replicas on one PostgreSQL database, as `k8s/base` runs them (the real
//! binary, one process per replica): replicas starting together apply the migrations once under
//! PostgreSQL's advisory lock and end with the schema a lone replica makes, and a revocation or
//! a retire made on one replica reaches agents served by another within
//! `--change-poll-interval` (README "Heartbeats", `docs/security.md`).
//!
//! PostgreSQL only (SQLite serves one replica): `SIGMA_TEST_POSTGRES_URL`, a fresh database per
//! test; skipped without it unless `SIGMA_TEST_REQUIRE_POSTGRES=1`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, Backend, SigmaApi, TestDb};
use sqlx::Row;

/// The migrations sigma-store ships for PostgreSQL, by version.
fn shipped_migrations() -> Vec<i64> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sigma-store/migrations/postgres");
    let mut v: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.split_once('_')?.0.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// The schema of a database as comparable text: every column (type, nullability, default),
/// index and constraint of the `public` schema.
async fn schema(url: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let mut out = Vec::new();
    for (what, q) in [
        (
            "column",
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' nullable=' || is_nullable \
             || ' default=' || coalesce(column_default, '-') AS s \
             FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
        ),
        (
            "index",
            "SELECT indexdef AS s FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        ),
        (
            "constraint",
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) AS s \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        ),
    ] {
        for row in sqlx::query(q).fetch_all(&pool).await.expect(what) {
            out.push(format!("{what} {}", row.get::<String, _>("s")));
        }
    }
    pool.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_the_migrations_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // Three processes started at the same instant on the fresh database.
    const N: usize = 3;
    let barrier = Arc::new(Barrier::new(N));
    let starts: Vec<_> = (0..N)
        .map(|_| {
            let barrier = barrier.clone();
            let db = db.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let spawned = Instant::now();
                let server = SigmaApi::builder().store(&db).start();
                (spawned, Instant::now(), server)
            })
        })
        .collect();
    let started: Vec<(Instant, Instant, SigmaApi)> = starts
        .into_iter()
        .map(|h| h.join().expect("a replica failed to start"))
        .collect();
    // They really raced: every one was spawned before any was listening (the schema was
    // made while all three were starting).
    let last_spawn = started.iter().map(|s| s.0).max().unwrap();
    let first_up = started.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_spawn < first_up,
        "the replicas did not start together (one was up {:?} before the last was spawned)",
        last_spawn - first_up
    );
    eprintln!(
        "{N} replicas spawned within {:?}, first listening {:?} after the last spawn",
        started.iter().map(|s| s.0).max().unwrap() - started.iter().map(|s| s.0).min().unwrap(),
        first_up - last_spawn
    );

    // All serve, on one shared state: a write through one is read through every other.
    for (i, (_, _, s)) in started.iter().enumerate() {
        let (st, v) = s.get("/readyz", ADMIN_KEY).await;
        assert_eq!(st, 200, "replica {i}: {v}");
        let (st, v) = s
            .post(
                "/api/providers",
                ADMIN_KEY,
                json!({"name": format!("provider-{i}")}),
            )
            .await;
        assert_eq!(st, 201, "replica {i}: {v}");
    }
    for (i, (_, _, s)) in started.iter().enumerate() {
        let (st, v) = s.get("/api/providers", ADMIN_KEY).await;
        assert_eq!(st, 200, "{v}");
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for j in 0..N {
            assert!(
                names.contains(&format!("provider-{j}").as_str()),
                "replica {i} lacks provider-{j}: {names:?}"
            );
        }
    }

    // Each migration applied once, successfully.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let applied: Vec<(i64, bool)> = rows
        .iter()
        .map(|r| (r.get("version"), r.get("success")))
        .collect();
    let want: Vec<(i64, bool)> = shipped_migrations()
        .into_iter()
        .map(|v| (v, true))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(applied, want, "_sqlx_migrations");

    // The schema is exactly the one a lone replica makes on another fresh database.
    let alone = TestDb::new(Backend::Postgres).await.unwrap();
    SigmaApi::builder().store(&alone).start().stop();
    let (together, reference) = (schema(&db.url).await, schema(&alone.url).await);
    assert!(together.len() > 10, "{together:?}");
    assert_eq!(together, reference, "schema after a concurrent start");
    // Control of the comparison: one index less is seen.
    let pool = sqlx::PgPool::connect(&alone.url).await.unwrap();
    let index: String = sqlx::query(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' \
         AND indexname NOT IN (SELECT conname FROM pg_constraint) ORDER BY 1 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("indexname");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {index}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_ne!(
        schema(&alone.url).await,
        together,
        "control: dropping index {index} must show in the schema comparison"
    );
}

fn replica(db: &TestDb, poll: &str) -> SigmaApi {
    SigmaApi::builder()
        .store(db)
        .envs(vec![
            ("SIGMA_CHANGE_POLL_INTERVAL".into(), poll.into()),
            ("SIGMA_HEARTBEAT_FLUSH_INTERVAL".into(), "200ms".into()),
        ])
        .start()
}

async fn register(s: &SigmaApi, token: &str, hostname: &str) -> (String, String) {
    let (st, v) = s
        .post(
            "/api/agent/register",
            token,
            json!({"hostname": hostname, "ip_addresses": [{"ip": "192.0.2.10", "label": "public"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    (
        v["agent_key"].as_str().expect("agent key").to_string(),
        v["vps"]["id"].as_str().unwrap().to_string(),
    )
}

async fn heartbeat(s: &SigmaApi, key: &str, hostname: &str) -> (u16, Value) {
    s.post("/api/agent/heartbeat", key, json!({"hostname": hostname}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_or_retire_on_one_replica_reaches_agents_of_another_within_the_poll_interval()
{
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    const POLL: Duration = Duration::from_secs(1);
    let a = replica(&db, "1s");
    let b = replica(&db, "1s");
    // Control: a replica polling once an hour. It must still act on what it cached when B no
    // longer does, which shows that B learnt the change from its poll (not from reading the
    // database on every request, which would pass this test whatever the poller did).
    let c = replica(&db, "1h");

    a.post("/api/providers", ADMIN_KEY, json!({"name": "netcup"}))
        .await;
    let token = a
        .token(json!({"purpose": "xrayr", "provider": "netcup", "country": "DE", "max_uses": 2}))
        .await;
    let (revoked_key, _) = register(&a, &token, "revoked.example.net").await;
    let (retired_key, retired_id) = register(&a, &token, "retired.example.net").await;
    // B and C serve both agents (and so hold their keys and VPS in their caches).
    for s in [&b, &c] {
        let (st, v) = heartbeat(s, &revoked_key, "revoked.example.net").await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = heartbeat(s, &retired_key, "retired.example.net").await;
        assert_eq!((st, v["status"].as_str()), (200, Some("active")), "{v}");
    }

    // On A: revoke one agent's key, retire the other's VPS.
    let (_, keys) = a.get("/api/api-keys?limit=500", ADMIN_KEY).await;
    let key_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| revoked_key.starts_with(k["prefix"].as_str().unwrap_or("-")))
        .unwrap_or_else(|| panic!("the agent key in the list: {keys}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = a
        .post(
            &format!("/api/api-keys/{key_id}/revoke"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = a
        .post(
            &format!("/api/vps/{retired_id}/retire"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let changed = Instant::now();
    // On A at once.
    assert_eq!(
        heartbeat(&a, &revoked_key, "revoked.example.net").await.0,
        401
    );
    assert_eq!(
        heartbeat(&a, &retired_key, "retired.example.net").await.1["status"],
        "retiring"
    );

    // On B within the poll interval (plus slack for a loaded machine: the bound checked is
    // the interval's order, the measured delay is printed).
    let deadline = changed + POLL + Duration::from_secs(3);
    let (mut revoked_at, mut retired_at) = (None, None);
    while revoked_at.is_none() || retired_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "B did not see the change within {:?}: revocation {revoked_at:?}, retire {retired_at:?}",
            deadline - changed
        );
        if revoked_at.is_none() && heartbeat(&b, &revoked_key, "revoked.example.net").await.0 == 401
        {
            revoked_at = Some(changed.elapsed());
        }
        if retired_at.is_none()
            && heartbeat(&b, &retired_key, "retired.example.net").await.1["status"] == "retiring"
        {
            retired_at = Some(changed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "replica B (poll {POLL:?}): revocation seen after {:?}, retire after {:?}",
        revoked_at.unwrap(),
        retired_at.unwrap()
    );

    // The control: C has not polled since, so it still serves its cached view.
    let (st, v) = heartbeat(&c, &revoked_key, "revoked.example.net").await;
    assert_eq!(
        st, 200,
        "control: C (poll 1h) still accepts the key it cached: {v}"
    );
    let (st, v) = heartbeat(&c, &retired_key, "retired.example.net").await;
    assert_eq!(
        (st, v["status"].as_str()),
        (200, Some("active")),
        "control: C (poll 1h) still has the VPS active: {v}"
    );
}

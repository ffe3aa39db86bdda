//! The console's store queries over migration 0009, on SQLite and on PostgreSQL: the mesh facts
//! the heartbeat flush keeps in columns (and their backfill from reports stored before), the
//! overview's counts and the list's filters over them, and the indexed text search.
//!
//! PostgreSQL uses `SIGMA_TEST_POSTGRES_URL` (skipped when unset, unless
//! `SIGMA_TEST_REQUIRE_POSTGRES=1`).

use std::borrow::Cow;
use std::time::Duration;

use serde_json::json;
use sigma_store::console::{ConsoleFilter, MeshAttention, VpsSort};
use sigma_store::{ConnectSettings, Principal, Store, StoreSettings};
use sigma_types::{HeartbeatRequest, IpAddress, Role, VpsCreate, VpsPatch, VpsQuery};
use sqlx::{AnyPool, Row};
use uuid::Uuid;

async fn database(postgres: bool) -> Option<String> {
    let tag = format!(
        "sigma_console_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    if !postgres {
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        return Some(format!("sqlite://{}?mode=rwc", dir.join("s.db").display()));
    }
    let Ok(base) = std::env::var("SIGMA_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("SIGMA_TEST_REQUIRE_POSTGRES").as_deref(),
            Ok("1"),
            "SIGMA_TEST_REQUIRE_POSTGRES=1 but SIGMA_TEST_POSTGRES_URL is unset"
        );
        eprintln!("note: SIGMA_TEST_POSTGRES_URL unset; PostgreSQL variant skipped");
        return None;
    };
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {tag}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (head, _) = base.rsplit_once('/').unwrap();
    Some(format!("{head}/{tag}"))
}

async fn open(url: &str) -> Store {
    Store::open(
        &ConnectSettings {
            url: url.to_string(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        },
        StoreSettings::default(),
    )
    .await
    .expect("open store")
}

fn vps(hostname: &str, alias: Option<&str>, city: Option<&str>, ip: &str) -> VpsCreate {
    VpsCreate {
        hostname: hostname.into(),
        alias: alias.map(String::from),
        provider: None,
        ip_addresses: vec![IpAddress {
            ip: ip.into(),
            label: "public".into(),
        }],
        country: Some("DE".into()),
        city: city.map(String::from),
        purpose: "xrayr".into(),
        status: Some(sigma_types::VpsStatus::Active),
        tags: vec![],
        monitoring: true,
        node_exporter_port: 9100,
        mesh_opt_out: false,
    }
}

fn agent(id: Uuid) -> Principal {
    Principal {
        key_id: Uuid::nil(),
        prefix: "test".into(),
        role: Role::Agent,
        vps_id: Some(id),
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn beat(hostname: &str, agent_state: serde_json::Value) -> HeartbeatRequest {
    serde_json::from_value(json!({"hostname": hostname, "agent_state": agent_state})).unwrap()
}

async fn hostnames(store: &Store, q: &VpsQuery, f: &ConsoleFilter) -> Vec<String> {
    let list = store
        .list_vps_console(q, f, VpsSort::Hostname, false)
        .await
        .unwrap();
    let names: Vec<String> = list.items.into_iter().map(|v| v.hostname).collect();
    assert_eq!(list.total, names.len() as i64, "total agrees with the page");
    names
}

fn search(text: &str) -> VpsQuery {
    VpsQuery {
        q: Some(text.into()),
        ..VpsQuery::default()
    }
}

async fn mesh_facts_and_search(postgres: bool) {
    let Some(url) = database(postgres).await else {
        return;
    };
    let store = open(&url).await;
    let a = store
        .create_vps(
            "t",
            &vps(
                "alpha.example.net",
                Some("Front Door"),
                Some("Berlin"),
                "203.0.113.7",
            ),
        )
        .await
        .unwrap();
    let b = store
        .create_vps(
            "t",
            &vps("beta.example.net", None, Some("Helsinki"), "198.51.100.20"),
        )
        .await
        .unwrap();
    let c = store
        .create_vps(
            "t",
            &vps("gamma.test", Some("100%_sure \"q\""), None, "192.0.2.1"),
        )
        .await
        .unwrap();
    let now = now_ms();
    let hour = 3_600_000;
    // alpha: degraded proxy, certificate 1 h left, token 2 min left.
    store
        .heartbeat(
            &agent(a.id),
            &beat(
                &a.hostname,
                json!({"mode": "mesh", "mesh_state": {"state": "degraded",
                    "cert_expires_at": rfc3339(now + hour), "token_expires_at": rfc3339(now + 120_000)}}),
            ),
        )
        .await
        .unwrap();
    // beta: ready, a day left on both.
    store
        .heartbeat(
            &agent(b.id),
            &beat(
                &b.hostname,
                json!({"mode": "mesh", "mesh_state": {"state": "ready",
                    "cert_expires_at": rfc3339(now + 24 * hour), "token_expires_at": rfc3339(now + 24 * hour)}}),
            ),
        )
        .await
        .unwrap();
    // gamma: classic mode, nothing known.
    store
        .heartbeat(&agent(c.id), &beat(&c.hostname, json!({"mode": "classic"})))
        .await
        .unwrap();
    assert_eq!(store.flush().await.unwrap(), 3);

    let counts = store
        .mesh_attention(now + 6 * hour, now + 10 * 60_000)
        .await
        .unwrap();
    assert_eq!(
        (
            counts.proxies_not_ready,
            counts.certs_expiring,
            counts.tokens_expiring
        ),
        (1, 1, 1)
    );
    let all = VpsQuery::default();
    for attention in [
        MeshAttention::ProxyNotReady,
        MeshAttention::CertExpiresBefore(now + 6 * hour),
        MeshAttention::TokenExpiresBefore(now + 10 * 60_000),
    ] {
        let f = ConsoleFilter {
            attention: Some(attention),
            ..ConsoleFilter::default()
        };
        assert_eq!(
            hostnames(&store, &all, &f).await,
            ["alpha.example.net"],
            "{attention:?}"
        );
    }
    // A wider certificate window takes beta in; unknown (gamma) never counts.
    let wide = ConsoleFilter {
        attention: Some(MeshAttention::CertExpiresBefore(now + 48 * hour)),
        ..ConsoleFilter::default()
    };
    assert_eq!(
        hostnames(&store, &all, &wide).await,
        ["alpha.example.net", "beta.example.net"]
    );

    // alpha recovers and switches to classic mode: its facts become unknown; a heartbeat
    // without agent_state leaves beta's alone.
    store
        .heartbeat(&agent(a.id), &beat(&a.hostname, json!({"mode": "classic"})))
        .await
        .unwrap();
    store
        .heartbeat(
            &agent(b.id),
            &serde_json::from_value(json!({"hostname": b.hostname})).unwrap(),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    let counts = store
        .mesh_attention(now + 48 * hour, now + 48 * hour)
        .await
        .unwrap();
    assert_eq!(
        (
            counts.proxies_not_ready,
            counts.certs_expiring,
            counts.tokens_expiring
        ),
        (0, 1, 1),
        "beta's facts stay, alpha's are gone"
    );

    // Search: a case-insensitive substring of hostname, alias, city or address; short
    // searches (scanned on SQLite) mean the same; LIKE and FTS syntax is plain text.
    for (text, want) in [
        ("ALPHA", vec!["alpha.example.net"]),
        ("example", vec!["alpha.example.net", "beta.example.net"]),
        ("front door", vec!["alpha.example.net"]),
        ("elsin", vec!["beta.example.net"]),
        ("198.51.100", vec!["beta.example.net"]),
        ("100%_", vec!["gamma.test"]),
        ("\"q\"", vec!["gamma.test"]),
        ("%", vec!["gamma.test"]),
        ("ta", vec!["beta.example.net"]),
        ("a.e", vec!["alpha.example.net", "beta.example.net"]),
        ("nowhere", vec![]),
        ("net Front", vec![]),
    ] {
        assert_eq!(
            hostnames(&store, &search(text), &ConsoleFilter::default()).await,
            want,
            "search {text:?}"
        );
    }
    // The index follows edits and deletions.
    store
        .update_vps(
            "t",
            b.id,
            &VpsPatch {
                hostname: Some(Some("delta.example.org".into())),
                ..VpsPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        hostnames(&store, &search("delta.ex"), &ConsoleFilter::default()).await,
        ["delta.example.org"]
    );
    assert!(
        hostnames(&store, &search("beta.ex"), &ConsoleFilter::default())
            .await
            .is_empty()
    );
    store.delete_vps("t", c.id).await.unwrap();
    assert!(
        hostnames(&store, &search("gamma"), &ConsoleFilter::default())
            .await
            .is_empty()
    );
    // Combined with another filter.
    let q = VpsQuery {
        q: Some("example".into()),
        country: Some("DE".into()),
        ..VpsQuery::default()
    };
    assert_eq!(
        hostnames(&store, &q, &ConsoleFilter::default()).await,
        ["alpha.example.net", "delta.example.org"]
    );
    store.close().await;
}

#[tokio::test]
async fn mesh_facts_and_search_sqlite() {
    mesh_facts_and_search(false).await;
}

#[tokio::test]
async fn mesh_facts_and_search_postgres() {
    mesh_facts_and_search(true).await;
}

/// A row's hostname and mesh facts.
type Facts = (String, Option<String>, Option<i64>, Option<i64>);

/// 0009 fills the new columns from the reports stored before it, and indexes the VPS that
/// exist for search.
async fn backfill(postgres: bool) {
    let Some(url) = database(postgres).await else {
        return;
    };
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&url).await.unwrap();
    let mut m = if postgres {
        sqlx::migrate!("./migrations/postgres")
    } else {
        sqlx::migrate!("./migrations/sqlite")
    };
    let before: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version < 9)
        .cloned()
        .collect();
    assert_eq!(before.len(), 8);
    m.migrations = Cow::Owned(before);
    m.run(&pool).await.unwrap();
    for (id, host, state) in [
        (
            "00000000-0000-4000-8000-000000000001",
            "mesh-1.example.net",
            Some(
                r#"{"mode":"mesh","mesh_state":{"state":"starting","token_expires_at":"2026-12-05T10:00:00.25Z","cert_expires_at":"2026-12-05T12:30:00+01:00","restarts":0}}"#,
            ),
        ),
        (
            "00000000-0000-4000-8000-000000000002",
            "classic-1.example.net",
            Some(r#"{"mode":"classic","envoy_applied_version":3}"#),
        ),
        (
            "00000000-0000-4000-8000-000000000003",
            "quiet-1.example.net",
            None,
        ),
    ] {
        sqlx::query(
            "INSERT INTO vps (id, hostname, purpose, status, agent_state, created_at, updated_at) \
             VALUES ($1, $2, 'xrayr', 'active', $3, 1, 1)",
        )
        .bind(id)
        .bind(host)
        .bind(state)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = open(&url).await;
    let pool = AnyPool::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT hostname, mesh_proxy, mesh_cert_expires_at, mesh_token_expires_at FROM vps ORDER BY hostname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: Vec<Facts> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("hostname").unwrap(),
                r.try_get("mesh_proxy").unwrap(),
                r.try_get("mesh_cert_expires_at").unwrap(),
                r.try_get("mesh_token_expires_at").unwrap(),
            )
        })
        .collect();
    let ms = |s: &str| {
        (time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos()
            / 1_000_000) as i64
    };
    assert_eq!(
        got,
        vec![
            ("classic-1.example.net".into(), None, None, None),
            (
                "mesh-1.example.net".into(),
                Some("starting".into()),
                Some(ms("2026-12-05T11:30:00Z")),
                Some(ms("2026-12-05T10:00:00.25Z")),
            ),
            ("quiet-1.example.net".into(), None, None, None),
        ]
    );
    pool.close().await;
    assert_eq!(
        hostnames(&store, &search("ssic-1"), &ConsoleFilter::default()).await,
        ["classic-1.example.net"],
        "rows from before 0009 are searchable"
    );
    // A VPS created afterwards gets the next search key.
    store
        .create_vps("t", &vps("new-1.example.net", None, None, "192.0.2.9"))
        .await
        .unwrap();
    assert_eq!(
        hostnames(&store, &search("-1.example"), &ConsoleFilter::default()).await,
        [
            "classic-1.example.net",
            "mesh-1.example.net",
            "new-1.example.net",
            "quiet-1.example.net"
        ]
    );
    store.close().await;
}

#[tokio::test]
async fn backfill_sqlite() {
    backfill(false).await;
}

#[tokio::test]
async fn backfill_postgres() {
    backfill(true).await;
}

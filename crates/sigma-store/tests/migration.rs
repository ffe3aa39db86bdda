//! Migration 0005 (enrollment presets by reference) converts the tokens stored before it, on
//! SQLite and on PostgreSQL: a provider preset becomes the provider's id, a purpose preset its
//! reference, and a live token whose preset designates nothing any more (its provider renamed
//! or deleted before) is revoked, with an audit entry, keeping the name it had.
//!
//! PostgreSQL uses `SIGMA_TEST_POSTGRES_URL` (skipped when unset, unless
//! `SIGMA_TEST_REQUIRE_POSTGRES=1`).

use std::borrow::Cow;
use std::time::Duration;

use sigma_store::{ConnectSettings, Store, StoreSettings};
use sqlx::AnyPool;

async fn database(postgres: bool) -> Option<String> {
    let tag = format!(
        "sigma_mig_{}_{}",
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

async fn legacy_tokens_are_converted(postgres: bool) {
    let Some(url) = database(postgres).await else {
        return;
    };
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&url).await.unwrap();
    // The schema as it was before 0005.
    let mut m = if postgres {
        sqlx::migrate!("./migrations/postgres")
    } else {
        sqlx::migrate!("./migrations/sqlite")
    };
    let before: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version < 5)
        .cloned()
        .collect();
    assert_eq!(before.len(), 4);
    m.migrations = Cow::Owned(before);
    m.run(&pool).await.unwrap();
    for (id, name) in [("p-1", "Hetzner"), ("p-2", "like_target")] {
        sqlx::query(
            "INSERT INTO providers (id, name, name_key, created_at, updated_at) VALUES ($1, $2, $3, 1, 1)",
        )
        .bind(id)
        .bind(name)
        .bind(name.to_lowercase())
        .execute(&pool)
        .await
        .unwrap();
    }
    let far = 4_000_000_000_000i64;
    for (id, presets, revoked) in [
        // Looked up case-insensitively when it was made: still designates Hetzner.
        (
            "00000000-0000-4000-8000-000000000001",
            r#"{"purpose":"xrayr","provider":"hetzner","country":null,"tags":[]}"#,
            None,
        ),
        // Its provider was renamed: stranded, so revoked now.
        (
            "00000000-0000-4000-8000-000000000002",
            r#"{"purpose":null,"provider":"like-target","country":"DE","tags":["a"]}"#,
            None,
        ),
        // No provider preset.
        (
            "00000000-0000-4000-8000-000000000003",
            r#"{"purpose":"monitor","provider":null,"country":null,"tags":[]}"#,
            None,
        ),
        // Already revoked: left alone.
        (
            "00000000-0000-4000-8000-000000000004",
            r#"{"purpose":null,"provider":"gone","country":null,"tags":[]}"#,
            Some(5i64),
        ),
        // An unknown purpose (deleted by the old name match): revoked.
        (
            "00000000-0000-4000-8000-000000000005",
            r#"{"purpose":"deleted-one","provider":"like_target","country":null,"tags":[]}"#,
            None,
        ),
    ] {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, prefix, token_hash, name, presets, max_uses, created_by, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, 'x', 'legacy', $3, 1, 'test', 1, $4, $5)",
        )
        .bind(id)
        .bind(format!("sge_{}", &id[28..]))
        .bind(presets)
        .bind(far)
        .bind(revoked)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = Store::open(
        &ConnectSettings {
            url: url.clone(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        },
        StoreSettings::default(),
    )
    .await
    .expect("0005 applies over the old schema");
    let list = store.list_enrollment_tokens(100, 0).await.unwrap();
    let get = |n: u8| {
        list.items
            .iter()
            .find(|t| t.id.to_string().ends_with(&format!("{n:012}")))
            .unwrap()
            .clone()
    };
    let t1 = get(1);
    assert_eq!(t1.revoked_at, None);
    assert_eq!(
        t1.presets.provider.as_deref(),
        Some("Hetzner"),
        "now shown by its current name"
    );
    assert_eq!(t1.presets.purpose.as_deref(), Some("xrayr"));
    let t2 = get(2);
    assert!(t2.revoked_at.is_some(), "stranded token revoked");
    assert_eq!(
        t2.presets.provider.as_deref(),
        Some("like-target"),
        "keeps the name it had"
    );
    assert_eq!(t2.presets.tags, vec!["a".to_string()]);
    assert_eq!(get(3).revoked_at, None);
    assert_eq!(get(3).presets.purpose.as_deref(), Some("monitor"));
    assert_eq!(get(4).revoked_at.map(sigma_store::db::to_ms), Some(5));
    assert!(get(5).revoked_at.is_some());
    assert_eq!(get(5).presets.provider.as_deref(), Some("like_target"));
    let audit = store
        .list_audit(&sigma_types::AuditFilter {
            action: Some("enrollment_token.revoke".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = audit.items.iter().map(|a| a.resource_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![t2.id.to_string(), get(5).id.to_string()],
        "each revocation audited"
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_legacy_tokens_are_converted() {
    legacy_tokens_are_converted(false).await;
}

#[tokio::test]
async fn postgres_legacy_tokens_are_converted() {
    legacy_tokens_are_converted(true).await;
}

/// Migration 0007 (contracts, issue 20) adds the contract columns to VPS stored before it
/// (empty, not auto-renewed) and the exchange-rate table, on both backends.
async fn vps_before_0007_gain_an_empty_contract(postgres: bool) {
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
        .filter(|x| x.version < 7)
        .cloned()
        .collect();
    assert_eq!(before.len(), 6);
    m.migrations = Cow::Owned(before);
    m.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO vps (id, hostname, purpose, status, created_at, updated_at) \
         VALUES ('00000000-0000-4000-8000-000000000007', 'old.example', 'xrayr', 'active', 1, 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = Store::open(
        &ConnectSettings {
            url: url.clone(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        },
        StoreSettings::default(),
    )
    .await
    .expect("0007 applies over the old schema");
    let v = store
        .get_vps("00000000-0000-4000-8000-000000000007".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(v.contract, sigma_types::VpsContract::default());
    assert!(!v.contract.auto_renew);
    assert!(store.list_exchange_rates().await.unwrap().is_empty());
    let rate = sigma_types::Rate::parse("0.9").unwrap();
    store
        .set_exchange_rate("test", "USD", "EUR", rate)
        .await
        .unwrap();
    assert_eq!(store.list_exchange_rates().await.unwrap()[0].rate, rate);
    store.close().await;
}

#[tokio::test]
async fn sqlite_vps_before_0007_gain_an_empty_contract() {
    vps_before_0007_gain_an_empty_contract(false).await;
}

#[tokio::test]
async fn postgres_vps_before_0007_gain_an_empty_contract() {
    vps_before_0007_gain_an_empty_contract(true).await;
}

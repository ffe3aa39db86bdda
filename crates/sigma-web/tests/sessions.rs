//! Console sessions in the store, on both backends: sign-in, lookup, idle and absolute expiry,
//! key revocation, sign-out, and the audit entries. PostgreSQL runs when
//! `SIGMA_TEST_POSTGRES_URL` is set (required when `SIGMA_TEST_REQUIRE_POSTGRES=1`).

use std::time::Duration;

use sigma_store::sessions::SessionLimits;
use sigma_testkit::db::open_store;
use sigma_testkit::{ADMIN_KEY, TestDb, both_backends};
use sigma_types::{ApiKeyCreate, AuditFilter, Role};

both_backends!(lifecycle);

async fn lifecycle(db: TestDb) {
    let store = open_store(&db).await;
    let limits = SessionLimits::default();
    // A wrong key opens nothing; an agent-shaped refusal is covered by the role check.
    assert!(
        store
            .create_session("sgm_00000000_nope-0000000000000000000000000000000", limits)
            .await
            .is_err()
    );
    let s = store.create_session(ADMIN_KEY, limits).await.unwrap();
    let live = store.session(&s.id, limits).await.unwrap();
    assert_eq!(live.principal.role, Role::Admin);
    assert!(
        live.csrf_matches(&live.csrf_token) && !live.csrf_matches("") && !live.csrf_matches("x")
    );
    // Malformed and unknown ids are refused without a lookup error.
    assert!(matches!(
        store.session("zz", limits).await,
        Err(sigma_store::Error::Unauthorized(_))
    ));
    assert!(matches!(
        store.session(&"0".repeat(64), limits).await,
        Err(sigma_store::Error::Unauthorized(_))
    ));
    // Expiry: a zero idle or absolute limit ends the session.
    let idle0 = SessionLimits {
        idle: Duration::ZERO,
        ..limits
    };
    assert!(store.session(&s.id, idle0).await.is_err());
    let short = store
        .create_session(
            ADMIN_KEY,
            SessionLimits {
                absolute: Duration::ZERO,
                ..limits
            },
        )
        .await
        .unwrap();
    assert!(store.session(&short.id, limits).await.is_err());
    // Revoking the key ends its sessions.
    let k = store
        .create_api_key(
            "test",
            &ApiKeyCreate {
                name: "ops".into(),
                role: Role::Operator,
                vps_id: None,
                ttl_seconds: None,
            },
        )
        .await
        .unwrap();
    let ops = store.create_session(&k.key, limits).await.unwrap();
    assert_eq!(
        store.session(&ops.id, limits).await.unwrap().principal.role,
        Role::Operator
    );
    let admin = store.authenticate(ADMIN_KEY).await.unwrap();
    store.revoke_api_key(&admin, k.api_key.id).await.unwrap();
    assert!(store.session(&ops.id, limits).await.is_err());
    // Sign-out ends it for every reader of the database, and is audited.
    store.end_session(&s.id).await.unwrap();
    assert!(store.session(&s.id, limits).await.is_err());
    store.end_session(&s.id).await.unwrap();
    let audit = store
        .list_audit(&AuditFilter {
            resource_type: Some("session".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.items.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "session.create").count(),
        3,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "session.delete").count(),
        1,
        "{actions:?}"
    );
    // The id itself is never stored.
    assert!(audit.items.iter().all(|a| !a.resource_id.contains(&s.id)));
    store.close().await;
}

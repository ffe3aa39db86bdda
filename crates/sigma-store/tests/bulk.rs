//! The benchmark seeding path (`Store::seed_bench_fleet`) leaves what enrollments through the
//! API leave: VPS a sigma-api finds after a restart, keys that authenticate as their VPS, a
//! spread over purposes and providers, and a refusal to seed a hostname twice.

use sigma_store::bulk;
use sigma_testkit::db::open_store;
use sigma_testkit::{TestDb, both_backends};
use sigma_types::{Role, VpsQuery};

async fn seeded_fleet_is_an_enrolled_fleet(db: TestDb) {
    let store = open_store(&db).await;
    store.seed_bench_fleet(0, 250, 100).await.unwrap();
    // Appending more later reuses the providers.
    store.seed_bench_fleet(250, 300, 100).await.unwrap();

    // What a restarted sigma-api loads: every key (the admin's too) and every VPS.
    let (keys, vps) = store.warm_caches().await.unwrap();
    assert_eq!((keys, vps), (301, 300));

    let p = store.authenticate(&bulk::agent_key(7)).await.unwrap();
    assert_eq!(p.role, Role::Agent);
    let v = store.get_vps(p.vps_id.unwrap()).await.unwrap();
    assert_eq!(v.hostname, bulk::hostname(7));
    assert_eq!(v.purpose, bulk::purpose(7));
    assert_eq!(v.country.as_deref(), Some(bulk::country(7)));
    assert!(v.provider.is_some());
    assert!(
        store.authenticate(&bulk::agent_key(300)).await.is_err(),
        "a key of a VPS that was not seeded"
    );

    let xrayr = store
        .list_vps(&VpsQuery {
            purpose: Some("xrayr".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        xrayr.total,
        (0..300).filter(|&i| bulk::purpose(i) == "xrayr").count() as i64
    );
    let providers = store.list_providers(100, 0).await.unwrap();
    assert_eq!(providers.total, bulk::PROVIDERS as i64);

    assert_eq!(store.seeded_bench_fleet().await.unwrap(), 300);
    assert!(store.database_bytes().await.unwrap() > 100_000);

    let again = store.seed_bench_fleet(10, 11, 100).await;
    assert!(again.is_err(), "a hostname seeded twice: {again:?}");
    store.close().await;
}

both_backends!(seeded_fleet_is_an_enrolled_fleet);

//! The console's own store queries on both backends, which must answer identically: the fleet
//! summary of the overview, and the VPS list's sorting (stable, unset values placed the same
//! way) and mesh-state filter. PostgreSQL runs when `SIGMA_TEST_POSTGRES_URL` is set (required
//! when `SIGMA_TEST_REQUIRE_POSTGRES=1`).

use std::time::Duration;

use sigma_store::Store;
use sigma_store::console::VpsSort;
use sigma_testkit::db::open_store;
use sigma_testkit::{TestDb, both_backends};
use sigma_types::{MeshSyncStatus, VpsCreate, VpsQuery, VpsStatus};

both_backends!(console_queries);

fn vps(hostname: &str, country: Option<&str>, status: VpsStatus) -> VpsCreate {
    VpsCreate {
        hostname: hostname.into(),
        alias: None,
        provider: None,
        ip_addresses: vec![],
        country: country.map(String::from),
        city: None,
        purpose: "xrayr".into(),
        status: Some(status),
        tags: vec![],
        monitoring: true,
        node_exporter_port: 9100,
        mesh_opt_out: false,
    }
}

fn hostnames(l: &sigma_types::List<sigma_types::Vps>) -> Vec<&str> {
    l.items.iter().map(|v| v.hostname.as_str()).collect()
}

async fn console_queries(db: TestDb) {
    let store = open_store(&db).await;
    // Heartbeat times and mesh states are written by agents and the reconciler; here they are
    // set directly, as those writers leave them.
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&db.url)
        .await
        .expect("second connection");
    let now = sigma_store::db::now_ms();
    let rows = [
        (
            "a.example.net",
            Some("DE"),
            VpsStatus::Active,
            Some(now),
            "synced",
        ),
        ("b.example.net", None, VpsStatus::Active, None, "error"),
        (
            "c.example.net",
            Some("FI"),
            VpsStatus::Provisioning,
            Some(now - 1000),
            "pending",
        ),
        (
            "d.example.net",
            Some("DE"),
            VpsStatus::Active,
            Some(now - 3_600_000),
            "synced",
        ),
        (
            "e.example.net",
            None,
            VpsStatus::Retired,
            Some(now - 10),
            "not_meshed",
        ),
    ];
    for (h, country, status, beat, mesh) in rows {
        let v = store
            .create_vps("test", &vps(h, country, status))
            .await
            .unwrap();
        sqlx::query("UPDATE vps SET last_heartbeat_at = $1, mesh_status = $2 WHERE id = $3")
            .bind(beat)
            .bind(mesh)
            .bind(v.id.to_string())
            .execute(&db)
            .await
            .unwrap();
    }
    let gone = store
        .create_vps("test", &vps("z.example.net", Some("US"), VpsStatus::Active))
        .await
        .unwrap();
    store.delete_vps("test", gone.id).await.unwrap();

    // The overview: deleted VPS are not counted; silent = active and quiet (or never heard).
    let s = store.fleet_summary(Duration::from_secs(90)).await.unwrap();
    assert_eq!(s.total, 5);
    let status = |st| s.by_status.iter().find(|(x, _)| *x == st).unwrap().1;
    assert_eq!(status(VpsStatus::Active), 3);
    assert_eq!(status(VpsStatus::Provisioning), 1);
    assert_eq!(status(VpsStatus::Retired), 1);
    let mesh = |m| s.by_mesh.iter().find(|(x, _)| *x == m).unwrap().1;
    assert_eq!(mesh(MeshSyncStatus::Synced), 2);
    assert_eq!(mesh(MeshSyncStatus::Error), 1);
    assert_eq!(mesh(MeshSyncStatus::NotMeshed), 1);
    assert_eq!(s.silent, 2, "b (never) and d (an hour ago)");
    assert_eq!(s.by_purpose, vec![("xrayr".to_string(), 5)]);
    assert_eq!(
        s.by_country,
        vec![(Some("DE".into()), 2), (None, 2), (Some("FI".into()), 1)],
        "largest first, ties by name with unset last"
    );
    assert_eq!(s.by_provider, vec![(None, 5)]);

    // Sorting: stable ties by hostname, unset first ascending and last descending.
    let all = VpsQuery {
        limit: Some(100),
        ..VpsQuery::default()
    };
    let sorted = |sort, desc| {
        let store = store.clone();
        let all = all.clone();
        async move { store.list_vps_sorted(&all, None, sort, desc).await.unwrap() }
    };
    let l = sorted(VpsSort::Country, false).await;
    assert_eq!(l.total, 5);
    assert_eq!(
        hostnames(&l),
        [
            "b.example.net",
            "e.example.net",
            "a.example.net",
            "d.example.net",
            "c.example.net"
        ]
    );
    let l = sorted(VpsSort::Country, true).await;
    assert_eq!(
        hostnames(&l),
        [
            "c.example.net",
            "d.example.net",
            "a.example.net",
            "e.example.net",
            "b.example.net"
        ]
    );
    let l = sorted(VpsSort::Heartbeat, false).await;
    assert_eq!(
        hostnames(&l),
        [
            "b.example.net",
            "d.example.net",
            "c.example.net",
            "e.example.net",
            "a.example.net"
        ],
        "never heard from first, then the stalest"
    );
    let l = sorted(VpsSort::Status, false).await;
    assert_eq!(
        hostnames(&l),
        [
            "a.example.net",
            "b.example.net",
            "d.example.net",
            "c.example.net",
            "e.example.net"
        ]
    );
    let l = sorted(VpsSort::Hostname, true).await;
    assert_eq!(hostnames(&l)[0], "e.example.net");
    // Pages of a sort with ties do not overlap.
    let mut paged = Vec::new();
    for offset in 0..5 {
        let page = VpsQuery {
            limit: Some(1),
            offset: Some(offset),
            ..VpsQuery::default()
        };
        let l = store
            .list_vps_sorted(&page, None, VpsSort::Status, false)
            .await
            .unwrap();
        paged.push(l.items[0].hostname.clone());
    }
    assert_eq!(
        paged,
        [
            "a.example.net",
            "b.example.net",
            "d.example.net",
            "c.example.net",
            "e.example.net"
        ]
    );

    // The mesh-state filter combines with the others.
    let l = store
        .list_vps_sorted(&all, Some(MeshSyncStatus::Synced), VpsSort::Hostname, false)
        .await
        .unwrap();
    assert_eq!(hostnames(&l), ["a.example.net", "d.example.net"]);
    let de_error = VpsQuery {
        country: Some("DE".into()),
        ..all.clone()
    };
    let l = store
        .list_vps_sorted(
            &de_error,
            Some(MeshSyncStatus::Error),
            VpsSort::Hostname,
            false,
        )
        .await
        .unwrap();
    assert_eq!((l.total, l.items.len()), (0, 0));

    // Chains: the routes of live VPS, with the VPS their backends name by hostname or by one
    // of their addresses (found in the stored address list on both backends).
    let mut relay = vps("relay.example.net", Some("NL"), VpsStatus::Active);
    relay.ip_addresses = vec![sigma_types::IpAddress {
        ip: "192.0.2.10".into(),
        label: "public".into(),
    }];
    let relay = store.create_vps("test", &relay).await.unwrap();
    let mut decoy = vps("decoy.example.net", None, VpsStatus::Active);
    decoy.ip_addresses = vec![sigma_types::IpAddress {
        ip: "192.0.2.100".into(),
        label: "public".into(),
    }];
    store.create_vps("test", &decoy).await.unwrap();
    let entry = l_id(&store, "a.example.net").await;
    let exit = l_id(&store, "d.example.net").await;
    let spec = |name: &str, host: &str| sigma_types::RouteSpec {
        name: name.into(),
        listen_port: 443,
        upstream: sigma_types::UpstreamSpec::Backend {
            host: host.into(),
            port: 443,
            cluster_type: sigma_types::ClusterType::StrictDns,
        },
        connect_timeout_ms: 5000,
        proxy_protocol: sigma_types::ProxyProtocol::None,
        status: sigma_types::RouteStatus::Active,
    };
    store
        .create_route("test", entry, &spec("in", "192.0.2.10"))
        .await
        .unwrap();
    store
        .create_route("test", relay.id, &spec("via", "d.example.net"))
        .await
        .unwrap();
    let c = store.chain_routes().await.unwrap();
    assert_eq!(c.routes.len(), 2);
    assert!(!c.truncated);
    let mut found: Vec<&str> = c.vps.iter().map(|v| v.hostname.as_str()).collect();
    found.sort();
    assert_eq!(
        found,
        ["a.example.net", "d.example.net", "relay.example.net"],
        "owners and targets; 192.0.2.100 is not 192.0.2.10"
    );
    assert!(c.vps.iter().any(|v| v.id == exit));
    db.close().await;
    store.close().await;
}

async fn l_id(store: &Store, hostname: &str) -> uuid::Uuid {
    let q = VpsQuery {
        hostname: Some(hostname.into()),
        ..VpsQuery::default()
    };
    store.list_vps(&q).await.unwrap().items[0].id
}

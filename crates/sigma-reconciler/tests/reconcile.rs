//! The reconciler against a mock API server (kube-rs' `tower_test::mock::pair` pattern): the
//! exact calls of a pass, steady state, deletes, unmanaged objects, retries and triggers.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use sigma_reconciler::{Cluster, ClusterSettings, Reconciler, ReconcilerSettings};
use sigma_store::Store;
use sigma_testkit::TestDb;
use sigma_testkit::db::open_store;
use sigma_testkit::fake_kube::{Call, FakeKube};
use sigma_types::{MeshSyncStatus, Normalize, PurposePatch, VpsCreate, VpsStatus};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The WorkloadEntry name of a hostname (sanitised, with a hash when it had to change).
fn entry(hostname: &str) -> String {
    sigma_mesh::model::workload_entry_name(hostname)
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "sigma";
const KINDS: [&str; 5] = [
    "workloadgroups",
    "workloadentries",
    "serviceentries",
    "sidecars",
    "destinationrules",
];

async fn store() -> Store {
    let store = open_store(&TestDb::sqlite().await).await;
    let mesh = json!({
        "enabled": true,
        "ports": [{"name": "vless", "number": 443, "protocol": "TCP"}],
        "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]
    });
    store
        .update_purpose(
            "test",
            "xrayr",
            &PurposePatch {
                display_name: None,
                mesh: Some(Some(mesh)),
            },
        )
        .await
        .unwrap();
    store
}

async fn add_vps(store: &Store, hostname: &str, ip: &str) -> Uuid {
    let c: VpsCreate = serde_json::from_value(json!({
        "hostname": hostname, "purpose": "xrayr", "status": "active", "country": "DE",
        "ip_addresses": [{"ip": ip, "label": "public"}]
    }))
    .unwrap();
    store
        .create_vps("test", &c.normalize().unwrap())
        .await
        .unwrap()
        .id
}

fn settings() -> ReconcilerSettings {
    ReconcilerSettings {
        concurrency: 1,
        ..ReconcilerSettings::default()
    }
}

fn cluster(client: kube::Client, page_size: u32) -> Arc<Cluster> {
    Arc::new(Cluster::new(
        client,
        ClusterSettings {
            namespace: NS.into(),
            page_size,
            ..ClusterSettings::default()
        },
    ))
}

/// Runs one full pass, answering each request the mock receives with the fake server.
async fn drive(
    rec: &Reconciler,
    handle: &mut Handle,
    fake: &FakeKube,
) -> sigma_reconciler::Result<sigma_reconciler::PassReport> {
    serve(rec.pass(), handle, fake).await
}

/// Runs one pass from the known state ([`Reconciler::pass_from_known`]), as [`drive`].
async fn drive_known(
    rec: &Reconciler,
    handle: &mut Handle,
    fake: &FakeKube,
) -> sigma_reconciler::Result<sigma_reconciler::PassReport> {
    serve(rec.pass_from_known(), handle, fake).await
}

async fn serve<T>(pass: impl Future<Output = T>, handle: &mut Handle, fake: &FakeKube) -> T {
    tokio::pin!(pass);
    loop {
        tokio::select! {
            r = &mut pass => return r,
            req = handle.next_request() => {
                let (req, send) = req.expect("mock handle closed");
                fake.answer(req, send).await;
            }
        }
    }
}

fn list_path(plural: &str) -> String {
    format!("/apis/networking.istio.io/v1/namespaces/{NS}/{plural}")
}

/// The query's parameters (kube-rs starts a query with `&`; the API server ignores empty ones).
fn params(query: &str) -> std::collections::BTreeMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn q(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_lists(calls: &[Call]) {
    let lists: Vec<&Call> = calls.iter().filter(|c| c.verb() == "GET").collect();
    assert_eq!(lists.len(), 5, "{calls:#?}");
    for (c, plural) in lists.iter().zip(KINDS) {
        assert_eq!(c.path, list_path(plural));
        assert_eq!(
            params(&c.query),
            q(&[("limit", "500")]),
            "every object, no label selector: {c:?}"
        );
    }
}

async fn desired_objects(store: &Store) -> Vec<Value> {
    let inputs = store.mesh_inputs().await.unwrap();
    let d = sigma_reconciler::desired(&sigma_mesh::MeshTemplate::default(), &inputs).unwrap();
    d.state
        .objects
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

#[tokio::test]
async fn first_pass_applies_everything_then_steady_state_only_lists() {
    let store = store().await;
    let id = add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    let fake = FakeKube::default();
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let rec = Reconciler::new(
        store.clone(),
        cluster(kube::Client::new(svc, "default"), 500),
        settings(),
    );

    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    let calls = fake.calls();
    assert_lists(&calls);
    let want = desired_objects(&store).await;
    assert_eq!(want.len(), 5, "group, entry, service entry, sidecar, rule");
    // The VPS's group is its Kiali workload: named like its entry, applied before it.
    assert_eq!(want[0]["kind"], "WorkloadGroup");
    assert_eq!(want[1]["kind"], "WorkloadEntry");
    assert_eq!(want[0]["metadata"]["name"], want[1]["metadata"]["name"]);
    assert_eq!(
        want[0]["spec"]["metadata"]["labels"]["sigma.io/vps-id"],
        id.to_string()
    );
    let applies: Vec<&Call> = calls.iter().filter(|c| c.verb() == "PATCH").collect();
    assert_eq!(applies.len(), 5, "{calls:#?}");
    assert_eq!(calls.len(), 10, "lists, then applies, nothing else");
    for (c, obj) in applies.iter().zip(&want) {
        let kind = obj["kind"].as_str().unwrap();
        let plural = match kind {
            "WorkloadGroup" => "workloadgroups",
            "WorkloadEntry" => "workloadentries",
            "ServiceEntry" => "serviceentries",
            "Sidecar" => "sidecars",
            _ => "destinationrules",
        };
        assert_eq!(
            c.path,
            format!(
                "{}/{}",
                list_path(plural),
                obj["metadata"]["name"].as_str().unwrap()
            )
        );
        assert_eq!(
            params(&c.query),
            q(&[("fieldManager", "sigma-api"), ("force", "true")]),
            "{c:?}"
        );
        assert_eq!(c.content_type, "application/apply-patch+yaml");
        assert_eq!(&c.body, obj, "the apply body is the desired object");
    }
    assert_eq!(report.applied, 5);
    assert_eq!(report.deleted, 0);
    assert!(report.failures.is_empty(), "{report:?}");

    let v = store.get_vps(id).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Synced, "{:?}", v.mesh);
    assert_eq!(
        v.mesh.workload_entry.as_deref(),
        Some(entry("edge-1.example.com").as_str())
    );
    assert!(v.mesh.last_attempt_at.is_some());
    assert_eq!(v.mesh.message, None);

    // Steady state: the cluster now holds what was applied (plus server fields such as uid,
    // managedFields and status): the lists and no other call, and no status rewritten.
    fake.clear_calls();
    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    let calls = fake.calls();
    assert_lists(&calls);
    assert_eq!(calls.len(), 5, "no calls beyond the lists: {calls:#?}");
    assert_eq!(
        (report.applied, report.deleted, report.statuses_written),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn deletes_what_is_no_longer_desired_and_leaves_other_objects_alone() {
    let store = store().await;
    add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    let taken = add_vps(&store, "edge-2.example.com", "203.0.113.8").await;
    let retired = add_vps(&store, "edge-3.example.com", "203.0.113.9").await;
    let fake = FakeKube::default();
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    // Pages of two objects, so the three entries take two list calls.
    let rec = Reconciler::new(
        store.clone(),
        cluster(kube::Client::new(svc, "default"), 2),
        settings(),
    );
    drive(&rec, &mut handle, &fake).await.unwrap();
    let edge3 = fake
        .object(NS, "workloadentries", &entry("edge-3.example.com"))
        .expect("applied");
    let edge3_group = fake
        .object(NS, "workloadgroups", &entry("edge-3.example.com"))
        .expect("applied");
    store.retire_vps("test", retired, true).await.unwrap();

    // Objects of other tools: one holds the name edge-2's entry wants, one the service entry's.
    let foreign = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
               "metadata": {"name": name, "labels": {"team": "payments"}}, "spec": spec})
    };
    fake.state.lock().unwrap().objects.remove(&(
        NS.into(),
        "workloadentries".into(),
        entry("edge-2.example.com"),
    ));
    fake.insert(
        NS,
        "workloadentries",
        foreign(
            "WorkloadEntry",
            &entry("edge-2.example.com"),
            json!({"address": "192.0.2.1"}),
        ),
    );
    fake.insert(
        NS,
        "workloadentries",
        foreign(
            "WorkloadEntry",
            "payments-1",
            json!({"address": "192.0.2.2"}),
        ),
    );
    // Not even decodable as a ServiceEntry (no hosts): still recognised as not sigma's.
    fake.state.lock().unwrap().objects.remove(&(
        NS.into(),
        "serviceentries".into(),
        "xrayr".into(),
    ));
    fake.insert(
        NS,
        "serviceentries",
        foreign("ServiceEntry", "xrayr", json!({"ports": []})),
    );
    let before = fake.state.lock().unwrap().objects.clone();

    fake.clear_calls();
    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    let calls = fake.calls();
    let gets: Vec<&Call> = calls.iter().filter(|c| c.verb() == "GET").collect();
    assert_eq!(
        gets.len(),
        7,
        "two pages of groups and of entries: {gets:#?}"
    );
    for second_page in [1, 3] {
        assert_eq!(
            params(&gets[second_page].query),
            q(&[("limit", "2"), ("continue", "2")])
        );
    }
    let writes: Vec<&Call> = calls.iter().filter(|c| c.verb() != "GET").collect();
    assert_eq!(
        writes.len(),
        2,
        "only the retired VPS's group and entry are deleted: {writes:#?}"
    );
    for (plural, listed) in [
        ("workloadgroups", &edge3_group),
        ("workloadentries", &edge3),
    ] {
        let path = format!("{}/{}", list_path(plural), entry("edge-3.example.com"));
        let d = writes
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("no delete of {path}: {writes:#?}"));
        assert_eq!(d.verb(), "DELETE");
        assert_eq!(
            d.body["preconditions"]["uid"], listed["metadata"]["uid"],
            "deletes only the object it listed"
        );
    }
    assert_eq!(report.deleted, 2);
    assert_eq!(report.conflicts, 2, "{report:?}");
    let after = fake.state.lock().unwrap().objects.clone();
    let e2 = entry("edge-2.example.com");
    for key in [
        (NS, "workloadentries", e2.as_str()),
        (NS, "workloadentries", "payments-1"),
        (NS, "serviceentries", "xrayr"),
    ] {
        let k = (key.0.to_string(), key.1.to_string(), key.2.to_string());
        assert_eq!(after.get(&k), before.get(&k), "{key:?} untouched");
    }

    let v = store.get_vps(taken).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Error);
    assert!(
        v.mesh
            .message
            .as_deref()
            .unwrap()
            .contains("not managed by sigma"),
        "{:?}",
        v.mesh
    );
    let v = store.get_vps(retired).await.unwrap();
    assert_eq!(v.status, VpsStatus::Retired);
    assert_eq!(v.mesh.status, MeshSyncStatus::NotMeshed);
    assert_eq!(v.mesh.workload_entry, None);
    assert!(v.mesh.message.as_deref().unwrap().contains("retired"));
}

#[tokio::test]
async fn a_group_name_held_by_another_tool_is_reported_on_the_vps() {
    let store = store().await;
    let id = add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    let fake = FakeKube::default();
    // Another tool's WorkloadGroup holds the name the VPS's group (its Kiali workload) wants.
    fake.insert(
        NS,
        "workloadgroups",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
               "metadata": {"name": entry("edge-1.example.com"), "labels": {"team": "payments"}},
               "spec": {"template": {"serviceAccount": "payments"}}}),
    );
    let before = fake.object(NS, "workloadgroups", &entry("edge-1.example.com"));
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let rec = Reconciler::new(
        store.clone(),
        cluster(kube::Client::new(svc, "default"), 500),
        settings(),
    );
    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!(report.applied, 4, "everything but the group: {report:?}");
    assert_eq!(
        fake.object(NS, "workloadgroups", &entry("edge-1.example.com")),
        before,
        "left alone"
    );
    assert!(
        fake.object(NS, "workloadentries", &entry("edge-1.example.com"))
            .is_some()
    );
    let v = store.get_vps(id).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Error);
    let m = v.mesh.message.as_deref().unwrap();
    assert!(
        m.starts_with(&format!(
            "a WorkloadGroup named {} exists in namespace sigma and is not managed by sigma",
            entry("edge-1.example.com")
        )),
        "{m}"
    );
    // The entry itself is in the cluster.
    assert_eq!(
        v.mesh.workload_entry.as_deref(),
        Some(entry("edge-1.example.com").as_str())
    );

    // The other tool's group goes: the next pass applies sigma's, and the VPS is synced.
    fake.state.lock().unwrap().objects.remove(&(
        NS.into(),
        "workloadgroups".into(),
        entry("edge-1.example.com"),
    ));
    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    assert_eq!((report.applied, report.conflicts), (1, 0), "{report:?}");
    let v = store.get_vps(id).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Synced, "{:?}", v.mesh);
}

#[tokio::test]
async fn a_pass_for_a_change_reads_only_the_objects_it_writes() {
    let store = store().await;
    add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    let fake = FakeKube::default();
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let rec = Reconciler::new(
        store.clone(),
        cluster(kube::Client::new(svc, "default"), 500),
        settings(),
    );
    // Without a known state it lists, as a full pass.
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert!(report.listed, "{report:?}");
    assert_eq!(report.applied, 5);
    assert_lists(&fake.calls());

    // A register: the new VPS's group and entry are read by name, then applied. No list of
    // the namespace.
    let id2 = add_vps(&store, "edge-2.example.com", "203.0.113.8").await;
    fake.clear_calls();
    fake.state.lock().unwrap().field_selectors.clear();
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert!(!report.listed, "{report:?}");
    assert_eq!((report.applied, report.deleted), (2, 0), "{report:?}");
    let calls = fake.calls();
    let e2 = entry("edge-2.example.com");
    let mut lines: Vec<String> = calls.iter().map(|c| c.line()).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("GET {}", list_path("workloadentries")),
            format!("GET {}", list_path("workloadgroups")),
            format!("PATCH {}/{e2}", list_path("workloadentries")),
            format!("PATCH {}/{e2}", list_path("workloadgroups")),
        ],
        "{calls:#?}"
    );
    assert_eq!(
        fake.state.lock().unwrap().field_selectors,
        [format!("metadata.name={e2}"), format!("metadata.name={e2}")]
    );
    let v = store.get_vps(id2).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Synced, "{:?}", v.mesh);

    // Nothing changed: no call at all.
    fake.clear_calls();
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert_eq!((report.applied, report.deleted), (0, 0));
    assert!(fake.calls().is_empty(), "{:#?}", fake.calls());

    // Another tool's entry took the name a new VPS wants since the last list: the read by
    // name finds it, and it is left alone as in a full pass.
    let e3 = entry("edge-3.example.com");
    fake.insert(
        NS,
        "workloadentries",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": e3, "labels": {"team": "payments"}},
               "spec": {"address": "192.0.2.1"}}),
    );
    let foreign = fake.object(NS, "workloadentries", &e3);
    let id3 = add_vps(&store, "edge-3.example.com", "203.0.113.9").await;
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert!(!report.listed);
    assert_eq!(
        (report.applied, report.conflicts),
        (1, 1),
        "the group only: {report:?}"
    );
    assert_eq!(
        fake.object(NS, "workloadentries", &e3),
        foreign,
        "untouched"
    );
    let v = store.get_vps(id3).await.unwrap();
    assert_eq!(v.mesh.status, MeshSyncStatus::Error, "{:?}", v.mesh);

    // A retire deletes the VPS's objects, each only if it is still the one sigma applied.
    let group = fake.object(NS, "workloadgroups", &e2).unwrap();
    store.retire_vps("test", id2, true).await.unwrap();
    fake.clear_calls();
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert_eq!(report.deleted, 2, "{report:?}");
    let calls = fake.calls();
    let d = calls
        .iter()
        .find(|c| c.verb() == "DELETE" && c.path.contains("/workloadgroups/"))
        .unwrap();
    assert_eq!(d.body["preconditions"]["uid"], group["metadata"]["uid"]);
    assert!(
        calls.iter().filter(|c| c.verb() == "GET").count() <= 3,
        "the two objects deleted and the conflicting entry: {calls:#?}"
    );

    // Drift in an object no change touches waits for the full pass, which repairs it.
    fake.state.lock().unwrap().objects.remove(&(
        NS.into(),
        "workloadentries".into(),
        entry("edge-1.example.com"),
    ));
    let report = drive_known(&rec, &mut handle, &fake).await.unwrap();
    assert_eq!(report.applied, 0, "not seen without a list: {report:?}");
    fake.clear_calls();
    let report = drive(&rec, &mut handle, &fake).await.unwrap();
    assert!(report.listed);
    assert_eq!(report.applied, 1, "{report:?}");
    assert_lists(&fake.calls());
}

/// A run's passes: the first lists, a change only reads what it writes, and after a failed
/// pass the next one lists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_lists_first_and_after_a_failure_and_reads_by_name_for_changes() {
    let store = store().await;
    let fake = FakeKube::default();
    let rec = Reconciler::new(store.clone(), cluster(fake.client(), 500), run_settings());
    let (_tx, leader) = tokio::sync::watch::channel(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rec.run(leader, stop.clone()));
    let full_lists = |fake: &FakeKube| {
        fake.calls()
            .iter()
            .filter(|c| c.verb() == "GET" && !c.query.contains("fieldSelector"))
            .count()
    };
    wait_for("the first pass lists", || {
        let fake = fake.clone();
        async move { full_lists(&fake) == 5 }
    })
    .await;
    add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    wait_for("entry applied", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 1 }
    })
    .await;
    assert_eq!(full_lists(&fake), 5, "{:#?}", fake.calls());

    // A failed call: the retry lists the namespace.
    fake.state.lock().unwrap().fail_next = 1;
    add_vps(&store, "edge-2.example.com", "203.0.113.8").await;
    wait_for("second entry applied", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 2 }
    })
    .await;
    wait_for("a list after the failure", || {
        let fake = fake.clone();
        async move { full_lists(&fake) == 10 }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run_settings() -> ReconcilerSettings {
    ReconcilerSettings {
        resync: Duration::from_secs(3600),
        debounce: Duration::from_millis(10),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..ReconcilerSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_is_retried_with_capped_backoff_then_converges() {
    let store = store().await;
    let fake = FakeKube::default();
    fake.state.lock().unwrap().fail_next = usize::MAX;
    let rec = Reconciler::new(store.clone(), cluster(fake.client(), 500), run_settings());
    let stats = rec.stats.clone();
    let (_tx, leader) = tokio::sync::watch::channel(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rec.run(leader, stop.clone()));

    // The database stays the source of truth: registering works while the cluster is down,
    // and the VPS shows why it is not in the mesh yet.
    let id = add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    wait_for("error status while unreachable", || {
        let store = store.clone();
        async move {
            let v = store.get_vps(id).await.unwrap();
            v.mesh.status == MeshSyncStatus::Error
                && v.mesh
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("not reconciled yet")
        }
    })
    .await;
    wait_for("several attempts", || {
        let fake = fake.clone();
        async move { fake.calls().len() >= 5 }
    })
    .await;
    let calls = fake.calls();
    let gaps: Vec<u128> = calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    // 50, 100, 200, 200 ms: doubling, capped (a change notice does not shorten a backoff).
    assert!(gaps[0] >= 45, "{gaps:?}");
    assert!(gaps[1] >= 95, "{gaps:?}");
    assert!(gaps[2] >= 195 && gaps[3] >= 195, "{gaps:?}");
    assert!(gaps.iter().all(|g| *g < 1000), "capped: {gaps:?}");
    assert!(stats.passes(sigma_reconciler::metrics::PassResult::Failed) >= 4);

    fake.state.lock().unwrap().fail_next = 0;
    wait_for("synced once the API is back", || {
        let store = store.clone();
        async move { store.get_vps(id).await.unwrap().mesh.status == MeshSyncStatus::Synced }
    })
    .await;
    assert!(
        fake.object(NS, "workloadentries", &entry("edge-1.example.com"))
            .is_some()
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_changes_trigger_a_pass_and_a_follower_makes_no_calls() {
    let store = store().await;
    let fake = FakeKube::default();
    let rec = Reconciler::new(store.clone(), cluster(fake.client(), 500), run_settings());
    let (leader_tx, leader) = tokio::sync::watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rec.run(leader, stop.clone()));

    // Not leading: changes are not acted on.
    let id = add_vps(&store, "edge-1.example.com", "203.0.113.7").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.calls().is_empty(), "a follower makes no calls");

    leader_tx.send_replace(true);
    wait_for("entry applied on gaining leadership", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 1 }
    })
    .await;

    // Register, retire, opt-out: each acted on at once (resync is an hour away).
    let id2 = add_vps(&store, "edge-2.example.com", "203.0.113.8").await;
    wait_for("new VPS applied", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 2 }
    })
    .await;
    store.retire_vps("test", id2, true).await.unwrap();
    wait_for("retired VPS removed", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 1 }
    })
    .await;
    let patch: sigma_types::VpsPatch = serde_json::from_value(json!({})).unwrap();
    store
        .update_vps("test", id, &patch, Some(true))
        .await
        .unwrap();
    wait_for("opted-out VPS removed", || {
        let fake = fake.clone();
        async move { fake.count("workloadentries") == 0 }
    })
    .await;
    wait_for("opted-out VPS not meshed", || {
        let store = store.clone();
        async move {
            let v = store.get_vps(id).await.unwrap();
            v.mesh.status == MeshSyncStatus::NotMeshed
                && v.mesh.message.as_deref() == Some("opted out of the mesh")
        }
    })
    .await;

    // Losing leadership stops the calls.
    leader_tx.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.clear_calls();
    add_vps(&store, "edge-3.example.com", "203.0.113.9").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.calls().is_empty(), "{:#?}", fake.calls());
    stop.cancel();
    task.await.unwrap();
}

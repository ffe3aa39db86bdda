//! Kiali's view of the fleet, against the real components: a real kube-apiserver, etcd and
//! istiod, sigma-api under its shipped RBAC reconciling the mesh, and simulated VPS hosts
//! (network namespaces) running sigma-agent `--istio-enabled` with the real pilot-agent and
//! Envoy (set-up as in `tests/mesh.rs`).
//!
//! Per VPS it asserts what Kiali 2.x reads (kiali/kiali `business/workloads.go`,
//! `kubernetes/filters.go` `FilterWorkloadEntriesBySelector`): a WorkloadGroup named like the
//! VPS's WorkloadEntry with the purpose as app and canonical service and the VPS's id among its
//! `spec.metadata.labels`; under Kiali's rule (a group's entries are those whose `spec.labels`
//! hold all of its labels) that group holds exactly the VPS's entry and no group holds two;
//! the entry's `Healthy` condition, which Kiali shows as the workload's health, turns True; and
//! istiod's `/debug/connections` lists the proxy under that same workload name, which is the
//! `source_workload` of its telemetry and so the name of its node in Kiali's graph. Then the
//! steady state writes nothing to the groups, and retiring a VPS removes its group with its
//! entry.
//!
//! `figures_at_scale` (ignored: run it with `--ignored`) measures what the per-VPS groups cost
//! in the real API server: objects written on a first pass, a resync's list and diff, and
//! etcd bytes per VPS by kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use sigma_e2e::mesh::{MeshCluster, healthy};
use sigma_e2e::{ControlPlane, wait_for, work_dir};

/// Every object of an Istio kind in namespace `sigma`, as JSON.
async fn list(cp: &ControlPlane, kind: &str) -> Vec<Value> {
    match cp.istio(kind, "sigma").list(&ListParams::default()).await {
        Ok(l) => l
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect(),
        Err(e) => panic!("listing {kind}: {e}"),
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Kiali's workloads from WorkloadGroups and WorkloadEntries as the API server returns them:
/// group name → names of the entries whose `spec.labels` hold every label of the group's
/// `spec.metadata.labels` (none for a group without labels).
fn kiali_workloads(groups: &[Value], entries: &[Value]) -> BTreeMap<String, Vec<String>> {
    groups
        .iter()
        .map(|g| {
            let sel = string_map(&g["spec"]["metadata"]["labels"]);
            let attached = if sel.is_empty() {
                Vec::new()
            } else {
                entries
                    .iter()
                    .filter(|e| {
                        let l = string_map(&e["spec"]["labels"]);
                        sel.iter().all(|(k, v)| l.get(k) == Some(v))
                    })
                    .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
                    .collect()
            };
            (
                g["metadata"]["name"].as_str().unwrap().to_string(),
                attached,
            )
        })
        .collect()
}

/// istiod's connected proxies (`/debug/connections`: `{"clients": [{connectionId, labels,
/// metadata}]}`).
async fn connections(cp: &ControlPlane) -> Value {
    let url = format!("{}/connections", cp.var("ISTIOD_DEBUG_URL"));
    match reqwest::get(url).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_vps_is_a_kiali_workload_named_as_its_proxy() {
    if !sigma_e2e::can_run(&["ip", "python3"]) {
        return;
    }
    let dir = work_dir("kiali");
    let cluster = MeshCluster::up(&dir).await;
    let (cp, api) = (&cluster.cp, &cluster.api);
    let token = api
        .token(json!({"purpose": "xrayr", "provider": "hetzner", "country": "DE", "max_uses": 10, "ttl_seconds": 3600}))
        .await;

    // One hostname used verbatim as the object name, one that is cleaned and hashed.
    let mut fleet = vec![
        cluster.start_vps(&dir, 31, "kiali-31", &token),
        cluster.start_vps(&dir, 32, "kiali-32.e2e.sigma", &token),
    ];

    let mut names = Vec::new();
    for v in &fleet {
        let vps = wait_for("the VPS active", Duration::from_secs(60), || async {
            api.vps(&v.hostname)
                .await
                .filter(|x| x["status"] == "active")
        })
        .await;
        let id = vps["id"].as_str().unwrap().to_string();
        let entry = wait_for("its WorkloadEntry", Duration::from_secs(60), || async {
            // A failed read is "not yet" here: only a read that finds the entry ends the wait.
            cp.workload_entry_of(&id).await.ok().flatten()
        })
        .await;
        let name = entry["metadata"]["name"].as_str().unwrap().to_string();

        // Its group: same name, the purpose as app and canonical service, one version, its id.
        let group = wait_for("its WorkloadGroup", Duration::from_secs(60), || async {
            list(cp, "WorkloadGroup")
                .await
                .into_iter()
                .find(|g| g["metadata"]["name"] == name.as_str())
        })
        .await;
        assert_eq!(
            string_map(&group["spec"]["metadata"]["labels"]),
            BTreeMap::from([
                ("app".to_string(), "xrayr".to_string()),
                ("version".to_string(), "v1".to_string()),
                (
                    "service.istio.io/canonical-name".to_string(),
                    "xrayr".to_string()
                ),
                (
                    "service.istio.io/canonical-revision".to_string(),
                    "v1".to_string()
                ),
                ("sigma.io/vps-id".to_string(), id.clone()),
            ]),
            "{group:#}"
        );
        assert_eq!(
            group["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "sigma"
        );
        assert_eq!(group["metadata"]["labels"]["sigma.io/vps-id"], id.as_str());
        assert_eq!(
            group["metadata"]["annotations"]["sigma.io/hostname"],
            v.hostname.as_str()
        );
        assert_eq!(group["spec"]["template"]["serviceAccount"], "sigma-vm");
        assert_eq!(group["spec"]["probe"]["httpGet"]["port"], 9102, "{group:#}");
        // Written by sigma-api's server-side apply.
        assert!(
            group["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["manager"] == "sigma-api" && m["operation"] == "Apply"),
            "{group:#}"
        );

        // The entry's Healthy condition (what Kiali shows) turns True once the proxy's probe
        // passes.
        wait_for(
            "the WorkloadEntry Healthy",
            Duration::from_secs(180),
            || async {
                let e = cp.workload_entry_of(&id).await.ok()??;
                (healthy(&e) == Some(true)).then_some(())
            },
        )
        .await;

        // istiod knows the proxy under the same workload name: its proxy id is
        // `<workload name>.<namespace>` (pilot-agent's node id from the bundle), and the
        // metadata and labels it reports, where this istiod lists them, are the group's.
        let conn = wait_for(
            "istiod to list the proxy under its workload name",
            Duration::from_secs(120),
            || async {
                let c = connections(cp).await;
                // `{"totalClients": n, "clients": [...]}`, or a bare list in older istiods.
                c.get("clients")
                    .unwrap_or(&c)
                    .as_array()?
                    .iter()
                    .find(|x| {
                        x["connectionId"]
                            .as_str()
                            .is_some_and(|i| i.starts_with(&format!("{name}.sigma-")))
                    })
                    .cloned()
            },
        )
        .await;
        if let Some(w) = conn["metadata"]["WORKLOAD_NAME"].as_str() {
            assert_eq!(w, name, "{conn:#}");
        }
        let proxy_labels = string_map(&conn["labels"]);
        if !proxy_labels.is_empty() {
            for (k, want) in string_map(&group["spec"]["metadata"]["labels"]) {
                assert_eq!(
                    proxy_labels.get(&k),
                    Some(&want),
                    "proxy label {k}: {conn:#}"
                );
            }
        }
        eprintln!("istiod connection of {name}: {conn}");
        names.push((id, name));
    }

    // Kiali's rule over everything the namespace holds: one workload per VPS, each holding
    // exactly its own entry; no group that collects several.
    let groups = list(cp, "WorkloadGroup").await;
    let entries = list(cp, "WorkloadEntry").await;
    let workloads = kiali_workloads(&groups, &entries);
    assert_eq!(workloads.len(), fleet.len(), "{workloads:?}");
    for (_, name) in &names {
        assert_eq!(workloads[name], vec![name.clone()], "{workloads:?}");
    }

    // Steady state: resyncs every 2 s write nothing to the groups.
    let versions = |gs: &[Value]| -> BTreeMap<String, String> {
        gs.iter()
            .map(|g| {
                (
                    g["metadata"]["name"].as_str().unwrap().to_string(),
                    g["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let before = versions(&groups);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        versions(&list(cp, "WorkloadGroup").await),
        before,
        "a resync rewrote a group"
    );

    // Retire the first VPS: its group goes with its entry; the other stays.
    let (id, name) = &names[0];
    let (st, body) = api
        .call(
            "POST",
            &format!("/api/vps/{id}/retire?force=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    wait_for(
        "the retired VPS's group and entry deleted",
        Duration::from_secs(60),
        || async {
            let g = list(cp, "WorkloadGroup").await;
            let gone = !g.iter().any(|x| x["metadata"]["name"] == name.as_str())
                && cp
                    .workload_entry_of(id)
                    .await
                    .expect("reading the WorkloadEntry (a failed read is not an absence)")
                    .is_none();
            gone.then_some(g)
        },
    )
    .await;
    let left: Vec<String> = list(cp, "WorkloadGroup")
        .await
        .iter()
        .map(|g| g["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![names[1].1.clone()]);

    for v in &mut fleet {
        v.agent.stop();
    }
}

/// Sum of key and value sizes of the etcd keys under `prefix`, and their count, read through
/// etcd's JSON gateway (`/v3/kv/range`).
async fn etcd_bytes(etcd_url: &str, prefix: &str) -> (usize, usize) {
    use base64_engine::{decode, encode};
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let client = reqwest::Client::new();
    let mut key = prefix.as_bytes().to_vec();
    let (mut n, mut bytes) = (0, 0);
    loop {
        let r: Value = client
            .post(format!("{etcd_url}/v3/kv/range"))
            .json(&json!({"key": encode(&key), "range_end": encode(&end), "limit": 1000}))
            .send()
            .await
            .expect("etcd range")
            .json()
            .await
            .expect("etcd range answer");
        let kvs = r["kvs"].as_array().cloned().unwrap_or_default();
        for kv in &kvs {
            let k = decode(kv["key"].as_str().unwrap());
            bytes += k.len() + decode(kv["value"].as_str().unwrap_or("")).len();
            n += 1;
            key = k;
            key.push(0);
        }
        if r["more"] != true || kvs.is_empty() {
            break;
        }
    }
    (n, bytes)
}

/// Standard base64 (etcd's gateway encodes bytes fields so), without a dependency.
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes() {
            let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
                continue;
            };
            acc = (acc << 6) | v as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

/// What the per-VPS WorkloadGroups cost in the real API server: the objects sigma generates
/// for `SIGMA_KIALI_SCALE_VPS` VPS (default 10,000) are server-side applied the way the
/// reconciler applies them (field manager `sigma-api`, 8 at a time), then listed in pages of
/// 500 and diffed as a resync does, and etcd's bytes are summed by kind. Prints figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes: run with --ignored for the figures"]
async fn figures_at_scale() {
    if !sigma_e2e::can_run(&[]) {
        return;
    }
    let n: usize = std::env::var("SIGMA_KIALI_SCALE_VPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = work_dir("kiali-scale");
    let cp = ControlPlane::up(&dir.join("cp"), &[("E2E_ISTIOD", "0")]).await;
    let template = sigma_mesh::MeshTemplate::default();
    let purpose = sigma_mesh::MeshPurpose {
        name: "xrayr".into(),
        settings: sigma_mesh::MeshSettings::from_json(&json!({
            "enabled": true,
            "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP"}],
            "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 80, "protocol": "HTTP"}]
        }))
        .unwrap(),
    };
    // sigma-mesh's inputs built from JSON, so this crate needs no dependency on the id and
    // address types.
    let vps: Vec<sigma_mesh::MeshVps> = (0..n)
        .map(|i| sigma_mesh::MeshVps {
            id: serde_json::from_value(json!(format!("51570000-0000-4000-8000-{:012x}", i)))
                .unwrap(),
            hostname: format!("edge-{i}.example.net"),
            status: serde_json::from_value(json!("active")).unwrap(),
            purpose: "xrayr".into(),
            provider: Some("hetzner".into()),
            country: Some("DE".into()),
            city: Some("Falkenstein".into()),
            ip_addresses: serde_json::from_value(json!([{
                "ip": format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255),
                "label": "public"
            }]))
            .unwrap(),
            mesh_opt_out: false,
        })
        .collect();
    let state = sigma_mesh::desired_state(&template, &[purpose], &vps).unwrap();
    assert!(state.skipped.is_empty());

    // First pass: every object applied, 8 at a time.
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut written = 0;
    for o in state.objects.clone() {
        while set.len() >= 8 {
            set.join_next().await.unwrap().unwrap();
        }
        let api = cp.istio(o.kind().as_str(), "sigma");
        set.spawn(async move {
            api.patch(
                o.name(),
                &PatchParams::apply("sigma-api").force(),
                &Patch::Apply(serde_json::to_value(&o).unwrap()),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", o.key()));
        });
        written += 1;
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let first = started.elapsed();

    // A resync: list every kind in pages of 500, decode, diff.
    let started = Instant::now();
    let mut actual = Vec::new();
    let mut pages = 0;
    for kind in sigma_mesh::Kind::ALL {
        let api = cp.istio(kind.as_str(), "sigma");
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(t) = token.take() {
                lp = lp.continue_token(&t);
            }
            let page = api.list(&lp).await.unwrap();
            pages += 1;
            for o in page.items {
                let mut v = serde_json::to_value(o).unwrap();
                v["apiVersion"] = json!("networking.istio.io/v1");
                v["kind"] = json!(kind.as_str());
                actual.push(sigma_mesh::MeshObject::from_json(v).unwrap());
            }
            match page.metadata.continue_ {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    let plan = sigma_mesh::diff(&state.objects, &actual);
    let resync = started.elapsed();
    assert_eq!(plan.writes(), 0, "steady state after the first pass");

    let etcd = cp.var("ETCD_URL").to_string();
    let (ng, gb) = etcd_bytes(&etcd, "/registry/networking.istio.io/workloadgroups/sigma/").await;
    let (ne, eb) = etcd_bytes(
        &etcd,
        "/registry/networking.istio.io/workloadentries/sigma/",
    )
    .await;
    assert_eq!((ng, ne), (n, n));
    println!(
        "real API server, {n} VPS: first pass wrote {written} objects ({n} WorkloadGroups, {n} WorkloadEntries, {} others) in {:.1} s ({:.0} objects/s)",
        written - 2 * n,
        first.as_secs_f64(),
        written as f64 / first.as_secs_f64()
    );
    println!(
        "real API server, {n} VPS: resync (list {pages} pages of 500, decode, diff: 0 writes) in {:.2} s",
        resync.as_secs_f64()
    );
    println!(
        "etcd bytes per VPS: WorkloadGroup {:.0}, WorkloadEntry {:.0} (key and value, as stored; {} and {} keys)",
        gb as f64 / n as f64,
        eb as f64 / n as f64,
        ng,
        ne
    );
}

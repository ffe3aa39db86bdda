//! The mesh registry at fleet scale against the real kube-apiserver and etcd of the end-to-end
//! harness (issue 19): sigma-api in kubernetes mode under its shipped RBAC, an inventory of N
//! VPS seeded straight into its SQLite database and spread over the five built-in purposes, all
//! of them mesh-enabled, so every VPS is meshed (a WorkloadGroup and a WorkloadEntry each).
//!
//! ```text
//! source /work/testenv.sh   # or: eval "$(scripts/e2e/build-components --paths | sed 's/^/export SIGMA_E2E_/')"
//! MESH_SCALE_SIZES="1000 10000" cargo bench -p sigma-e2e --bench mesh_scale
//! ```
//!
//! Per size, each in a fresh control plane (etcd + kube-apiserver + Istio's CRDs, **no istiod**:
//! nothing reads the objects but the API server, which is what is measured):
//!
//! 1. the first full reconcile at a raised rate limit (`MESH_SCALE_QPS`, default 2000, burst
//!    the same), from sigma-api's start until its first successful pass, checked with a
//!    paginated list of the WorkloadEntries and WorkloadGroups; etcd's size per VPS after it;
//! 2. up to `MESH_SCALE_DEFAULT_QPS_MAX` VPS (default 10,000): every object deleted, then the
//!    first full reconcile again at the default rate limit (50/s, burst 100); above that it is
//!    extrapolated from the rate measured (the limiter, not the API server, sets it);
//! 3. a resync with nothing changed: sigma-api restarted (default rate limit), its first pass
//!    timed, with its API calls by verb and its writes (must be 0);
//! 4. register → WorkloadEntry visible, `MESH_SCALE_REGISTERS` times (default 100) with the
//!    fleet steady: `POST /api/agent/register` with an enrollment token, timed until the admin's
//!    watch on that name sees the entry; p50/p99, and the passes and calls it took;
//! 5. resident memory (VmRSS, VmHWM) of sigma-api, kube-apiserver and etcd.
//!
//! Output: one `key=value` line per figure, prefixed with `n=<size>`; then the growth of each
//! figure from one size to the next, as the exponent b of cost ∝ n^b (1: linear in the fleet).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, WatchEvent, WatchParams};
use serde_json::json;
use sigma_e2e::cluster::repo_root;
use sigma_e2e::{ControlPlane, work_dir};
use sigma_testkit::{ApiOptions, SigmaApi};

/// The admin key of every sigma-api here. Not the test kit's: seeded agent keys have the VPS's
/// index as their prefix (`sgm_0000aaaa` is VPS 43,690's), and a fleet of 100,000 would hold
/// the test kit key's prefix.
const ADMIN: &str = "sgm_ffadc0de_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Longer than the reconciler waits, quiet, before it releases freed memory (10 s).
const QUIET: Duration = Duration::from_secs(12);

const PURPOSES: [&str; 5] = ["xrayr", "vpn-exit", "vpn-relay", "vpn-entry", "monitor"];
const KINDS: [&str; 5] = [
    "WorkloadEntry",
    "WorkloadGroup",
    "ServiceEntry",
    "Sidecar",
    "DestinationRule",
];

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Figures of one size, printed as they come and kept for the growth table.
struct Report {
    n: usize,
    figures: BTreeMap<String, f64>,
}

impl Report {
    fn put(&mut self, key: &str, v: f64) {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            println!("n={} {key}={}", self.n, v as i64);
        } else {
            println!("n={} {key}={v:.3}", self.n);
        }
        self.figures.insert(key.to_string(), v);
    }
}

/// The reconciler's metrics at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    passes_ok: f64,
    passes_failed: f64,
    applied: f64,
    deleted: f64,
    list: f64,
    apply: f64,
    delete: f64,
    pass_sum: f64,
    pass_count: f64,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn snap(api: &SigmaApi) -> Snap {
    let (st, v) = api.get("/metrics", ADMIN).await;
    assert_eq!(st, 200, "{v}");
    let t = v.as_str().expect("metrics text");
    let m = |n: &str| metric(t, n);
    Snap {
        passes_ok: m("sigma_api_mesh_passes_total{result=\"ok\"}"),
        passes_failed: m("sigma_api_mesh_passes_total{result=\"failed\"}"),
        applied: m("sigma_api_mesh_objects_applied_total"),
        deleted: m("sigma_api_mesh_objects_deleted_total"),
        list: m("sigma_api_mesh_kube_calls_total{verb=\"list\"}"),
        apply: m("sigma_api_mesh_kube_calls_total{verb=\"apply\"}"),
        delete: m("sigma_api_mesh_kube_calls_total{verb=\"delete\"}"),
        pass_sum: m("sigma_api_mesh_pass_duration_seconds_sum"),
        pass_count: m("sigma_api_mesh_pass_duration_seconds_count"),
    }
}

/// What kube-apiserver says about itself: time spent on sigma's calls (the Istio group) by
/// verb, and its Go heap.
#[derive(Debug, Clone, Copy, Default)]
struct KubeSnap {
    apply_sum: f64,
    apply_count: f64,
    list_sum: f64,
    list_count: f64,
    /// GETs, and lists filtered to one name (the API server counts those as GETs).
    get_sum: f64,
    heap_inuse: f64,
    /// The live heap as of the last GC.
    heap_live: f64,
}

async fn kube_snap(cp: &ControlPlane) -> KubeSnap {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let t = cp
        .admin
        .request_text(req)
        .await
        .expect("kube-apiserver metrics");
    let sum = |series: &str, verb: &str| -> f64 {
        t.lines()
            .filter(|l| {
                l.starts_with(series)
                    && l.contains("group=\"networking.istio.io\"")
                    && l.contains(&format!("verb=\"{verb}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    KubeSnap {
        apply_sum: sum("apiserver_request_duration_seconds_sum{", "APPLY"),
        apply_count: sum("apiserver_request_duration_seconds_count{", "APPLY"),
        list_sum: sum("apiserver_request_duration_seconds_sum{", "LIST"),
        list_count: sum("apiserver_request_duration_seconds_count{", "LIST"),
        get_sum: sum("apiserver_request_duration_seconds_sum{", "GET"),
        heap_inuse: metric(&t, "go_memstats_heap_inuse_bytes"),
        heap_live: metric(&t, "go_gc_heap_live_bytes"),
    }
}

impl KubeSnap {
    /// Mean server time of an apply and of a list page between `self` and a later snapshot, ms.
    fn means(&self, later: &KubeSnap) -> (f64, f64) {
        let m = |s: f64, c: f64| if c > 0.0 { s / c * 1000.0 } else { 0.0 };
        (
            m(
                later.apply_sum - self.apply_sum,
                later.apply_count - self.apply_count,
            ),
            m(
                later.list_sum - self.list_sum,
                later.list_count - self.list_count,
            ),
        )
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// etcd's `db_total_size` and `db_total_size_in_use`, in bytes.
async fn etcd_size(cp: &ControlPlane) -> (f64, f64) {
    let t = reqwest::get(format!("{}/metrics", cp.var("ETCD_URL")))
        .await
        .expect("etcd metrics")
        .text()
        .await
        .expect("etcd metrics text");
    (
        metric(&t, "etcd_mvcc_db_total_size_in_bytes"),
        metric(&t, "etcd_mvcc_db_total_size_in_use_in_bytes"),
    )
}

/// Objects of `kind` in namespace `sigma`, counted with a paginated list as the admin.
async fn count(cp: &ControlPlane, kind: &str) -> usize {
    let api = cp.istio(kind, "sigma");
    let mut n = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = token.take() {
            lp = lp.continue_token(&t);
        }
        let page = api
            .list_metadata(&lp)
            .await
            .unwrap_or_else(|e| panic!("listing {kind}: {e}"));
        n += page.items.len();
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return n,
        }
    }
}

struct Bench {
    cp: ControlPlane,
    kubeconfig: PathBuf,
    db_url: String,
    api_dir: PathBuf,
    raised_qps: usize,
}

impl Bench {
    fn options(&self, qps: usize, burst: usize) -> ApiOptions {
        ApiOptions::default()
            .database(self.db_url.clone(), self.api_dir.clone())
            .admin_key(Some(ADMIN))
            .env("SIGMA_MESH_MODE", "kubernetes")
            .env("SIGMA_KUBECONFIG", self.kubeconfig.to_str().unwrap())
            .env("SIGMA_MESH_LEADER_ELECTION", "none")
            // Passes run at start and on changes only: the benchmark decides when.
            .env("SIGMA_MESH_RESYNC_INTERVAL", "24h")
            .env("SIGMA_MESH_API_QPS", qps.to_string())
            .env("SIGMA_MESH_API_BURST", burst.to_string())
            .env("SIGMA_EASTWEST_ADDRESS", "192.0.2.1")
            .env(
                "SIGMA_LOG",
                std::env::var("MESH_SCALE_LOG").unwrap_or_else(|_| "warn".into()),
            )
    }

    async fn start(&self, qps: usize, burst: usize) -> SigmaApi {
        let o = self.options(qps, burst);
        tokio::task::spawn_blocking(move || SigmaApi::start_with(o))
            .await
            .unwrap()
    }

    /// Starts sigma-api and waits for its first successful pass; returns it, the figures'
    /// metrics, the time to listen and the time to that pass (both from the start).
    async fn first_pass(&self, qps: usize, burst: usize) -> (SigmaApi, Snap, f64, f64) {
        let t0 = Instant::now();
        let api = self.start(qps, burst).await;
        let listen = t0.elapsed().as_secs_f64();
        let mut last_note = Instant::now();
        loop {
            let s = snap(&api).await;
            if s.passes_ok >= 1.0 {
                return (api, s, listen, t0.elapsed().as_secs_f64());
            }
            if last_note.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "[mesh_scale] {:.0}s: {} applies, {} lists, {} failed passes so far",
                    t0.elapsed().as_secs_f64(),
                    s.apply,
                    s.list,
                    s.passes_failed
                );
                last_note = Instant::now();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(4 * 3600),
                "no successful pass after 4 h: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every object of the five kinds in namespace `sigma` (as the admin) and waits
    /// until they are gone.
    async fn wipe(&self) {
        for kind in KINDS {
            self.cp
                .istio(kind, "sigma")
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting {kind}: {e}"));
        }
        for kind in KINDS {
            let t0 = Instant::now();
            while count(&self.cp, kind).await > 0 {
                assert!(t0.elapsed() < Duration::from_secs(600), "{kind} not gone");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn reconcile_figures(
    r: &mut Report,
    tag: &str,
    s: &Snap,
    (listen, total): (f64, f64),
    (k0, k1): (KubeSnap, KubeSnap),
) {
    let (apply_ms, list_ms) = k0.means(&k1);
    r.put(
        &format!("first_reconcile.{tag}.server_apply_ms_mean"),
        apply_ms,
    );
    r.put(
        &format!("first_reconcile.{tag}.server_list_ms_mean"),
        list_ms,
    );
    r.put(&format!("first_reconcile.{tag}.seconds"), total);
    r.put(
        &format!("first_reconcile.{tag}.start_to_listen_seconds"),
        listen,
    );
    r.put(&format!("first_reconcile.{tag}.pass_seconds"), s.pass_sum);
    r.put(&format!("first_reconcile.{tag}.passes"), s.pass_count);
    r.put(
        &format!("first_reconcile.{tag}.failed_passes"),
        s.passes_failed,
    );
    r.put(&format!("first_reconcile.{tag}.objects_applied"), s.applied);
    r.put(&format!("first_reconcile.{tag}.calls_list"), s.list);
    r.put(&format!("first_reconcile.{tag}.calls_apply"), s.apply);
    r.put(
        &format!("first_reconcile.{tag}.applies_per_second"),
        s.applied / s.pass_sum.max(1e-9),
    );
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(n: usize) -> Report {
    let mut r = Report {
        n,
        figures: BTreeMap::new(),
    };
    let dir = work_dir(&format!("mesh-scale-{n}"));
    eprintln!("[mesh_scale] n={n}: control plane in {}", dir.display());
    // A memory limit for kube-apiserver's (and etcd's) Go GC, when the machine is too small for
    // the API server's heap at the default GOGC: the GC then runs more often instead.
    let limit = std::env::var("MESH_SCALE_KUBE_GOMEMLIMIT").unwrap_or_default();
    let mut envs = vec![("E2E_ISTIOD", "0")];
    if !limit.is_empty() {
        println!("n={n} note=kube-apiserver and etcd run with GOMEMLIMIT={limit}");
        envs.push(("GOMEMLIMIT", limit.as_str()));
    }
    let cp = ControlPlane::up(&dir.join("cp"), &envs).await;
    for f in [
        "k8s/base/rbac.yaml",
        "k8s/base/rbac-bootstrap.yaml",
        "k8s/base/serviceaccount-vm.yaml",
    ] {
        cp.apply(&repo_root().join(f));
    }
    let kubeconfig = cp.service_account_kubeconfig("sigma", "sigma-api").await;
    let (etcd_before, etcd_in_use_before) = etcd_size(&cp).await;
    let live_before = kube_snap(&cp).await.heap_live;
    let kpid: u32 = cp.var("KUBE_APISERVER_PID").parse().unwrap();
    let epid: u32 = cp.var("ETCD_PID").parse().unwrap();
    r.put("rss.kube_apiserver.empty_cluster_mib", rss(kpid).0);
    r.put("rss.etcd.empty_cluster_mib", rss(epid).0);

    // The inventory: N seeded VPS in sigma-api's database, then every purpose mesh-enabled.
    let api_dir = dir.join("api");
    std::fs::create_dir_all(&api_dir).unwrap();
    let db_url = format!("sqlite://{}", api_dir.join("sigma.db").display());
    let t0 = Instant::now();
    let store = sigma_store::Store::open(
        &sigma_store::ConnectSettings {
            url: db_url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(60),
        },
        sigma_store::StoreSettings::default(),
    )
    .await
    .expect("open the store");
    store
        .seed_bench_fleet(0, n, 5000)
        .await
        .expect("seed the fleet");
    store.close().await;
    r.put("seed_seconds", t0.elapsed().as_secs_f64());
    {
        let o = ApiOptions::default()
            .database(db_url.clone(), api_dir.clone())
            .admin_key(Some(ADMIN));
        let api = tokio::task::spawn_blocking(move || SigmaApi::start_with(o))
            .await
            .unwrap();
        for p in PURPOSES {
            let (st, v) = api
                .patch(
                    &format!("/api/purposes/{p}"),
                    ADMIN,
                    json!({"mesh": {"enabled": true}}),
                )
                .await;
            assert_eq!(st, 200, "{v}");
        }
    }
    let b = Bench {
        cp,
        kubeconfig,
        db_url,
        api_dir,
        raised_qps: env_usize("MESH_SCALE_QPS", 2000),
    };

    // 1. First full reconcile at a raised rate limit.
    let q = b.raised_qps;
    let tag = format!("qps{q}");
    let k0 = kube_snap(&b.cp).await;
    let (mut api, s, listen, total) = b.first_pass(q, q).await;
    let k1 = kube_snap(&b.cp).await;
    reconcile_figures(&mut r, &tag, &s, (listen, total), (k0, k1));
    r.put(
        "kube_apiserver.heap_inuse_after_first_reconcile_mib",
        k1.heap_inuse / 1048576.0,
    );
    r.put(
        "kube_apiserver.heap_live_after_first_reconcile_mib",
        k1.heap_live / 1048576.0,
    );
    r.put(
        "kube_apiserver.heap_live_bytes_per_vps",
        (k1.heap_live - live_before) / n as f64,
    );
    let entries = count(&b.cp, "WorkloadEntry").await;
    let groups = count(&b.cp, "WorkloadGroup").await;
    r.put("cluster.workload_entries", entries as f64);
    r.put("cluster.workload_groups", groups as f64);
    assert_eq!(entries, n, "every seeded VPS has its WorkloadEntry");
    assert_eq!(groups, n, "every seeded VPS has its WorkloadGroup");
    // The reconciler hands freed memory back once it has been quiet for 10 s: resident memory
    // is read after that, the peak (VmHWM) stays what the pass needed.
    tokio::time::sleep(QUIET).await;
    let (rss_now, hwm) = rss(api.pid().unwrap());
    r.put("rss.sigma_api.after_first_reconcile_mib", rss_now);
    r.put("rss.sigma_api.peak_first_reconcile_mib", hwm);
    let (k_rss, k_hwm) = rss(kpid);
    r.put("rss.kube_apiserver.after_first_reconcile_mib", k_rss);
    r.put("rss.kube_apiserver.peak_after_first_reconcile_mib", k_hwm);
    let (e_rss, _) = rss(epid);
    r.put("rss.etcd.after_first_reconcile_mib", e_rss);
    let (etcd_total, etcd_in_use) = etcd_size(&b.cp).await;
    r.put("etcd.db_total_bytes", etcd_total);
    r.put("etcd.db_in_use_bytes", etcd_in_use);
    r.put(
        "etcd.bytes_per_vps",
        (etcd_in_use - etcd_in_use_before) / n as f64,
    );
    r.put(
        "etcd.db_file_growth_bytes_per_vps",
        (etcd_total - etcd_before) / n as f64,
    );
    api.stop();

    // 2. The same at the default rate limit, from an empty namespace.
    let default_max = env_usize("MESH_SCALE_DEFAULT_QPS_MAX", 10_000);
    if n <= default_max {
        b.wipe().await;
        let k0 = kube_snap(&b.cp).await;
        let (mut api, s, listen, total) = b.first_pass(50, 100).await;
        let k1 = kube_snap(&b.cp).await;
        reconcile_figures(&mut r, "qps50", &s, (listen, total), (k0, k1));
        api.stop();
    } else {
        // The limiter sets the pace: (objects - burst) / 50 per second, plus the pass's reads.
        let objects = r.figures[&format!("first_reconcile.{tag}.objects_applied")];
        r.put(
            "first_reconcile.qps50.estimated_seconds",
            (objects - 100.0).max(0.0) / 50.0
                + r.figures[&format!("first_reconcile.{tag}.seconds")],
        );
    }

    // 3. A resync with nothing changed: the first pass of a restarted sigma-api.
    let k0 = kube_snap(&b.cp).await;
    let (api, s, listen, total) = b.first_pass(50, 100).await;
    let k1 = kube_snap(&b.cp).await;
    r.put("steady_resync.server_list_ms_mean", k0.means(&k1).1);
    r.put(
        "steady_resync.server_list_seconds_total",
        k1.list_sum - k0.list_sum,
    );
    r.put("steady_resync.seconds_from_start", total);
    r.put("steady_resync.start_to_listen_seconds", listen);
    r.put("steady_resync.pass_seconds", s.pass_sum);
    r.put("steady_resync.calls_list", s.list);
    r.put("steady_resync.calls_apply", s.apply);
    r.put("steady_resync.calls_delete", s.delete);
    r.put("steady_resync.objects_written", s.applied + s.deleted);
    assert_eq!(s.applied + s.deleted, 0.0, "a steady resync writes nothing");

    // 4. Register → WorkloadEntry visible, the fleet steady.
    let registers = env_usize("MESH_SCALE_REGISTERS", 100);
    let (st, v) = api
        .post(
            "/api/enrollment-tokens",
            ADMIN,
            json!({"purpose": "xrayr", "max_uses": registers.max(1), "ttl_seconds": 86400}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    let entries_api: Api<DynamicObject> = b.cp.istio("WorkloadEntry", "sigma");
    let before = snap(&api).await;
    let k0 = kube_snap(&b.cp).await;
    let mut lat = Vec::with_capacity(registers);
    for i in 0..registers {
        let host = format!("reg-{i:04}.scale.sigma");
        let name = sigma_mesh::model::workload_entry_name(&host);
        let ok_before = snap(&api).await.passes_ok;
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let stream = entries_api.watch(&wp, "0").await.expect("watch");
        let mut stream = Box::pin(stream);
        let t = Instant::now();
        let ip = format!("203.0.{}.{}", 113 + i / 250, 1 + i % 250);
        api.register(&token, &host, &ip).await;
        let seen = tokio::time::timeout(Duration::from_secs(1800), async {
            while let Some(ev) = stream.next().await {
                if let Ok(WatchEvent::Added(_) | WatchEvent::Modified(_)) = ev {
                    return;
                }
            }
            panic!("the watch on {name} ended");
        })
        .await;
        assert!(seen.is_ok(), "{name} not visible within 30 min");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        // The pass that applied it ends (it stores the VPS's result) before the next register.
        while snap(&api).await.passes_ok <= ok_before {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = snap(&api).await;
    let k1 = kube_snap(&b.cp).await;
    if registers > 0 {
        r.put(
            "register_to_entry.server_read_seconds_per_register",
            (k1.list_sum - k0.list_sum + k1.get_sum - k0.get_sum) / registers as f64,
        );
        let mut sorted = lat.clone();
        sorted.sort_by(f64::total_cmp);
        r.put("register_to_entry.count", registers as f64);
        r.put("register_to_entry.p50_ms", pct(&sorted, 0.5));
        r.put("register_to_entry.p99_ms", pct(&sorted, 0.99));
        r.put("register_to_entry.max_ms", pct(&sorted, 1.0));
        let passes = after.pass_count - before.pass_count;
        r.put("register_to_entry.passes", passes);
        r.put(
            "register_to_entry.pass_seconds_mean",
            (after.pass_sum - before.pass_sum) / passes.max(1.0),
        );
        r.put(
            "register_to_entry.list_calls_per_register",
            (after.list - before.list) / registers as f64,
        );
        r.put(
            "register_to_entry.apply_calls_per_register",
            (after.apply - before.apply) / registers as f64,
        );
    }

    // 5. Memory with the fleet steady (and the reconciler quiet, as above).
    tokio::time::sleep(QUIET).await;
    let (a_rss, a_hwm) = rss(api.pid().unwrap());
    r.put("rss.sigma_api.steady_mib", a_rss);
    r.put("rss.sigma_api.peak_steady_process_mib", a_hwm);
    let (k_rss, k_hwm) = rss(kpid);
    r.put("rss.kube_apiserver.steady_mib", k_rss);
    r.put("rss.kube_apiserver.peak_mib", k_hwm);
    r.put(
        "kube_apiserver.heap_inuse_steady_mib",
        k1.heap_inuse / 1048576.0,
    );
    r.put(
        "kube_apiserver.heap_live_steady_mib",
        k1.heap_live / 1048576.0,
    );
    let (e_rss, e_hwm) = rss(epid);
    r.put("rss.etcd.steady_mib", e_rss);
    r.put("rss.etcd.peak_mib", e_hwm);
    drop(api);
    drop(b);
    r
}

/// The growth exponent of each figure between consecutive sizes: cost ∝ n^b.
fn growth(reports: &[Report]) {
    for w in reports.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let ratio = (b.n as f64 / a.n as f64).ln();
        for (k, vb) in &b.figures {
            let Some(va) = a.figures.get(k) else { continue };
            if *va > 0.0 && *vb > 0.0 && !k.ends_with(".count") {
                println!(
                    "growth {}->{} {k}: {va:.3} -> {vb:.3} exponent={:.2}",
                    a.n,
                    b.n,
                    (vb / va).ln() / ratio
                );
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("MESH_SCALE_SIZES")
        .unwrap_or_else(|_| "1000 10000 100000".into())
        .split_whitespace()
        .map(|s| s.parse().expect("MESH_SCALE_SIZES: sizes"))
        .collect();
    println!(
        "mesh_scale: real etcd + kube-apiserver + Istio CRDs, no istiod (E2E_ISTIOD=0); sigma-api {} with its shipped RBAC; sizes {sizes:?}",
        sigma_testkit::bin("sigma-api").display()
    );
    let mut reports = Vec::new();
    for n in sizes {
        reports.push(run(n).await);
    }
    growth(&reports);
}

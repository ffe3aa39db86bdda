//! Desired-state computation and diff at fleet scale: 10,000 VPS over 5 purposes.
//!
//! Run with `cargo bench -p sigma-mesh`. Prints min/median/max milliseconds of several runs for
//! (a) computing the desired state, (b) diffing it against an identical actual set (must be
//! zero writes) and (c) diffing against an actual set where 1,000 WorkloadEntries differ, and
//! prints computation plus steady-state diff at the median next to the 50 ms target (a figure
//! to read, not an assertion: timings on a shared machine are not a test).
//!
//! Then, at 10,000 and 100,000 VPS (`SIGMA_BENCH_SCALES`, comma-separated), what each VPS's
//! objects cost: objects by kind (a WorkloadGroup and a WorkloadEntry per meshed VPS), the
//! JSON bytes of each (the body of its server-side apply, the part of its etcd value sigma
//! writes), and the times of the desired state and of the steady-state diff.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use sigma_mesh::objects::MeshObject;
use sigma_mesh::{MeshPurpose, MeshSettings, MeshTemplate, MeshVps, desired_state, diff};
use sigma_types::{IpAddress, VpsStatus};
use uuid::Uuid;

const VPS: usize = 10_000;
const CHANGED: usize = 1_000;
const RUNS: usize = 15;
const BUDGET_MS: f64 = 50.0;

fn purposes() -> Vec<MeshPurpose> {
    let settings = [
        (
            "xrayr",
            json!({"enabled": true,
                "ports": [{"name": "vless", "number": 443, "protocol": "TCP"},
                          {"name": "metrics", "number": 9100, "protocol": "HTTP"}],
                "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"},
                           {"host": "redis.sigma.svc.cluster.local", "port": 6379, "protocol": "Redis"}]}),
        ),
        (
            "vpn-exit",
            json!({"enabled": true, "ports": [{"name": "wg", "number": 51820, "protocol": "UDP"}],
                   "probe": {"tcp_socket": {"port": 22}}}),
        ),
        (
            "scraper",
            json!({"enabled": true, "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]}),
        ),
        (
            "relay",
            json!({"enabled": true, "network": "overlay",
                   "ports": [{"name": "grpc", "number": 7443, "protocol": "GRPC"}]}),
        ),
        ("cache", json!({"enabled": false})),
    ];
    settings
        .into_iter()
        .map(|(name, mesh)| MeshPurpose {
            name: name.into(),
            settings: MeshSettings::from_json(&mesh).expect("valid settings"),
        })
        .collect()
}

fn fleet() -> Vec<MeshVps> {
    fleet_of(VPS)
}

fn fleet_of(n: usize) -> Vec<MeshVps> {
    let purposes = ["xrayr", "vpn-exit", "scraper", "relay", "cache"];
    let providers = [
        "hetzner",
        "OVH",
        "DigitalOcean",
        "Vultr LLC",
        "Contabo GmbH",
        "linode",
    ];
    let places = [
        ("DE", "Falkenstein"),
        ("FR", "Roubaix"),
        ("US", "New York"),
        ("BR", "São Paulo"),
        ("JP", "東京"),
        ("SG", "Singapore"),
    ];
    (0..n)
        .map(|i| {
            let (country, city) = places[i % places.len()];
            let provider = providers[i % providers.len()];
            let status = match i % 20 {
                0 => VpsStatus::Provisioning,
                1 => VpsStatus::Retired,
                _ => VpsStatus::Active,
            };
            let mut ips = vec![IpAddress {
                ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                label: "private".into(),
            }];
            if i % 7 == 0 {
                ips.push(IpAddress {
                    ip: format!("2001:db8::{:x}", i + 1),
                    label: "public".into(),
                });
            } else {
                ips.push(IpAddress {
                    ip: format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255),
                    label: "public".into(),
                });
            }
            MeshVps {
                id: Uuid::from_u128(0x5157_0000_0000_0000_0000_0000_0000_0000 + i as u128),
                hostname: format!(
                    "node-{i}.{}.example.net",
                    provider.to_lowercase().replace(' ', "-")
                ),
                status,
                purpose: purposes[i % purposes.len()].into(),
                provider: Some(provider.into()),
                country: Some(country.into()),
                city: Some(city.into()),
                ip_addresses: ips,
                mesh_opt_out: i % 97 == 0,
            }
        })
        .collect()
}

fn time<T>(mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = black_box(f());
        times.push(start.elapsed());
        last = Some(out);
    }
    times.sort();
    (times, last.expect("at least one run"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, times: &[Duration]) -> f64 {
    let median = ms(times[times.len() / 2]);
    println!(
        "{what:<44} min {:>7.2} ms  median {:>7.2} ms  max {:>7.2} ms",
        ms(times[0]),
        median,
        ms(times[times.len() - 1])
    );
    median
}

fn main() {
    let template = MeshTemplate::default();
    let purposes = purposes();
    let vps = fleet();

    let (t_compute, state) =
        time(|| desired_state(&template, &purposes, &vps).expect("desired state"));
    let entries = state
        .objects
        .iter()
        .filter(|o| matches!(o, MeshObject::WorkloadEntry(_)))
        .count();
    println!(
        "inventory: {VPS} VPS, {} purposes; desired: {} objects ({entries} WorkloadEntries), {} skipped",
        purposes.len(),
        state.objects.len(),
        state.skipped.len()
    );
    assert!(
        entries > 6_000,
        "fixture should mesh most VPS, got {entries}"
    );

    let actual = state.objects.clone();
    let (t_steady, steady) = time(|| diff(&state.objects, &actual));
    println!("steady-state diff: {} writes", steady.writes());
    assert_eq!(
        steady.writes(),
        0,
        "identical actual set must need no writes"
    );

    let mut changed = actual.clone();
    let mut n = 0;
    for o in &mut changed {
        if n == CHANGED {
            break;
        }
        if let MeshObject::WorkloadEntry(r) = o {
            r.spec.address = format!("192.0.2.{}", n % 250 + 1);
            n += 1;
        }
    }
    assert_eq!(n, CHANGED);
    let (t_changed, plan) = time(|| diff(&state.objects, &changed));
    println!("diff with {CHANGED} changed: {} writes", plan.writes());
    assert_eq!(plan.apply.len(), CHANGED);
    assert!(plan.delete.is_empty());

    println!("runs per figure: {RUNS}");
    let a = report("(a) desired state, 10,000 VPS", &t_compute);
    let b = report("(b) diff, identical actual (0 writes)", &t_steady);
    report("(c) diff, 1,000 changed (1,000 writes)", &t_changed);
    let total = a + b;
    println!(
        "(a)+(b) median: {total:.2} ms (target {BUDGET_MS} ms: {})",
        if total < BUDGET_MS { "within" } else { "OVER" }
    );

    let scales = std::env::var("SIGMA_BENCH_SCALES").unwrap_or_else(|_| "10000,100000".into());
    for n in scales
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
    {
        scale(&template, &purposes, n);
    }
}

/// Objects and bytes per VPS at `n` VPS, and the time of a desired state and a steady diff.
fn scale(template: &MeshTemplate, purposes: &[MeshPurpose], n: usize) {
    let vps = fleet_of(n);
    let start = Instant::now();
    let state = desired_state(template, purposes, &vps).expect("desired state");
    let t_compute = start.elapsed();
    let actual = state.objects.clone();
    let start = Instant::now();
    let plan = diff(&state.objects, &actual);
    let t_diff = start.elapsed();
    assert_eq!(plan.writes(), 0);
    let mut by_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for o in &state.objects {
        let bytes = serde_json::to_vec(o).expect("json").len();
        let e = by_kind.entry(o.kind().as_str()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let (groups, group_bytes) = by_kind["WorkloadGroup"];
    let (entries, entry_bytes) = by_kind["WorkloadEntry"];
    assert_eq!(groups, entries, "one group per entry");
    println!(
        "scale {n} VPS: {} objects ({entries} WorkloadEntries, {groups} WorkloadGroups, {} others); \
         first pass writes {} objects, {:.2} per meshed VPS",
        state.objects.len(),
        state.objects.len() - groups - entries,
        state.objects.len(),
        state.objects.len() as f64 / entries as f64,
    );
    println!(
        "scale {n} VPS: JSON bytes per VPS: WorkloadEntry {:.0}, WorkloadGroup {:.0} (+{:.0} %); \
         desired state {:.1} ms, steady-state diff {:.1} ms (one run)",
        entry_bytes as f64 / entries as f64,
        group_bytes as f64 / groups as f64,
        100.0 * group_bytes as f64 / entry_bytes as f64,
        ms(t_compute),
        ms(t_diff),
    );
}

//! One reconcile pass, and the loop that decides when passes run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use sigma_mesh::objects::VPS_ID_LABEL;
use sigma_mesh::{Kind, MeshObject, MeshTemplate, ObjectKey, SkipReason};
use sigma_store::Store;
use sigma_store::mesh::{MeshInputs, MeshStatusUpdate, MeshVpsRow};
use sigma_types::MeshSyncStatus;
use sigma_types::backoff::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::{Actual, Cluster};
use crate::desired::desired;
use crate::metrics::{FailureKind, Stats};
use crate::{Error, Result};

/// When passes run.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// The mesh template (namespace, service domain, service account, network).
    pub template: MeshTemplate,
    /// Full pass (a list of the namespace) even without a change notice, to repair drift in
    /// the cluster. Passes for a change notice in between start from what the last pass left
    /// ([`Reconciler::pass_from_known`]).
    pub resync: Duration,
    /// Wait after a change notice before the pass, so a burst of changes costs one pass.
    pub debounce: Duration,
    /// First retry delay after a failed pass; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Applies and deletes in flight at once.
    pub concurrency: usize,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            template: MeshTemplate::default(),
            resync: Duration::from_secs(300),
            debounce: Duration::from_millis(100),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            concurrency: 8,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Objects desired.
    pub desired: usize,
    /// Objects applied.
    pub applied: usize,
    /// Objects deleted.
    pub deleted: usize,
    /// Desired objects left alone because another tool owns their name.
    pub conflicts: usize,
    /// Objects whose apply or delete failed, with the reason.
    pub failures: Vec<(ObjectKey, String)>,
    /// VPS status rows written.
    pub statuses_written: u64,
    /// Whether it listed the whole namespace (else it read only the objects it wrote).
    pub listed: bool,
    /// Where the pass spent its time.
    pub timings: PassTimings,
}

/// Where a pass spent its time, for the logs (the whole pass is the
/// `pass_duration_seconds` histogram).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassTimings {
    /// Reading the inventory and computing the desired state.
    pub desired: Duration,
    /// Reading the cluster (a list of the namespace, or the objects to write) and diffing.
    pub list: Duration,
    /// Applies and deletes.
    pub writes: Duration,
    /// Storing the VPS's results.
    pub store: Duration,
}

/// The mesh reconciler of one replica.
pub struct Reconciler {
    store: Store,
    cluster: Arc<Cluster>,
    settings: ReconcilerSettings,
    /// Counters (cloning shares them; [`Stats::register`] exports them).
    pub stats: Stats,
    /// The cluster as the last successful pass left it (see [`Reconciler::pass_from_known`]).
    known: std::sync::Mutex<Option<Actual>>,
}

/// Where a pass takes the cluster's state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A list of the whole namespace.
    List,
    /// What the last pass left, with the objects to write read again.
    Known,
}

/// Why a whole pass failed, as the VPS waiting for it are told. The stored status is text, so
/// the texts' openings are how a later pass recognises (and replaces) what an earlier failed
/// pass wrote: they are defined here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassFailure {
    /// Stored purposes' mesh settings no longer validate; nothing changes until they are fixed.
    InvalidPurposes,
    /// Anything else (the cluster, the store); the pass is retried.
    Retrying,
}

impl PassFailure {
    const INVALID_PURPOSES: &str =
        "the mesh is not reconciled until stored mesh settings are fixed";
    const RETRYING: &str = "not reconciled yet";

    fn of(e: &Error) -> PassFailure {
        match e {
            Error::InvalidPurposes(_) => PassFailure::InvalidPurposes,
            _ => PassFailure::Retrying,
        }
    }

    /// The status message of a VPS after a pass failed with `e`.
    fn message(self, e: &Error) -> String {
        match (self, e) {
            (PassFailure::InvalidPurposes, Error::InvalidPurposes(list)) => {
                let parts: Vec<String> = list
                    .iter()
                    .map(|p| format!("purpose {}: {}", p.name, p.errors))
                    .collect();
                format!("{} ({})", Self::INVALID_PURPOSES, parts.join(" | "))
            }
            (_, other) => format!("{}: {other}; retrying", Self::RETRYING),
        }
    }

    /// Whether a stored status message was written by a failed pass.
    fn wrote(message: &str) -> bool {
        message.starts_with(Self::RETRYING) || message.starts_with(Self::INVALID_PURPOSES)
    }
}

/// Per-object outcome of the writes of a pass.
#[derive(Default)]
struct Outcome {
    /// Failed applies by object key.
    apply_failed: HashMap<ObjectKey, String>,
    /// Failed deletes of a VPS's WorkloadEntry or WorkloadGroup, by VPS id: the key and why.
    delete_failed: HashMap<String, (ObjectKey, String)>,
    /// Desired objects whose name another tool's object holds.
    conflicts: HashSet<ObjectKey>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Reconciler {
    /// A reconciler over `store` and `cluster`.
    pub fn new(store: Store, cluster: Arc<Cluster>, settings: ReconcilerSettings) -> Self {
        Reconciler {
            store,
            cluster,
            settings,
            stats: Stats::default(),
            known: std::sync::Mutex::new(None),
        }
    }

    /// The cluster it talks to (for its call counters).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// One full level-triggered pass: desired state from the database, actual state from a
    /// list of the whole namespace, then the writes that close the gap, then the result of
    /// every VPS stored. Returns `Err` when nothing could be reconciled (inventory unreadable,
    /// purposes invalid, listing failed); failures of single objects are in the report.
    pub async fn pass(&self) -> Result<PassReport> {
        self.pass_with(Source::List).await
    }

    /// A pass for a change in the inventory: the same, but against the cluster's state as the
    /// last pass left it (what it listed, with its own writes since) instead of a list of the
    /// whole namespace. Only the objects it is about to write (or leaves alone as another
    /// tool's) are read from the cluster, with a list filtered to each name, and the plan is
    /// made again with what they are now: so a register costs two reads and two applies, not
    /// a list of every object of the fleet. Drift in objects it does not write waits for the
    /// periodic full pass (`resync`), which is what that pass is for.
    ///
    /// It is [`Reconciler::pass`] when there is no known state (the first pass, after a failed
    /// or interrupted pass, after leadership changed) or when it would read more objects than
    /// a full list takes calls.
    pub async fn pass_from_known(&self) -> Result<PassReport> {
        self.pass_with(Source::Known).await
    }

    /// Forgets the known state: the next pass lists the namespace.
    fn forget_known(&self) -> Option<Actual> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    async fn pass_with(&self, source: Source) -> Result<PassReport> {
        // Taken for the pass and put back only when it succeeds: a pass that fails, or is
        // dropped when leadership is lost, leaves none behind, and the next one lists.
        let known = self.forget_known().filter(|_| source == Source::Known);
        let mut clock = std::time::Instant::now();
        let mut lap = move || {
            let now = std::time::Instant::now();
            std::mem::replace(&mut clock, now).elapsed()
        };
        let mut timings = PassTimings::default();
        let inputs = self.store.mesh_inputs().await?;
        let desired = match desired(&self.settings.template, &inputs) {
            Ok(d) => d,
            Err(e) => {
                self.fail_pending(&inputs, &e).await;
                return Err(e);
            }
        };
        timings.desired = lap();
        let (mut actual, mut listed) = match known {
            Some(a) => (a, false),
            None => match self.cluster.list().await {
                Ok(a) => (a, true),
                Err(e) => {
                    self.fail_pending(&inputs, &e).await;
                    return Err(e);
                }
            },
        };
        let objects = &desired.state.objects;
        let mut plan = plan(objects, &actual);
        if !listed {
            let keys = plan_keys(&plan);
            let read = if keys.len() > self.cluster.list_calls(actual.objects.len()) {
                // Many writes (a purpose enabled, an import): a list is fewer calls.
                self.cluster.list().await.map(|a| {
                    actual = a;
                    listed = true;
                })
            } else {
                self.refresh(&keys, &mut actual).await
            };
            if let Err(e) = read {
                self.fail_pending(&inputs, &e).await;
                return Err(e);
            }
            plan = if listed {
                self::plan(objects, &actual)
            } else {
                replan(plan, objects, &actual, &keys)
            };
        }
        for k in &plan.conflicts {
            tracing::warn!(object = %k, "name taken by an object sigma does not manage; left alone");
        }
        let mut outcome = Outcome {
            conflicts: plan.conflicts.iter().cloned().collect(),
            ..Outcome::default()
        };
        timings.list = lap();

        let mut report = PassReport {
            desired: desired.state.objects.len(),
            conflicts: plan.conflicts.len(),
            ..PassReport::default()
        };
        // Applies in the model's order (a VPS's group before its entry), a few at a time. The futures
        // own what they use, so the pass stays `Send` for any lifetime.
        let n = self.settings.concurrency.max(1);
        // Each object moves into its apply and comes back with the answer: a pass of 200,000
        // applies holds one copy of them, not three.
        type Applied = (MeshObject, Result<Option<String>>);
        let applies: Vec<BoxFuture<'static, Applied>> = std::mem::take(&mut plan.apply)
            .into_iter()
            .map(|o| {
                let cluster = self.cluster.clone();
                async move {
                    let r = cluster.apply(&o).await;
                    (o, r)
                }
                .boxed()
            })
            .collect();
        let applies: Vec<Applied> = futures_util::stream::iter(applies)
            .buffer_unordered(n)
            .collect()
            .await;
        // What the cluster holds now, for the next pass: the object and its UID.
        let mut applied = Vec::with_capacity(applies.len());
        for (o, r) in applies {
            match r {
                Ok(uid) => {
                    report.applied += 1;
                    applied.push((o, uid));
                }
                Err(e) => {
                    let key = o.key();
                    tracing::warn!(object = %key, error = %e, "apply failed");
                    outcome.apply_failed.insert(key.clone(), e.to_string());
                    report.failures.push((key, e.to_string()));
                }
            }
        }
        let deletes: Vec<BoxFuture<'static, (ObjectKey, Result<()>)>> = plan
            .delete
            .iter()
            .map(|k| {
                let (cluster, k) = (self.cluster.clone(), k.clone());
                let uid = actual.uids.get(&k).cloned();
                async move {
                    let r = cluster.delete(&k, uid.as_deref()).await;
                    (k, r)
                }
                .boxed()
            })
            .collect();
        let deletes: Vec<_> = futures_util::stream::iter(deletes)
            .buffer_unordered(n)
            .collect()
            .await;
        let mut deleted = HashSet::new();
        for (key, r) in deletes {
            match r {
                Ok(()) => {
                    report.deleted += 1;
                    deleted.insert(key);
                }
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "delete failed");
                    if matches!(key.kind, Kind::WorkloadEntry | Kind::WorkloadGroup)
                        && let Some(owner) = actual.entry_owner.get(&key)
                    {
                        // The entry's failure wins: it is what takes the VPS out of the mesh.
                        let keep = outcome
                            .delete_failed
                            .get(owner)
                            .is_some_and(|(k, _)| k.kind == Kind::WorkloadEntry);
                        if !keep {
                            outcome
                                .delete_failed
                                .insert(owner.clone(), (key.clone(), e.to_string()));
                        }
                    }
                    report.failures.push((key, e.to_string()));
                }
            }
        }
        report.failures.sort();
        report.listed = listed;
        if report.failures.is_empty() {
            // The cluster as this pass leaves it: what it read, with its writes.
            let mut touched = deleted;
            touched.extend(applied.iter().map(|(o, _)| o.key()));
            actual.forget(&touched);
            for (o, uid) in applied {
                actual.applied(o, uid);
            }
            *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(actual);
        }
        timings.writes = lap();

        let updates = self.statuses(&inputs, &desired.state, &outcome);
        report.statuses_written = self.store.write_mesh_statuses(&updates, now_ms()).await?;
        timings.store = lap();
        report.timings = timings;
        self.stats.wrote(report.applied, report.deleted);
        Ok(report)
    }

    /// Reads `keys` again, one filtered list each (a few at a time), and puts what the
    /// cluster holds of them now into `actual`.
    async fn refresh(&self, keys: &HashSet<ObjectKey>, actual: &mut Actual) -> Result<()> {
        type Read = Result<(Kind, Option<kube::api::DynamicObject>)>;
        let reads: Vec<BoxFuture<'static, Read>> = keys
            .iter()
            .map(|k| {
                let (cluster, k) = (self.cluster.clone(), k.clone());
                async move { Ok((k.kind, cluster.list_one(k.kind, &k.name).await?)) }.boxed()
            })
            .collect();
        let reads: Vec<Read> = futures_util::stream::iter(reads)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut found = Vec::new();
        for r in reads {
            if let (kind, Some(obj)) = r? {
                found.push((kind, obj));
            }
        }
        actual.forget(keys);
        for (kind, obj) in found {
            self.cluster.take_listed(kind, obj, actual);
        }
        Ok(())
    }

    /// After a failed pass, VPS waiting for the reconciler (`pending`) show why they wait.
    /// VPS already `synced` keep that status: what the cluster held last is still there.
    async fn fail_pending(&self, inputs: &MeshInputs, e: &Error) {
        let message = PassFailure::of(e).message(e);
        let updates: Vec<MeshStatusUpdate> = inputs
            .vps
            .iter()
            .filter(|r| {
                r.status.status == MeshSyncStatus::Pending
                    || (r.status.status == MeshSyncStatus::Error
                        && r.status.message.as_deref() != Some(message.as_str())
                        && r.status.message.as_deref().is_some_and(PassFailure::wrote))
            })
            .map(|r| MeshStatusUpdate {
                id: r.vps.id,
                seen_updated_at: r.updated_at,
                status: MeshSyncStatus::Error,
                message: Some(message.clone()),
                workload_entry: r.status.workload_entry.clone(),
            })
            .collect();
        if let Err(e) = self.store.write_mesh_statuses(&updates, now_ms()).await {
            tracing::warn!(error = %e, "storing mesh statuses failed");
        }
    }

    /// The result of every VPS whose stored result differs from this pass's.
    fn statuses(
        &self,
        inputs: &MeshInputs,
        state: &sigma_mesh::DesiredState,
        outcome: &Outcome,
    ) -> Vec<MeshStatusUpdate> {
        // Each desired WorkloadEntry and WorkloadGroup, by the VPS it stands for.
        let mut entries: HashMap<&str, &MeshObject> = HashMap::new();
        let mut groups: HashMap<&str, &MeshObject> = HashMap::new();
        for o in &state.objects {
            let by = match o.kind() {
                Kind::WorkloadEntry => &mut entries,
                Kind::WorkloadGroup => &mut groups,
                _ => continue,
            };
            if let Some(id) = o.metadata().labels.get(VPS_ID_LABEL) {
                by.insert(id.as_str(), o);
            }
        }
        let skipped: HashMap<Uuid, &SkipReason> =
            state.skipped.iter().map(|s| (s.id, &s.reason)).collect();
        let enabled: HashSet<&str> = inputs
            .purposes
            .iter()
            .filter(|p| p.settings.enabled)
            .map(|p| p.name.as_str())
            .collect();
        let mut out = Vec::new();
        for row in &inputs.vps {
            let id = row.vps.id.to_string();
            let (status, message, entry) = if let Some(o) = entries.get(id.as_str()) {
                let key = o.key();
                // The entry puts the VPS in the mesh, its group makes it Kiali's workload:
                // synced means both are in the cluster as desired. The group is applied
                // first, so its failure is reported before the entry's.
                let group = groups.get(id.as_str()).map(|g| g.key());
                let failed = group
                    .iter()
                    .chain([&key])
                    .find_map(|k| outcome.apply_failed.get(k).map(|e| (k, e)));
                let conflict = group
                    .iter()
                    .chain([&key])
                    .find(|k| outcome.conflicts.contains(*k));
                if let Some((k, err)) = failed {
                    (
                        MeshSyncStatus::Error,
                        Some(format!("applying {} {} failed: {err}", k.kind, k.name)),
                        row.status.workload_entry.clone(),
                    )
                } else if let Some(k) = conflict {
                    (
                        MeshSyncStatus::Error,
                        Some(format!(
                            "a {} named {} exists in namespace {} and is not managed by sigma; sigma leaves it alone",
                            k.kind, k.name, k.namespace
                        )),
                        (k.kind != Kind::WorkloadEntry).then(|| key.name.clone()),
                    )
                } else {
                    (MeshSyncStatus::Synced, None, Some(key.name))
                }
            } else if let Some((k, err)) = outcome.delete_failed.get(&id) {
                (
                    MeshSyncStatus::Error,
                    Some(format!("removing {} {} failed: {err}", k.kind, k.name)),
                    Some(k.name.clone()),
                )
            } else if let Some(reason) = skipped.get(&row.vps.id) {
                (MeshSyncStatus::Error, Some(reason.to_string()), None)
            } else {
                (
                    MeshSyncStatus::NotMeshed,
                    Some(not_meshed_reason(row, &enabled)),
                    None,
                )
            };
            let s = &row.status;
            if s.status != status || s.message != message || s.workload_entry != entry {
                out.push(MeshStatusUpdate {
                    id: row.vps.id,
                    seen_updated_at: row.updated_at,
                    status,
                    message,
                    workload_entry: entry,
                });
            }
        }
        out
    }

    /// Runs passes while this replica leads, until `shutdown`: at once on gaining leadership,
    /// after each change notice from the store (debounced), every `resync`, and after a failure
    /// with capped exponential backoff. A pass in progress stops when leadership is lost. The
    /// first pass, each resync and the pass after a failure list the namespace
    /// ([`Reconciler::pass`]); a pass for a change starts from what the last one left
    /// ([`Reconciler::pass_from_known`]).
    pub async fn run(self, mut leader: watch::Receiver<bool>, shutdown: CancellationToken) {
        let mut changes = self.store.mesh_changes();
        loop {
            // Follow, until leading.
            self.stats.set_leader(false);
            while !*leader.borrow_and_update() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = leader.changed() => if r.is_err() { return },
                }
            }
            self.stats.set_leader(true);
            tracing::info!("leading: reconciling the mesh");
            if !self.lead(&mut leader, &mut changes, &shutdown).await {
                return;
            }
            tracing::info!("no longer leading; stopped reconciling");
        }
    }

    /// The leading part of [`Reconciler::run`]; false when it should stop for good.
    async fn lead(
        &self,
        leader: &mut watch::Receiver<bool>,
        changes: &mut watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> bool {
        // Exact: only the leader reconciles, so there is no crowd to spread out.
        let mut backoff = Backoff::exact(self.settings.min_backoff, self.settings.max_backoff);
        // When the next pass runs, and before when a change notice may not pull it (while the
        // API server is failing, notices wait for the backoff).
        let mut due = Instant::now();
        let mut hold_until = Instant::now();
        // When the next full pass (a list of the namespace) is due; passes before it start from
        // what the last one left. A replica that just gained leadership lists first.
        let mut resync_at = Instant::now();
        // When to hand the memory passes freed back to the OS: once the reconciler has been
        // quiet for a while, not after every pass, so a burst of changes keeps its working set
        // (re-faulting it cost a change pass at 100,000 VPS about a second).
        let mut release_at: Option<Instant> = None;
        self.forget_known();
        changes.borrow_and_update();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = leader.changed() => {
                    if r.is_err() { return false; }
                    if !*leader.borrow_and_update() { return true; }
                }
                r = changes.changed() => {
                    if r.is_err() { return false; }
                    changes.borrow_and_update();
                    let soon = (Instant::now() + self.settings.debounce).max(hold_until);
                    due = due.min(soon);
                }
                _ = tokio::time::sleep_until(release_at.unwrap_or(due)), if release_at.is_some_and(|t| t < due) => {
                    release_at = None;
                    crate::memory::release_freed();
                }
                _ = tokio::time::sleep_until(due) => {
                    let started = Instant::now();
                    let source = if started >= resync_at { Source::List } else { Source::Known };
                    let result = tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        r = wait_lost(leader) => {
                            if r { return false; }
                            return true;
                        }
                        r = self.pass_with(source) => r,
                    };
                    release_at = Some(Instant::now() + crate::memory::RELEASE_AFTER_QUIET);
                    let took = started.elapsed();
                    self.stats.pass_took(took.as_secs_f64());
                    let elapsed_ms = took.as_millis() as u64;
                    let now = Instant::now();
                    match result {
                        Ok(r) if r.failures.is_empty() => {
                            backoff.reset();
                            self.stats.pass_ok(now_ms() / 1000);
                            let t = r.timings;
                            let (desired_ms, list_ms, writes_ms, store_ms) = (
                                t.desired.as_millis() as u64,
                                t.list.as_millis() as u64,
                                t.writes.as_millis() as u64,
                                t.store.as_millis() as u64,
                            );
                            if r.applied + r.deleted + r.statuses_written as usize > 0 {
                                tracing::info!(desired = r.desired, applied = r.applied, deleted = r.deleted,
                                    conflicts = r.conflicts, statuses = r.statuses_written, listed = r.listed,
                                    elapsed_ms, desired_ms, list_ms, writes_ms, store_ms, "mesh reconciled");
                            } else {
                                tracing::debug!(desired = r.desired, listed = r.listed, elapsed_ms,
                                    desired_ms, list_ms, writes_ms, store_ms, "mesh in sync");
                            }
                            if r.listed {
                                resync_at = now + self.settings.resync;
                            }
                            due = resync_at;
                            hold_until = now;
                        }
                        Ok(r) => {
                            self.stats.pass_failed(FailureKind::Objects);
                            let delay = backoff.next_delay();
                            tracing::warn!(failed = r.failures.len(), applied = r.applied, deleted = r.deleted,
                                retry_in_ms = delay.as_millis() as u64, "mesh partly reconciled");
                            // Other changes may still go through at once; the failed objects
                            // are retried after the delay.
                            due = now + delay;
                            hold_until = now;
                        }
                        Err(e) => {
                            self.stats.pass_failed(FailureKind::of(&e));
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mesh not reconciled");
                            due = now + delay;
                            hold_until = due;
                        }
                    }
                }
            }
        }
    }
}

/// The writes that bring `actual` to `desired`, with the objects the diff cannot see because
/// they do not decode: another tool's holding a desired name is a conflict, sigma's own is
/// applied again when desired and deleted otherwise.
fn plan(objects: &[MeshObject], actual: &Actual) -> sigma_mesh::Plan {
    let mut plan = sigma_mesh::diff(objects, &actual.objects);
    if !actual.undecodable_foreign.is_empty() {
        plan.apply.retain(|o| {
            let k = o.key();
            if actual.undecodable_foreign.contains(&k) {
                plan.conflicts.push(k);
                false
            } else {
                true
            }
        });
    }
    if !actual.undecodable_managed.is_empty() {
        let desired_keys: HashSet<ObjectKey> = objects.iter().map(MeshObject::key).collect();
        for k in &actual.undecodable_managed {
            if desired_keys.contains(k) {
                if !plan.apply.iter().any(|o| &o.key() == k)
                    && let Some(o) = objects.iter().find(|o| &o.key() == k)
                {
                    plan.apply.push(o.clone());
                }
            } else if !plan.delete.contains(k) {
                plan.delete.push(k.clone());
            }
        }
    }
    plan
}

/// `plan` made again for `keys` only, after they were read again into `actual`: the rest of
/// the plan stands, and diffing the whole fleet again would cost as much as the first plan.
fn replan(
    mut plan: sigma_mesh::Plan,
    objects: &[MeshObject],
    actual: &Actual,
    keys: &HashSet<ObjectKey>,
) -> sigma_mesh::Plan {
    if keys.is_empty() {
        return plan;
    }
    let names: HashSet<(Kind, &str, &str)> = keys
        .iter()
        .map(|k| (k.kind, k.namespace.as_str(), k.name.as_str()))
        .collect();
    let pick = |list: &[MeshObject]| -> Vec<MeshObject> {
        list.iter()
            .filter(|o| names.contains(&o.sort_key()))
            .cloned()
            .collect()
    };
    let part = Actual {
        objects: pick(&actual.objects),
        undecodable_managed: actual
            .undecodable_managed
            .iter()
            .filter(|k| keys.contains(*k))
            .cloned()
            .collect(),
        undecodable_foreign: actual
            .undecodable_foreign
            .iter()
            .filter(|k| keys.contains(*k))
            .cloned()
            .collect(),
        ..Actual::default()
    };
    let redone = self::plan(&pick(objects), &part);
    plan.apply.retain(|o| !names.contains(&o.sort_key()));
    plan.delete.retain(|k| !keys.contains(k));
    plan.conflicts.retain(|k| !keys.contains(k));
    plan.apply.extend(redone.apply);
    plan.delete.extend(redone.delete);
    plan.conflicts.extend(redone.conflicts);
    // The model's order again (a VPS's group before its entry).
    plan.apply.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    plan.delete.sort();
    plan.conflicts.sort();
    plan
}

/// Every object a plan writes or leaves alone as another tool's.
fn plan_keys(plan: &sigma_mesh::Plan) -> HashSet<ObjectKey> {
    plan.apply
        .iter()
        .map(MeshObject::key)
        .chain(plan.delete.iter().cloned())
        .chain(plan.conflicts.iter().cloned())
        .collect()
}

/// Resolves when leadership is lost (false) or the channel closes (true).
async fn wait_lost(leader: &mut watch::Receiver<bool>) -> bool {
    loop {
        if leader.changed().await.is_err() {
            return true;
        }
        if !*leader.borrow_and_update() {
            return false;
        }
    }
}

fn not_meshed_reason(row: &MeshVpsRow, enabled: &HashSet<&str>) -> String {
    crate::inspect::not_meshed_reason(&row.vps, enabled.contains(row.vps.purpose.as_str()))
        .unwrap_or_else(|| "not meshed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pass_recognises_what_it_wrote() {
        let e = Error::Timeout(Duration::from_secs(5));
        let m = PassFailure::of(&e).message(&e);
        assert!(m.starts_with("not reconciled yet: "), "{m}");
        assert!(PassFailure::wrote(&m));
        let e = Error::InvalidPurposes(Vec::new());
        let m = PassFailure::of(&e).message(&e);
        assert!(
            m.starts_with("the mesh is not reconciled until stored mesh settings are fixed ("),
            "{m}"
        );
        assert!(PassFailure::wrote(&m));
        assert!(!PassFailure::wrote("WorkloadEntry applied"));
    }
}

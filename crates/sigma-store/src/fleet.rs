//! The in-memory side of the agent hot path: each VPS's identity and lifecycle state, and the
//! heartbeats not yet written.
//!
//! One file (about 670 lines) because the identity cache, the heartbeat queue and the flush
//! gate are one structure ([`Fleet`]): a heartbeat is checked, queued and flushed against the
//! same state, and an operator's address edit is ordered against the flush through it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sigma_types::mesh::MeshPhase;
use sigma_types::{AgentState, VpsStatus};
use sqlx::Row;
use uuid::Uuid;

use crate::Store;
use crate::db::{Sql, now_ms};
use crate::error::{Error, Result};

/// What the heartbeat path needs to know about a VPS.
#[derive(Debug, Clone, PartialEq)]
pub struct HotVps {
    /// Lower-case hostname.
    pub hostname: String,
    /// Lifecycle status.
    pub status: VpsStatus,
    /// Desired-state version.
    pub desired_version: i64,
    /// The address list as last stored or reported (JSON), to write it only when it changes.
    pub ips_json: String,
    /// Version of the VPS's Envoy routes.
    pub envoy_version: i64,
}

impl HotVps {
    /// Whether this is an older state of the VPS than `other`: both versions only ever grow in
    /// the database, so a read with a lower one was taken before a write already cached.
    fn older_than(&self, other: &HotVps) -> bool {
        (self.desired_version, self.envoy_version) < (other.desired_version, other.envoy_version)
    }
}

/// A heartbeat's effects, waiting to be written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Beat {
    pub at: i64,
    pub ips_json: Option<String>,
    pub system_info_json: Option<String>,
    pub agent_state_json: Option<String>,
    /// The facts the console counts, from the same report as `agent_state_json` (both set or
    /// both unset).
    pub mesh: Option<MeshFacts>,
}

/// What the console's overview counts from an agent's mesh report, kept in columns of their
/// own (migration 0009) so that counting them reads an index, not every row's JSON. Each is
/// `None` when unknown: a classic-mode agent, or a mesh agent that does not know yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MeshFacts {
    /// The proxy's state.
    pub proxy: Option<MeshPhase>,
    /// When the workload certificate expires (Unix ms).
    pub cert_expires_ms: Option<i64>,
    /// When the istio token expires (Unix ms).
    pub token_expires_ms: Option<i64>,
}

impl MeshFacts {
    /// The facts of a report.
    pub(crate) fn of(state: &AgentState) -> MeshFacts {
        let ms = |t: time::OffsetDateTime| {
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
        };
        match &state.mesh_state {
            None => MeshFacts::default(),
            Some(m) => MeshFacts {
                proxy: Some(m.state),
                cert_expires_ms: m.cert_expires_at.map(ms),
                token_expires_ms: m.token_expires_at.map(ms),
            },
        }
    }
}

impl Beat {
    /// Folds a newer beat into this one: the latest time wins, and each field keeps the
    /// latest value that was reported.
    fn merge(&mut self, newer: Beat) {
        if newer.at >= self.at {
            self.at = newer.at;
            if newer.ips_json.is_some() {
                self.ips_json = newer.ips_json;
            }
            if newer.system_info_json.is_some() {
                self.system_info_json = newer.system_info_json;
            }
            if newer.agent_state_json.is_some() {
                self.agent_state_json = newer.agent_state_json;
                self.mesh = newer.mesh;
            }
        } else {
            // An older beat re-queued after a failed write: keep only what the newer lacks.
            if self.ips_json.is_none() {
                self.ips_json = newer.ips_json;
            }
            if self.system_info_json.is_none() {
                self.system_info_json = newer.system_info_json;
            }
            if self.agent_state_json.is_none() {
                self.agent_state_json = newer.agent_state_json;
                self.mesh = newer.mesh;
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub beats: HashMap<Uuid, Beat>,
    pub key_uses: HashMap<Uuid, i64>,
}

/// The queue of not-yet-written heartbeats, and the batch a flush is writing.
///
/// The batch stays readable until its transaction has committed (or has been queued again
/// after a failure): a read between the flush taking the queue and the commit would otherwise
/// find the heartbeat neither queued nor in the database and show a reporting agent as silent.
#[derive(Debug, Default)]
struct Queue {
    pending: Pending,
    /// Heartbeats of the flush in progress (at most one: flushes hold `flush_gate`), shared
    /// with that flush rather than copied: a batch may hold 100,000 heartbeats.
    in_flight: Arc<HashMap<Uuid, Beat>>,
}

/// What a flush takes from the queue and writes.
#[derive(Debug)]
pub(crate) struct Batch {
    pub beats: Arc<HashMap<Uuid, Beat>>,
    pub key_uses: HashMap<Uuid, i64>,
}

/// A flush's batch while it is written. Dropped unfinished (the flush future cancelled, e.g.
/// at shutdown), it goes back to the queue instead of being lost.
struct InFlight<'a> {
    fleet: &'a Fleet,
    pending: Option<Batch>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.fleet.requeue(p);
        }
    }
}

/// In-memory fleet state shared by every request.
#[derive(Debug)]
pub struct Fleet {
    vps: RwLock<HashMap<Uuid, HotVps>>,
    /// Bumped whenever a VPS's hot state changes; long polls wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    queue: Mutex<Queue>,
    /// When the change poll last started (Unix ms; 0 before the first poll).
    last_poll: AtomicI64,
    /// Bumped whenever something the mesh is computed from may have changed (a VPS's identity,
    /// lifecycle, addresses, placement or opt-out, or a purpose); the mesh reconciler waits on it.
    mesh: tokio::sync::watch::Sender<u64>,
    /// `updated_at` of the rows the change poll has already reported to the mesh, so a row
    /// changed by another replica wakes the reconciler once, not on every overlapping poll.
    mesh_seen: Mutex<MeshSeen>,
    /// Held by a flush from taking the pending writes until they are committed, and by an
    /// operator's address edit from taking a VPS's queued addresses until its own write is
    /// committed: a heartbeat older than the edit can then never be written after it.
    pub(crate) flush_gate: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct MeshSeen {
    vps: HashMap<Uuid, i64>,
    purposes: HashMap<String, i64>,
}

/// Rows per batched UPDATE (5 bound values each, well under both backends' limits).
const BATCH: usize = 1000;
/// How far back the change poll looks beyond its last run, so rows committed late or stamped by
/// a replica whose clock is a little behind are still seen.
const POLL_OVERLAP_MS: i64 = 10_000;

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            vps: RwLock::default(),
            changes: tokio::sync::watch::Sender::new(0),
            queue: Mutex::default(),
            last_poll: AtomicI64::default(),
            mesh: tokio::sync::watch::Sender::new(0),
            mesh_seen: Mutex::default(),
            flush_gate: tokio::sync::Mutex::new(()),
        }
    }
}

impl Fleet {
    /// A receiver that wakes when any VPS's hot state changes.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
        self.mesh_changed();
    }

    /// A receiver that wakes when the mesh's inputs may have changed.
    pub(crate) fn subscribe_mesh(&self) -> tokio::sync::watch::Receiver<u64> {
        self.mesh.subscribe()
    }

    /// Wakes the mesh reconciler (cheap; many bumps before it runs count as one).
    pub(crate) fn mesh_changed(&self) {
        self.mesh.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(crate) fn get(&self, id: Uuid) -> Option<HotVps> {
        self.vps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Caches a VPS's state read from the database, unless the cache already holds a newer
    /// one. A read can be overtaken by a write: the change poll re-reads every row changed in
    /// its window, and a retire, re-commission or route change committed (and cached) between
    /// its read and this put must not be undone by it — an agent would be told its VPS is
    /// retired again until the next poll (seen at 100,000 VPS, where a poll takes a second).
    pub(crate) fn put(&self, id: Uuid, hot: HotVps) {
        let mut map = self.vps.write().unwrap_or_else(|p| p.into_inner());
        if map.get(&id).is_some_and(|cur| hot.older_than(cur)) {
            return;
        }
        let old = map.insert(id, hot.clone());
        drop(map);
        if old.as_ref() != Some(&hot) {
            self.changed();
        }
    }

    pub(crate) fn remove(&self, id: Uuid) {
        let old = self
            .vps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if old.is_some() {
            self.changed();
        }
    }

    /// Records the reported address list as current, returning whether it changed.
    pub(crate) fn note_ips(&self, id: Uuid, ips_json: &str) -> bool {
        let mut map = self.vps.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&id) {
            Some(h) if h.ips_json == ips_json => false,
            Some(h) => {
                h.ips_json = ips_json.to_string();
                // A VPS's mesh address follows its reported addresses.
                self.mesh_changed();
                true
            }
            None => true,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn queue_beat(&self, id: Uuid, beat: Beat) {
        let mut q = self.queue();
        match q.pending.beats.get_mut(&id) {
            Some(b) => b.merge(beat),
            None => {
                q.pending.beats.insert(id, beat);
            }
        }
    }

    pub(crate) fn queue_key_use(&self, key: Uuid, at: i64) {
        let mut q = self.queue();
        let e = q.pending.key_uses.entry(key).or_insert(at);
        *e = (*e).max(at);
    }

    /// The not-yet-committed heartbeat of a VPS (queued, or in the batch a flush is writing,
    /// the queued one newer), so reads show the latest state.
    pub(crate) fn pending_beat(&self, id: Uuid) -> Option<Beat> {
        let q = self.queue();
        match (q.in_flight.get(&id), q.pending.beats.get(&id)) {
            (None, None) => None,
            (Some(b), None) | (None, Some(b)) => Some(b.clone()),
            (Some(writing), Some(queued)) => {
                let mut b = writing.clone();
                b.merge(queued.clone());
                Some(b)
            }
        }
    }

    /// The addresses of a VPS's not-yet-committed heartbeat, by the same rule as
    /// [`Fleet::pending_beat`] (the newer beat's, else the other's), without copying the rest of
    /// the beat: fleet-wide reads (the mesh's inputs every pass, service discovery) ask this for
    /// every row, and after a burst of heartbeats every VPS has a beat whose system info and
    /// agent state would be cloned only to be dropped.
    pub(crate) fn pending_ips_json(&self, id: Uuid) -> Option<String> {
        let q = self.queue();
        let ips = match (q.in_flight.get(&id), q.pending.beats.get(&id)) {
            (None, None) => None,
            (Some(b), None) | (None, Some(b)) => b.ips_json.as_deref(),
            (Some(writing), Some(queued)) => {
                let (newer, older) = if queued.at >= writing.at {
                    (queued, writing)
                } else {
                    (writing, queued)
                };
                newer.ips_json.as_deref().or(older.ips_json.as_deref())
            }
        };
        ips.map(str::to_owned)
    }

    /// Takes the addresses out of a VPS's queued heartbeat (keeping the rest of it), with the
    /// time they were reported.
    pub(crate) fn take_pending_ips(&self, id: Uuid) -> Option<(i64, String)> {
        let mut q = self.queue();
        let b = q.pending.beats.get_mut(&id)?;
        b.ips_json.take().map(|ips| (b.at, ips))
    }

    /// Puts back addresses [`Fleet::take_pending_ips`] took, unless something newer was
    /// queued meanwhile.
    pub(crate) fn restore_pending_ips(&self, id: Uuid, at: i64, ips_json: String) {
        self.queue_beat(
            id,
            Beat {
                at,
                ips_json: Some(ips_json),
                system_info_json: None,
                agent_state_json: None,
                mesh: None,
            },
        );
    }

    /// Takes the queue for a flush; its heartbeats stay readable as in flight until
    /// [`Fleet::written`] or [`Fleet::requeue`].
    fn take(&self) -> Batch {
        let mut q = self.queue();
        let taken = std::mem::take(&mut q.pending);
        let beats = Arc::new(taken.beats);
        q.in_flight = beats.clone();
        Batch {
            beats,
            key_uses: taken.key_uses,
        }
    }

    /// The flush's batch is committed: reads find it in the database now.
    fn written(&self) {
        self.queue().in_flight = Arc::default();
    }

    /// Puts back what a failed write took, without overwriting anything newer.
    fn requeue(&self, old: Batch) {
        let mut q = self.queue();
        q.in_flight = Arc::default();
        // The queue's reference is gone, so the batch is normally moved, not copied.
        let beats = Arc::try_unwrap(old.beats).unwrap_or_else(|shared| (*shared).clone());
        for (id, beat) in beats {
            match q.pending.beats.get_mut(&id) {
                Some(newer) => newer.merge(beat),
                None => {
                    q.pending.beats.insert(id, beat);
                }
            }
        }
        for (id, at) in old.key_uses {
            let e = q.pending.key_uses.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Counts cached VPS per status (for metrics).
    pub fn len(&self) -> usize {
        self.vps.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no VPS is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn hot_from_row(row: &sqlx::any::AnyRow) -> Result<(Uuid, HotVps, bool)> {
    let id: String = row.try_get("id")?;
    let id = Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
    let status: String = row.try_get("status")?;
    let status = VpsStatus::parse(&status)
        .ok_or_else(|| Error::Corrupt(format!("vps status {status:?}")))?;
    let deleted: Option<i64> = row.try_get("deleted_at")?;
    Ok((
        id,
        HotVps {
            hostname: row.try_get("hostname")?,
            status,
            desired_version: row.try_get("desired_version")?,
            ips_json: row.try_get("ip_addresses")?,
            envoy_version: row.try_get("envoy_version")?,
        },
        deleted.is_some(),
    ))
}

pub(crate) const HOT_COLS: &str =
    "id, hostname, status, desired_version, ip_addresses, deleted_at, envoy_version";

impl Store {
    /// The hot state of a VPS, from memory or (first time) from the database. A deleted VPS
    /// is returned with status `deleted` and not cached.
    pub(crate) async fn hot_vps(&self, id: Uuid) -> Result<HotVps> {
        if let Some(h) = self.fleet.get(id) {
            return Ok(h);
        }
        let row = sqlx::query(dynsql!("SELECT {HOT_COLS} FROM vps WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pools.read)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no VPS with id {id}")))?;
        let (id, hot, deleted) = hot_from_row(&row)?;
        if !deleted {
            self.fleet.put(id, hot.clone());
        }
        Ok(hot)
    }

    /// Re-reads one VPS's hot state after this replica changed it.
    pub(crate) async fn reload_hot<'c, E>(&self, exec: E, id: Uuid) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let row = sqlx::query(dynsql!("SELECT {HOT_COLS} FROM vps WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(exec)
            .await?;
        match row {
            Some(row) => {
                let (id, hot, deleted) = hot_from_row(&row)?;
                if deleted {
                    self.fleet.remove(id);
                } else {
                    self.fleet.put(id, hot);
                }
            }
            None => self.fleet.remove(id),
        }
        Ok(())
    }

    /// Writes every pending heartbeat and key use; returns how many heartbeats were written.
    /// On failure everything taken is queued again.
    pub async fn flush(&self) -> Result<usize> {
        let _gate = self.fleet.flush_gate.lock().await;
        let mut batch = InFlight {
            fleet: &self.fleet,
            pending: Some(self.fleet.take()),
        };
        let pending = batch.pending.as_ref().expect("just taken");
        if pending.beats.is_empty() && pending.key_uses.is_empty() {
            batch.pending.take();
            self.fleet.written();
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let result = self.write_pending(pending).await;
        let pending = batch.pending.take().expect("taken once");
        match result {
            Ok(()) => {
                self.fleet.written();
                tracing::debug!(
                    heartbeats = pending.beats.len(),
                    key_uses = pending.key_uses.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pending writes flushed"
                );
                Ok(pending.beats.len())
            }
            Err(e) => {
                self.fleet.requeue(pending);
                Err(e)
            }
        }
    }

    /// Writes a batch, each statement (up to [`BATCH`] rows) committed on its own: one
    /// transaction over a whole batch (tens of thousands of rows after a burst) held the row
    /// locks of every VPS in it until the end, so on PostgreSQL an operator's retire of one of
    /// them waited for the whole flush, and at 100,000 VPS eight such waits used up the pool
    /// (503s). Every statement is idempotent (a row is only written by a newer heartbeat), so a
    /// batch that fails halfway is simply written again.
    async fn write_pending(&self, p: &Batch) -> Result<()> {
        let beats: Vec<_> = p.beats.iter().collect();
        for chunk in beats.chunks(BATCH) {
            let mut sql = Sql::bulk(self.pools.backend, "WITH b(id, at, sys, st) AS (VALUES ");
            for (i, (id, beat)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(**id)
                    .push(", ")
                    .bind(beat.at)
                    .push(", ")
                    .bind(beat.system_info_json.clone())
                    .push(", ")
                    .bind(beat.agent_state_json.clone())
                    .push(")");
            }
            sql.push(
                ") UPDATE vps SET last_heartbeat_at = b.at, \
                 system_info = COALESCE(b.sys, vps.system_info), \
                 agent_state = COALESCE(b.st, vps.agent_state) \
                 FROM b WHERE vps.id = b.id \
                 AND (vps.last_heartbeat_at IS NULL OR vps.last_heartbeat_at <= b.at)",
            );
            sql.query().execute(&self.pools.write).await?;
        }
        // Addresses, queued only when they changed (`Fleet::note_ips`), in a statement of
        // their own for just those VPS: on SQLite an UPDATE that names ip_addresses fires the
        // search index's trigger (migration 0009) for every row it touches, which made the
        // heartbeat statement cost about a fifth more CPU with every address unchanged
        // (sqlite3 CLI, 100,000 rows, 6 rounds: 1.6-1.7 s user without the column, 1.9-2.0 s
        // with it). Rows a newer heartbeat already wrote (another replica) are left alone.
        let ips: Vec<_> = p
            .beats
            .iter()
            .filter_map(|(id, b)| b.ips_json.as_ref().map(|j| (id, b.at, j)))
            .collect();
        for chunk in ips.chunks(BATCH) {
            let mut sql = Sql::bulk(self.pools.backend, "WITH a(id, at, ips) AS (VALUES ");
            for (i, (id, at, json)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(**id)
                    .push(", ")
                    .bind(*at)
                    .push(", ")
                    .bind(json.as_str())
                    .push(")");
            }
            sql.push(
                ") UPDATE vps SET ip_addresses = a.ips FROM a \
                 WHERE vps.id = a.id AND vps.last_heartbeat_at <= a.at",
            );
            sql.query().execute(&self.pools.write).await?;
        }
        // The console's mesh facts, in a statement of their own that writes only rows whose
        // facts changed: in SQLite every index over a column an UPDATE sets is rewritten even
        // when the value stays, and these columns are indexed (migration 0009). Facts change
        // when a proxy changes state or a certificate or token is renewed, so in the steady
        // state this reads each row by its key and writes nothing. Rows a newer heartbeat
        // already wrote (another replica) are left alone, as above.
        let facts: Vec<_> = p
            .beats
            .iter()
            .filter_map(|(id, b)| b.mesh.map(|m| (id, b.at, m)))
            .collect();
        let distinct = match self.pools.backend {
            crate::Backend::Sqlite => "IS NOT",
            crate::Backend::Postgres => "IS DISTINCT FROM",
        };
        for chunk in facts.chunks(BATCH) {
            let mut sql = Sql::bulk(
                self.pools.backend,
                "WITH m(id, at, proxy, cert, token) AS (VALUES ",
            );
            for (i, (id, at, m)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(**id)
                    .push(", ")
                    .bind(*at)
                    .push(", ")
                    .bind(m.proxy.map(MeshPhase::as_str))
                    .push(", ")
                    .bind(m.cert_expires_ms)
                    .push(", ")
                    .bind(m.token_expires_ms)
                    .push(")");
            }
            sql.push(&format!(
                ") UPDATE vps SET mesh_proxy = m.proxy, mesh_cert_expires_at = m.cert, \
                 mesh_token_expires_at = m.token \
                 FROM m WHERE vps.id = m.id AND vps.last_heartbeat_at <= m.at \
                 AND (vps.mesh_proxy {distinct} m.proxy \
                 OR vps.mesh_cert_expires_at {distinct} m.cert \
                 OR vps.mesh_token_expires_at {distinct} m.token)"
            ));
            sql.query().execute(&self.pools.write).await?;
        }
        let uses: Vec<_> = p.key_uses.iter().collect();
        for chunk in uses.chunks(BATCH) {
            let mut sql = Sql::bulk(self.pools.backend, "WITH k(id, at) AS (VALUES ");
            for (i, (id, at)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(").bind(**id).push(", ").bind(**at).push(")");
            }
            sql.push(
                ") UPDATE api_keys SET last_used_at = k.at FROM k WHERE api_keys.id = k.id \
                 AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < k.at)",
            );
            sql.query().execute(&self.pools.write).await?;
        }
        Ok(())
    }

    /// Picks up changes made by other replicas: VPS rows updated since the last poll, and keys
    /// revoked since then.
    pub async fn refresh(&self) -> Result<()> {
        let started = now_ms();
        let last = self.fleet.last_poll.load(Ordering::Relaxed);
        let since = if last == 0 { started } else { last } - POLL_OVERLAP_MS;
        let rows = sqlx::query(dynsql!(
            "SELECT {HOT_COLS}, updated_at FROM vps WHERE updated_at >= $1"
        ))
        .bind(since)
        .fetch_all(&self.pools.read)
        .await?;
        let mut mesh_changed = false;
        {
            let mut seen = self
                .fleet
                .mesh_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            seen.vps.retain(|_, at| *at >= since);
            for row in &rows {
                let (id, _, _) = hot_from_row(row)?;
                let at: i64 = row.try_get("updated_at")?;
                if seen.vps.insert(id, at) != Some(at) {
                    mesh_changed = true;
                }
            }
        }
        for row in rows {
            let (id, hot, deleted) = hot_from_row(&row)?;
            if deleted {
                self.fleet.remove(id);
            } else if self.fleet.get(id).is_some() {
                self.fleet.put(id, hot);
            }
        }
        let rows = sqlx::query("SELECT name, updated_at FROM purposes WHERE updated_at >= $1")
            .bind(since)
            .fetch_all(&self.pools.read)
            .await?;
        {
            let mut seen = self
                .fleet
                .mesh_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            seen.purposes.retain(|_, at| *at >= since);
            for row in &rows {
                let name: String = row.try_get("name")?;
                let at: i64 = row.try_get("updated_at")?;
                if seen.purposes.insert(name, at) != Some(at) {
                    mesh_changed = true;
                }
            }
        }
        // Rows this replica changed itself were announced when it changed them; announcing
        // them again costs the reconciler one pass without writes.
        if mesh_changed {
            self.fleet.mesh_changed();
        }
        let rows = sqlx::query("SELECT prefix, revoked_at FROM api_keys WHERE revoked_at >= $1")
            .bind(since)
            .fetch_all(&self.pools.read)
            .await?;
        for row in rows {
            let prefix: String = row.try_get("prefix")?;
            let at: Option<i64> = row.try_get("revoked_at")?;
            if let Some(at) = at {
                self.keys.mark_revoked(&prefix, at);
            }
        }
        self.fleet.last_poll.store(started, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at: i64, ips: Option<&str>, sys: Option<&str>) -> Beat {
        Beat {
            at,
            ips_json: ips.map(String::from),
            system_info_json: sys.map(String::from),
            agent_state_json: None,
            mesh: None,
        }
    }

    #[test]
    fn a_read_overtaken_by_a_write_does_not_undo_it() {
        let fleet = Fleet::default();
        let id = Uuid::new_v4();
        let hot = |status, desired_version, envoy_version| HotVps {
            hostname: "a.example.net".into(),
            status,
            desired_version,
            ips_json: "[]".into(),
            envoy_version,
        };
        // Retired (version 3), then re-commissioned and cached (version 4); the change poll's
        // read from before the re-commission arrives last.
        fleet.put(id, hot(VpsStatus::Retired, 3, 1));
        fleet.put(id, hot(VpsStatus::Provisioning, 4, 1));
        fleet.put(id, hot(VpsStatus::Retired, 3, 1));
        assert_eq!(fleet.get(id).unwrap().status, VpsStatus::Provisioning);
        // Same for a route change (the Envoy version) at one desired version.
        fleet.put(id, hot(VpsStatus::Provisioning, 4, 2));
        fleet.put(id, hot(VpsStatus::Provisioning, 4, 1));
        assert_eq!(fleet.get(id).unwrap().envoy_version, 2);
        // A read at the same versions carries what they do not count (addresses): taken.
        let mut same = hot(VpsStatus::Provisioning, 4, 2);
        same.ips_json = "[1]".into();
        fleet.put(id, same.clone());
        assert_eq!(fleet.get(id).unwrap(), same);
        // Newer always wins.
        fleet.put(id, hot(VpsStatus::Active, 5, 2));
        assert_eq!(fleet.get(id).unwrap().status, VpsStatus::Active);
    }

    #[test]
    fn newer_beats_win_field_by_field() {
        let mut b = beat(1, Some("[1]"), Some("{1}"));
        b.merge(beat(2, None, Some("{2}")));
        assert_eq!(b, beat(2, Some("[1]"), Some("{2}")));
        // An older one (re-queued after a failed write) only fills gaps.
        let mut b = beat(5, None, Some("{5}"));
        b.merge(beat(3, Some("[3]"), Some("{3}")));
        assert_eq!(b, beat(5, Some("[3]"), Some("{5}")));
    }

    #[test]
    fn mesh_facts_travel_with_the_report_they_come_from() {
        let facts = |p: MeshPhase| MeshFacts {
            proxy: Some(p),
            ..MeshFacts::default()
        };
        let with = |at: i64, p: MeshPhase| Beat {
            agent_state_json: Some(format!("{{{at}}}")),
            mesh: Some(facts(p)),
            ..beat(at, None, None)
        };
        let mut b = with(1, MeshPhase::Starting);
        b.merge(beat(2, None, Some("{}")));
        assert_eq!(b.mesh, Some(facts(MeshPhase::Starting)), "no report: kept");
        b.merge(with(3, MeshPhase::Ready));
        assert_eq!(b.mesh, Some(facts(MeshPhase::Ready)));
        b.merge(with(0, MeshPhase::Degraded));
        assert_eq!(b.mesh, Some(facts(MeshPhase::Ready)), "older: ignored");
        // A classic-mode report clears what a mesh one said.
        let classic = AgentState::default();
        assert_eq!(MeshFacts::of(&classic), MeshFacts::default());
    }

    #[test]
    fn a_batch_being_written_stays_readable_until_written() {
        let f = Fleet::default();
        let id = Uuid::new_v4();
        f.queue_beat(id, beat(1, Some("[\"a\"]"), Some("old")));
        let taken = f.take();
        assert_eq!(
            f.pending_beat(id).unwrap(),
            beat(1, Some("[\"a\"]"), Some("old")),
            "in flight: still the latest truth"
        );
        f.queue_beat(id, beat(2, None, Some("new")));
        assert_eq!(
            f.pending_beat(id).unwrap(),
            beat(2, Some("[\"a\"]"), Some("new")),
            "queued over in flight"
        );
        assert_eq!(f.pending_ips_json(id).as_deref(), Some("[\"a\"]"));
        f.queue_beat(id, beat(3, Some("[\"b\"]"), None));
        assert_eq!(
            f.pending_ips_json(id).as_deref(),
            Some("[\"b\"]"),
            "newer addresses"
        );
        assert_eq!(
            f.pending_beat(id).unwrap().ips_json.as_deref(),
            Some("[\"b\"]")
        );
        f.written();
        assert_eq!(
            f.pending_beat(id).unwrap(),
            beat(3, Some("[\"b\"]"), Some("new"))
        );
        let again = f.take();
        f.requeue(again);
        assert_eq!(
            f.pending_beat(id).unwrap(),
            beat(3, Some("[\"b\"]"), Some("new"))
        );
        drop(taken);
        let _ = f.take();
        f.written();
        assert_eq!(
            f.pending_beat(id),
            None,
            "committed: read from the database"
        );
        assert_eq!(f.pending_ips_json(id), None);
    }

    #[test]
    fn a_cancelled_flush_requeues_its_batch() {
        let f = Fleet::default();
        let id = Uuid::new_v4();
        f.queue_beat(id, beat(1, None, Some("s")));
        let batch = InFlight {
            fleet: &f,
            pending: Some(f.take()),
        };
        drop(batch);
        let again = f.take();
        assert_eq!(again.beats.get(&id), Some(&beat(1, None, Some("s"))));
    }

    #[test]
    fn requeue_keeps_newer_pending_data() {
        let f = Fleet::default();
        let id = Uuid::new_v4();
        f.queue_beat(id, beat(1, None, Some("old")));
        let taken = f.take();
        f.queue_beat(id, beat(2, None, Some("new")));
        f.requeue(taken);
        assert_eq!(f.pending_beat(id).unwrap(), beat(2, None, Some("new")));
    }
}

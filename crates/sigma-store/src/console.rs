//! Queries only the web console (sigma-web) asks: the VPS list with sorting and the console's
//! own filters (mesh state, proxies and certificates that need attention, contract expiry),
//! the overview's fleet summary and mesh attention counts, and the routes that make up relay
//! chains. The JSON API's `list_vps` keeps its contract (hostname order); the console's list
//! applies the same filters with the same meaning and adds what a person scanning a fleet
//! needs.
//!
//! One file (about 640 lines) because these are the queries of one caller, kept apart from the
//! JSON API's so that the console can change its own without touching the API's contract.

use std::collections::HashMap;

use sigma_types::mesh::MeshPhase;
use sigma_types::{
    ContractFilter, EnvoyRoute, IpAddress, List, MeshSyncStatus, Vps, VpsQuery, VpsStatus,
};
use sqlx::Row;
use uuid::Uuid;

use crate::db::{Sql, now_ms};
use crate::error::{Error, Result};
use crate::inventory::VPS_SELECT;
use crate::routes::{route_cols, route_from_row};
use crate::{Backend, Store};

/// A column the console's VPS list can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VpsSort {
    /// Hostname (the default).
    #[default]
    Hostname,
    /// Lifecycle status, alphabetically by its name.
    Status,
    /// Country code; VPS without one come first ascending, last descending.
    Country,
    /// Last heartbeat; VPS never heard from come first ascending (the stalest first).
    Heartbeat,
}

impl VpsSort {
    /// Every sort column.
    pub const ALL: [VpsSort; 4] = [
        VpsSort::Hostname,
        VpsSort::Status,
        VpsSort::Country,
        VpsSort::Heartbeat,
    ];

    /// The spelling in the console's URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            VpsSort::Hostname => "hostname",
            VpsSort::Status => "status",
            VpsSort::Country => "country",
            VpsSort::Heartbeat => "heartbeat",
        }
    }

    /// Parses the URL spelling.
    pub fn parse(s: &str) -> Option<VpsSort> {
        VpsSort::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The leading sort column, or `None` when hostname alone decides.
    fn column(self) -> Option<&'static str> {
        match self {
            VpsSort::Hostname => None,
            VpsSort::Status => Some("v.status"),
            VpsSort::Country => Some("v.country"),
            VpsSort::Heartbeat => Some("v.last_heartbeat_at"),
        }
    }
}

/// The ORDER BY of a sorted list: the column, then hostname and id, so equal values keep one
/// order from page to page. Every key runs the same direction, which lets both databases read
/// the `vps_live_by_*` index of migration 0008 forwards or backwards instead of sorting.
/// Unset values come first ascending and last descending on both backends (SQLite's default;
/// PostgreSQL is told, and its indexes are built the same way).
fn order_by(sort: VpsSort, desc: bool) -> String {
    let (dir, nulls) = if desc {
        ("DESC", "NULLS LAST")
    } else {
        ("ASC", "NULLS FIRST")
    };
    let mut s = String::from(" ORDER BY ");
    if let Some(col) = sort.column() {
        s.push_str(&format!("{col} {dir} {nulls}, "));
    }
    s.push_str(&format!("v.hostname {dir}, v.id {dir}"));
    s
}

/// A fact an agent's mesh report makes the console flag on an active VPS (stored by the
/// heartbeat flush, migration 0009; VPS whose agent never said are never flagged). Only
/// active VPS count: a retiring or retired VPS's proxy is meant to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshAttention {
    /// The agent reports its proxy in a state other than `ready`.
    ProxyNotReady,
    /// The workload certificate expires before this time (Unix ms); expired ones included.
    CertExpiresBefore(i64),
    /// The istio token expires before this time (Unix ms); expired ones included.
    TokenExpiresBefore(i64),
}

/// Every proxy state but `ready`. The match makes a new state a compile error here until it
/// is sorted into ready or not.
fn proxy_not_ready() -> Vec<&'static str> {
    [
        MeshPhase::Installing,
        MeshPhase::Starting,
        MeshPhase::Ready,
        MeshPhase::Degraded,
        MeshPhase::Stopped,
    ]
    .into_iter()
    .filter(|p| match p {
        MeshPhase::Ready => false,
        MeshPhase::Installing | MeshPhase::Starting | MeshPhase::Degraded | MeshPhase::Stopped => {
            true
        }
    })
    .map(MeshPhase::as_str)
    .collect()
}

impl MeshAttention {
    /// Appends its condition. Each names the column's `IS NOT NULL` and `v.deleted_at IS
    /// NULL` itself so that both databases see the partial index of migration 0009 applies,
    /// and writes the status test as `v.status || ''` so that SQLite (no statistics) reads
    /// that small index rather than walking every active VPS in `vps_live_by_status`.
    fn push(self, w: &mut Sql) {
        w.push(" AND v.status || '' = ")
            .bind(VpsStatus::Active.as_str());
        match self {
            MeshAttention::ProxyNotReady => {
                w.push(
                    " AND v.deleted_at IS NULL AND v.mesh_proxy IS NOT NULL AND v.mesh_proxy IN (",
                );
                for (i, p) in proxy_not_ready().into_iter().enumerate() {
                    if i > 0 {
                        w.push(", ");
                    }
                    w.bind(p);
                }
                w.push(")");
            }
            MeshAttention::CertExpiresBefore(t) => {
                w.push(" AND v.deleted_at IS NULL AND v.mesh_cert_expires_at IS NOT NULL AND v.mesh_cert_expires_at < ")
                    .bind(t);
            }
            MeshAttention::TokenExpiresBefore(t) => {
                w.push(" AND v.deleted_at IS NULL AND v.mesh_token_expires_at IS NOT NULL AND v.mesh_token_expires_at < ")
                    .bind(t);
            }
        }
    }
}

/// The console's filters beyond [`VpsQuery`]'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleFilter {
    /// Only VPS in this mesh registry state.
    pub mesh: Option<MeshSyncStatus>,
    /// Only VPS with this mesh fact.
    pub attention: Option<MeshAttention>,
    /// The contract filters (`GET /api/vps`'s `expires_within_days`, …).
    pub contract: ContractFilter,
}

/// Shortest search SQLite's trigram index answers (one trigram); shorter ones scan.
const MIN_INDEXED_SEARCH: usize = 3;

/// The console's text search, with the meaning of `GET /api/vps`'s `q` (a case-insensitive
/// substring of the hostname, alias, city or address list) but read from migration 0009's
/// index: SQLite's FTS5 trigram table (a phrase of the search's trigrams matches exactly the
/// rows holding it as a substring, in any letter case), PostgreSQL's pg_trgm index over the
/// same columns joined by newlines (a search is one line, so no match spans two columns).
/// `None` when the search is short enough that SQLite has no trigram for it: the scan of
/// [`crate::inventory::vps_filters`] answers those.
fn indexed_search(backend: Backend, text: &str) -> Option<Sql> {
    let mut w = Sql::new("");
    match backend {
        Backend::Sqlite => {
            if text.chars().count() < MIN_INDEXED_SEARCH {
                return None;
            }
            w.push(" AND v.search_key IN (SELECT rowid FROM vps_search WHERE vps_search MATCH ")
                .bind(format!("\"{}\"", text.replace('"', "\"\"")))
                .push(")");
        }
        Backend::Postgres => {
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            w.push(
                " AND lower(v.hostname || chr(10) || COALESCE(v.alias, '') || chr(10) \
                 || COALESCE(v.city, '') || chr(10) || v.ip_addresses) LIKE ",
            )
            .bind(format!("%{escaped}%"))
            .push(" ESCAPE '\\'");
        }
    }
    Some(w)
}

/// The WHERE clause of [`VpsQuery`]'s filters, meaning what they mean for `GET /api/vps`, plus
/// the console's.
pub(crate) fn filters(backend: Backend, q: &VpsQuery, f: &ConsoleFilter) -> Sql {
    let search = q.q.as_deref().and_then(|t| indexed_search(backend, t));
    let mut w = match &search {
        Some(_) => crate::inventory::vps_filters(&VpsQuery {
            q: None,
            ..q.clone()
        }),
        None => crate::inventory::vps_filters(q),
    };
    if let Some(s) = &search {
        w.push_sql(s);
    }
    if let Some(m) = f.mesh {
        w.push(" AND v.mesh_status = ").bind(m.as_str());
    }
    if let Some(a) = f.attention {
        a.push(&mut w);
    }
    crate::contracts::filter(&mut w, &f.contract);
    w
}

/// How many active VPS have each mesh fact the overview flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshAttentionCounts {
    /// Proxies not ready.
    pub proxies_not_ready: i64,
    /// Certificates expired or expiring before the asked time.
    pub certs_expiring: i64,
    /// Tokens expired or expiring before the asked time.
    pub tokens_expiring: i64,
}

impl Store {
    /// The console's VPS list: `q`'s filters (its limit and offset are the page), only VPS in
    /// mesh state `mesh` when given, sorted by `sort` (descending when `desc`), ties by hostname
    /// then id.
    pub async fn list_vps_sorted(
        &self,
        q: &VpsQuery,
        mesh: Option<MeshSyncStatus>,
        sort: VpsSort,
        desc: bool,
    ) -> Result<List<Vps>> {
        let f = ConsoleFilter {
            mesh,
            ..ConsoleFilter::default()
        };
        self.list_vps_console(q, &f, sort, desc).await
    }

    /// [`Store::list_vps_sorted`] with every console filter.
    pub async fn list_vps_console(
        &self,
        q: &VpsQuery,
        f: &ConsoleFilter,
        sort: VpsSort,
        desc: bool,
    ) -> Result<List<Vps>> {
        let w = filters(self.pools.backend, q, f);
        // The provider join is needed only to match a provider's name; without it the count
        // is read from an index alone.
        let mut count = Sql::new(if q.provider.is_some() {
            "SELECT COUNT(*) AS n FROM vps v LEFT JOIN providers pr ON pr.id = v.provider_id"
        } else {
            "SELECT COUNT(*) AS n FROM vps v"
        });
        count.push_sql(&w);
        let total: i64 = count
            .query()
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        // The page's ids first, then their rows: walking past `offset` rows then touches only
        // the sort index (which holds the id), not every skipped row and its provider. On 100k
        // VPS in SQLite a last page sorted by heartbeat took 0.90 s one way and 0.015 s this way
        // (sqlite3 CLI).
        let mut sel = Sql::new(VPS_SELECT);
        sel.push(" WHERE v.id IN (SELECT v.id FROM vps v");
        if q.provider.is_some() {
            sel.push(" LEFT JOIN providers pr ON pr.id = v.provider_id");
        }
        sel.push_sql(&w);
        sel.push(&order_by(sort, desc))
            .push(" LIMIT ")
            .bind(q.limit.unwrap_or(sigma_types::DEFAULT_LIMIT))
            .push(" OFFSET ")
            .bind(q.offset.unwrap_or(0))
            .push(")")
            .push(&order_by(sort, desc));
        let rows = sel.query().fetch_all(&self.pools.read).await?;
        Ok(List {
            items: rows
                .iter()
                .map(|r| self.vps_from_row(r))
                .collect::<Result<_>>()?,
            total,
        })
    }
}

impl Store {
    /// The overview's mesh attention counts over active VPS: proxies not ready, certificates
    /// expiring before `cert_before` and tokens before `token_before` (Unix ms, expired ones
    /// included). Each is a range of a small partial index (migration 0009).
    pub async fn mesh_attention(
        &self,
        cert_before: i64,
        token_before: i64,
    ) -> Result<MeshAttentionCounts> {
        let mut n = [0i64; 3];
        for (slot, a) in n.iter_mut().zip([
            MeshAttention::ProxyNotReady,
            MeshAttention::CertExpiresBefore(cert_before),
            MeshAttention::TokenExpiresBefore(token_before),
        ]) {
            let mut sql = Sql::new("SELECT COUNT(*) AS n FROM vps v WHERE 1 = 1");
            a.push(&mut sql);
            *slot = sql
                .query()
                .fetch_one(&self.pools.read)
                .await?
                .try_get("n")?;
        }
        Ok(MeshAttentionCounts {
            proxies_not_ready: n[0],
            certs_expiring: n[1],
            tokens_expiring: n[2],
        })
    }
}

/// The fleet at a glance, for the console's overview.
#[derive(Debug, Clone, Default)]
pub struct FleetSummary {
    /// Live VPS (not deleted).
    pub total: i64,
    /// Live VPS by status, every status present.
    pub by_status: Vec<(VpsStatus, i64)>,
    /// Live VPS by purpose, largest first.
    pub by_purpose: Vec<(String, i64)>,
    /// Live VPS by country (`None`: unset), largest first.
    pub by_country: Vec<(Option<String>, i64)>,
    /// Live VPS by provider name (`None`: unset), largest first.
    pub by_provider: Vec<(Option<String>, i64)>,
    /// Live VPS by mesh state, every state present.
    pub by_mesh: Vec<(MeshSyncStatus, i64)>,
    /// Active VPS whose agent was last heard before the silence threshold (or never).
    pub silent: i64,
}

/// How many rows of each breakdown the summary keeps.
const SUMMARY_GROUPS: usize = 50;

/// Sorts a breakdown largest first (ties by name, unset last) and keeps the first
/// [`SUMMARY_GROUPS`].
fn top<K: Ord + Clone>(counts: HashMap<K, i64>) -> Vec<(K, i64)> {
    let mut v: Vec<(K, i64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(SUMMARY_GROUPS);
    v
}

/// `None` after every name, so "(not set)" closes a tie.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Named {
    Some(String),
    Unset,
}

impl From<Option<String>> for Named {
    fn from(o: Option<String>) -> Self {
        o.map_or(Named::Unset, Named::Some)
    }
}

impl Store {
    /// The fleet summary of the console's overview. `silent_after` is how long an active VPS's
    /// agent may be quiet before it counts as silent.
    ///
    /// One pass over the partial covering index `vps_live_summary` (migration 0008): the live
    /// rows grouped by every breakdown at once, folded here; the silent count comes from the
    /// heartbeat index. Grouping by the index's own column
    /// order lets both databases stream the groups without sorting and without touching the
    /// table's wide rows (system info, agent state). The number of groups is the number of
    /// distinct (status, mesh state, purpose, country, provider) combinations in use, a few
    /// hundred in a real fleet and never more than the number of VPS.
    pub async fn fleet_summary(&self, silent_after: std::time::Duration) -> Result<FleetSummary> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(silent_after.as_millis()).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT status, mesh_status, purpose, country, provider_id, COUNT(*) AS n \
             FROM vps WHERE deleted_at IS NULL \
             GROUP BY status, mesh_status, purpose, country, provider_id",
        )
        .fetch_all(&self.pools.read)
        .await?;
        // Silent: counted from `vps_live_by_heartbeat` (which holds the status): the never-heard
        // and the too-quiet, each a range of that index, so a healthy fleet costs next to
        // nothing. `status || ''` keeps the planner off the status index, which would visit
        // every active row.
        let silent: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM vps WHERE deleted_at IS NULL AND status || '' = 'active' \
             AND last_heartbeat_at IS NULL) + (SELECT COUNT(*) FROM vps WHERE deleted_at IS NULL \
             AND status || '' = 'active' AND last_heartbeat_at < $1) AS n",
        )
        .bind(cutoff)
        .fetch_one(&self.pools.read)
        .await?
        .try_get("n")?;
        let providers: HashMap<String, String> = sqlx::query("SELECT id, name FROM providers")
            .fetch_all(&self.pools.read)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect::<Result<_>>()?;
        let mut s = FleetSummary {
            by_status: VpsStatus::ALL
                .iter()
                .filter(|st| **st != VpsStatus::Deleted)
                .map(|st| (*st, 0))
                .collect(),
            by_mesh: MeshSyncStatus::ALL.iter().map(|st| (*st, 0)).collect(),
            silent,
            ..FleetSummary::default()
        };
        let mut purposes: HashMap<String, i64> = HashMap::new();
        let mut countries: HashMap<Named, i64> = HashMap::new();
        let mut by_provider: HashMap<Named, i64> = HashMap::new();
        for r in &rows {
            let n: i64 = r.try_get("n")?;
            let status: String = r.try_get("status")?;
            let mesh: String = r.try_get("mesh_status")?;
            let provider: Option<String> = r.try_get("provider_id")?;
            s.total += n;
            if let Some(slot) = s.by_status.iter_mut().find(|(x, _)| x.as_str() == status) {
                slot.1 += n;
            }
            if let Some(slot) = s.by_mesh.iter_mut().find(|(x, _)| x.as_str() == mesh) {
                slot.1 += n;
            }
            *purposes.entry(r.try_get("purpose")?).or_default() += n;
            *countries
                .entry(r.try_get::<Option<String>, _>("country")?.into())
                .or_default() += n;
            // A provider id without a row cannot be (foreign key); it would count as unset.
            let name = provider.and_then(|id| providers.get(&id).cloned());
            *by_provider.entry(name.into()).or_default() += n;
        }
        let named = |v: Vec<(Named, i64)>| {
            v.into_iter()
                .map(|(k, n)| {
                    let k = match k {
                        Named::Some(s) => Some(s),
                        Named::Unset => None,
                    };
                    (k, n)
                })
                .collect()
        };
        s.by_purpose = top(purposes);
        s.by_country = named(top(countries));
        s.by_provider = named(top(by_provider));
        Ok(s)
    }
}

/// A live VPS as the chains page sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainVps {
    /// Id.
    pub id: Uuid,
    /// Hostname (lower case).
    pub hostname: String,
    /// Purpose.
    pub purpose: String,
    /// Country, when set.
    pub country: Option<String>,
    /// Lifecycle status.
    pub status: VpsStatus,
    /// Last heartbeat (Unix ms), if any.
    pub last_heartbeat_ms: Option<i64>,
    /// Its addresses.
    pub ips: Vec<String>,
}

/// Every Envoy route of a live VPS with the VPS it runs on (the edges of the relay chains).
#[derive(Debug, Clone)]
pub struct ChainRoutes {
    /// The routes, by VPS hostname then route name.
    pub routes: Vec<EnvoyRoute>,
    /// The VPS the routes run on, and the live VPS their backends name (by hostname or one of
    /// their addresses).
    pub vps: Vec<ChainVps>,
    /// Whether the route list was cut at [`MAX_CHAIN_ROUTES`].
    pub truncated: bool,
}

/// Most routes the chains page reads.
pub const MAX_CHAIN_ROUTES: i64 = 20_000;

/// Addresses looked up per query.
const IP_BATCH: usize = 100;

fn chain_vps_from_row(r: &sqlx::any::AnyRow) -> Result<ChainVps> {
    let id: String = r.try_get("id")?;
    let status: String = r.try_get("status")?;
    let ips: String = r.try_get("ip_addresses")?;
    let ips: Vec<IpAddress> =
        serde_json::from_str(&ips).map_err(|e| Error::Corrupt(format!("vps ip_addresses: {e}")))?;
    Ok(ChainVps {
        id: Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?,
        hostname: r.try_get("hostname")?,
        purpose: r.try_get("purpose")?,
        country: r.try_get("country")?,
        status: VpsStatus::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("vps status {status:?}")))?,
        last_heartbeat_ms: r.try_get("last_heartbeat_at")?,
        ips: ips.into_iter().map(|a| a.ip).collect(),
    })
}

const CHAIN_VPS_COLS: &str =
    "v.id, v.hostname, v.purpose, v.country, v.status, v.last_heartbeat_at, v.ip_addresses";

impl Store {
    /// The routes of live VPS and the VPS at both ends of each (see [`ChainRoutes`]).
    ///
    /// Backends named by an address are found with `LIKE` on the stored address list (written
    /// by sigma itself as compact JSON of canonical addresses, so `"ip":"<addr>"` matches
    /// exactly one entry): a scan of the table in the database, returning only the matches.
    pub async fn chain_routes(&self) -> Result<ChainRoutes> {
        let read = &self.pools.read;
        // Route columns qualified by the table: both tables have id, status and timestamps.
        let rows = sqlx::query(dynsql!(
            "SELECT {} FROM envoy_routes r JOIN vps v ON v.id = r.vps_id \
             WHERE v.deleted_at IS NULL ORDER BY v.hostname, r.name LIMIT $1",
            route_cols("r")
        ))
        .bind(MAX_CHAIN_ROUTES + 1)
        .fetch_all(read)
        .await?;
        let truncated = rows.len() as i64 > MAX_CHAIN_ROUTES;
        let routes: Vec<EnvoyRoute> = rows
            .iter()
            .take(MAX_CHAIN_ROUTES as usize)
            .map(route_from_row)
            .collect::<Result<_>>()?;
        let owners: std::collections::BTreeSet<String> =
            routes.iter().map(|r| r.vps_id.to_string()).collect();
        let mut vps: Vec<ChainVps> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let owner_ids: Vec<String> = owners.into_iter().collect();
        for chunk in owner_ids.chunks(IP_BATCH) {
            let mut sql = Sql::new(&format!(
                "SELECT {CHAIN_VPS_COLS} FROM vps v WHERE v.id IN ("
            ));
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(id.as_str());
            }
            sql.push(")");
            for r in sql.query().fetch_all(read).await? {
                let v = chain_vps_from_row(&r)?;
                if seen.insert(v.id) {
                    vps.push(v);
                }
            }
        }
        // Backends by name or address, and target VPS by their current hostname (pools are
        // shown by purpose, not member by member).
        let hosts: std::collections::BTreeSet<&str> = routes
            .iter()
            .filter_map(|r| match &r.upstream {
                sigma_types::Upstream::Backend { backend_host, .. } => Some(backend_host.as_str()),
                sigma_types::Upstream::Target {
                    target: sigma_types::RouteTarget::Vps { hostname, .. },
                } => Some(hostname.as_str()),
                sigma_types::Upstream::Target { .. } => None,
            })
            .collect();
        let (ips, names): (Vec<&str>, Vec<&str>) = hosts
            .into_iter()
            .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
        for chunk in names.chunks(IP_BATCH) {
            let mut sql = Sql::new(&format!(
                "SELECT {CHAIN_VPS_COLS} FROM vps v WHERE v.deleted_at IS NULL AND v.hostname IN ("
            ));
            for (i, h) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(*h);
            }
            sql.push(")");
            for r in sql.query().fetch_all(read).await? {
                let v = chain_vps_from_row(&r)?;
                if seen.insert(v.id) {
                    vps.push(v);
                }
            }
        }
        for chunk in ips.chunks(IP_BATCH) {
            let mut sql = Sql::new(&format!(
                "SELECT {CHAIN_VPS_COLS} FROM vps v WHERE v.deleted_at IS NULL AND ("
            ));
            for (i, ip) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("v.ip_addresses LIKE ")
                    .bind(format!("%\"ip\":\"{ip}\"%"));
            }
            sql.push(")");
            for r in sql.query().fetch_all(read).await? {
                let v = chain_vps_from_row(&r)?;
                if seen.insert(v.id) {
                    vps.push(v);
                }
            }
        }
        Ok(ChainRoutes {
            routes,
            vps,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_are_stable_and_run_one_direction() {
        assert_eq!(
            order_by(VpsSort::Hostname, false),
            " ORDER BY v.hostname ASC, v.id ASC"
        );
        assert_eq!(
            order_by(VpsSort::Country, true),
            " ORDER BY v.country DESC NULLS LAST, v.hostname DESC, v.id DESC"
        );
        for s in VpsSort::ALL {
            assert_eq!(VpsSort::parse(s.as_str()), Some(s));
        }
        assert_eq!(VpsSort::parse("id; DROP TABLE vps"), None);
    }
}

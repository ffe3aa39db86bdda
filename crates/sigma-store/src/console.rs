//! Queries only the web console (sigma-web) asks: the VPS list with sorting and the mesh-state
//! filter, and the routes that make up relay chains. The JSON API's `list_vps` keeps its contract (hostname order); the console's list
//! applies the same filters with the same meaning and adds what a person scanning a fleet
//! needs.

use sigma_types::{EnvoyRoute, IpAddress, List, MeshSyncStatus, Vps, VpsQuery, VpsStatus};
use sqlx::Row;
use uuid::Uuid;

use crate::Store;
use crate::db::Sql;
use crate::error::{Error, Result};
use crate::inventory::VPS_SELECT;
use crate::routes::{route_cols, route_from_row};

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

/// The WHERE clause of [`VpsQuery`]'s filters, meaning what they mean for `GET /api/vps`, plus
/// the mesh state.
fn filters(q: &VpsQuery, mesh: Option<MeshSyncStatus>) -> Sql {
    let mut w = crate::inventory::vps_filters(q);
    if let Some(m) = mesh {
        w.push(" AND v.mesh_status = ").bind(m.as_str());
    }
    w
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
        let w = filters(q, mesh);
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

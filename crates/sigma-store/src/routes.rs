//! Envoy routes per VPS and the per-VPS version agents follow.
//!
//! Every change bumps `vps.envoy_version` in the same transaction, so an agent that has seen
//! version N and asks for the config again gets either N (nothing changed) or a newer version
//! whose routes are exactly what was committed with it. Routes to fleet targets (a VPS, or a
//! purpose's pool) are checked when written (the target exists, serves the port, is not the
//! route's own VPS) and resolved into addresses when an agent reads its config; the config's
//! version then also follows those addresses.
//!
//! One file (about 650 lines) because the writes and the config reads keep the invariant above
//! together: every write bumps the version in its own transaction, and the reads return the
//! version with the routes and resolved targets it stands for.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sigma_types::{
    ClusterType, EnvoyConfig, EnvoyRoute, ProxyProtocol, RouteEndpoint, RouteSpec, RouteStatus,
    RouteTarget, TargetSpec, Upstream, UpstreamSpec, VpsRef, VpsStatus,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::auth::Principal;
use crate::db::{from_ms, now_ms};
use crate::error::{Error, Result, is_unique_violation};

/// The route columns of table alias `a`, with the target VPS's current hostname.
pub(crate) fn route_cols(a: &str) -> String {
    format!(
        "{a}.id, {a}.vps_id, {a}.name, {a}.listen_port, {a}.backend_host, {a}.backend_port, \
         {a}.cluster_type, {a}.target_kind, {a}.target_vps_id, {a}.target_purpose, {a}.target_port, \
         {a}.target_countries, {a}.connect_timeout_ms, {a}.proxy_protocol, {a}.status, \
         {a}.created_at, {a}.updated_at, \
         (SELECT t.hostname FROM vps t WHERE t.id = {a}.target_vps_id) AS target_hostname"
    )
}

/// How often a long poll re-resolves fleet targets while nothing in the inventory changed: a
/// target whose agent falls silent changes nothing stored, so only time reveals it.
const TARGET_RECHECK: Duration = Duration::from_secs(5);

pub(crate) fn route_from_row(r: &AnyRow) -> Result<EnvoyRoute> {
    let corrupt =
        |what: &str, v: &dyn std::fmt::Debug| Error::Corrupt(format!("route {what} {v:?}"));
    let id: String = r.try_get("id")?;
    let vps: String = r.try_get("vps_id")?;
    let pp: String = r.try_get("proxy_protocol")?;
    let st: String = r.try_get("status")?;
    let port = |col: &str| -> Result<u16> {
        let p: i64 = r.try_get(col)?;
        u16::try_from(p).map_err(|_| corrupt(col, &p))
    };
    let timeout: i64 = r.try_get("connect_timeout_ms")?;
    let kind: String = r.try_get("target_kind")?;
    let upstream = match kind.as_str() {
        "backend" => {
            let ct: String = r.try_get("cluster_type")?;
            let p: i64 = r.try_get("backend_port")?;
            Upstream::Backend {
                backend_host: r.try_get("backend_host")?,
                backend_port: u16::try_from(p).map_err(|_| corrupt("backend_port", &p))?,
                cluster_type: ClusterType::parse(&ct)
                    .ok_or_else(|| corrupt("cluster_type", &ct))?,
            }
        }
        "vps" => {
            let t: String = r.try_get("target_vps_id")?;
            Upstream::Target {
                target: RouteTarget::Vps {
                    vps_id: Uuid::parse_str(&t).map_err(|_| corrupt("target_vps_id", &t))?,
                    hostname: r.try_get("target_hostname")?,
                    port: r.try_get("target_port")?,
                },
            }
        }
        "pool" => {
            let c: String = r.try_get("target_countries")?;
            Upstream::Target {
                target: RouteTarget::Pool {
                    purpose: r.try_get("target_purpose")?,
                    port: r.try_get("target_port")?,
                    countries: serde_json::from_str(&c)
                        .map_err(|_| corrupt("target_countries", &c))?,
                },
            }
        }
        other => return Err(corrupt("target_kind", &other)),
    };
    Ok(EnvoyRoute {
        id: Uuid::parse_str(&id).map_err(|_| corrupt("id", &id))?,
        vps_id: Uuid::parse_str(&vps).map_err(|_| corrupt("vps_id", &vps))?,
        name: r.try_get("name")?,
        listen_port: port("listen_port")?,
        upstream,
        connect_timeout_ms: u32::try_from(timeout).map_err(|_| corrupt("timeout", &timeout))?,
        proxy_protocol: ProxyProtocol::parse(&pp).ok_or_else(|| corrupt("proxy_protocol", &pp))?,
        status: RouteStatus::parse(&st).ok_or_else(|| corrupt("status", &st))?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

fn conflict_of(e: &sqlx::Error, spec: &RouteSpec) -> Option<Error> {
    if !is_unique_violation(e) {
        return None;
    }
    let msg = e.to_string();
    Some(Error::Conflict(
        if msg.contains("listen_port") || msg.contains("envoy_routes_port") {
            format!(
                "listen port {} is used by another route of this VPS",
                spec.listen_port
            )
        } else {
            format!("this VPS already has a route named {:?}", spec.name)
        },
    ))
}

impl Store {
    /// The VPS a route operation acts on; refused for deleted VPS.
    async fn live_vps_for_routes(&self, tx: &mut Transaction<'_, Any>, vps_id: Uuid) -> Result<()> {
        let row = sqlx::query("SELECT status FROM vps WHERE id = $1")
            .bind(vps_id.to_string())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no VPS with id {vps_id}")))?;
        let status: String = row.try_get("status")?;
        if status == VpsStatus::Deleted.as_str() {
            return Err(Error::Conflict(format!(
                "VPS {vps_id} is deleted; restore it first"
            )));
        }
        Ok(())
    }

    async fn routes_in<'c, E>(
        &self,
        exec: E,
        vps_id: Uuid,
        active_only: bool,
    ) -> Result<Vec<EnvoyRoute>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let filter = if active_only {
            " AND r.status = 'active'"
        } else {
            ""
        };
        Self::routes_where(exec, vps_id, filter).await
    }

    /// The routes of a VPS that also match `filter` (SQL over alias `r`, starting with ` AND`).
    async fn routes_where<'c, E>(exec: E, vps_id: Uuid, filter: &str) -> Result<Vec<EnvoyRoute>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let rows = sqlx::query(dynsql!(
            "SELECT {} FROM envoy_routes r WHERE r.vps_id = $1{filter} ORDER BY r.name",
            route_cols("r")
        ))
        .bind(vps_id.to_string())
        .fetch_all(exec)
        .await?;
        rows.iter().map(route_from_row).collect()
    }

    async fn route_in(&self, tx: &mut Transaction<'_, Any>, id: Uuid) -> Result<EnvoyRoute> {
        let row = sqlx::query(dynsql!(
            "SELECT {} FROM envoy_routes r WHERE r.id = $1",
            route_cols("r")
        ))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no Envoy route with id {id}")))?;
        route_from_row(&row)
    }

    async fn bump_envoy_version(&self, tx: &mut Transaction<'_, Any>, vps_id: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE vps SET envoy_version = envoy_version + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(now_ms())
        .bind(vps_id.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every route of a VPS (disabled ones too), by name.
    pub async fn list_routes(&self, vps_id: Uuid) -> Result<Vec<EnvoyRoute>> {
        self.get_vps(vps_id).await?;
        self.routes_in(&self.pools.read, vps_id, false).await
    }

    async fn insert_route(
        &self,
        tx: &mut Transaction<'_, Any>,
        vps_id: Uuid,
        s: &RouteSpec,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        let now = now_ms();
        let u = UpstreamCols::of(&s.upstream)?;
        let res = sqlx::query(
            "INSERT INTO envoy_routes (id, vps_id, name, listen_port, backend_host, backend_port, cluster_type, \
             target_kind, target_vps_id, target_purpose, target_port, target_countries, \
             connect_timeout_ms, proxy_protocol, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)",
        )
        .bind(id.to_string())
        .bind(vps_id.to_string())
        .bind(s.name.clone())
        .bind(i64::from(s.listen_port))
        .bind(u.backend_host)
        .bind(u.backend_port)
        .bind(u.cluster_type)
        .bind(u.kind)
        .bind(u.target_vps_id)
        .bind(u.target_purpose)
        .bind(u.target_port)
        .bind(u.target_countries)
        .bind(i64::from(s.connect_timeout_ms))
        .bind(s.proxy_protocol.as_str())
        .bind(s.status.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await;
        match res {
            Err(e) => Err(conflict_of(&e, s).unwrap_or(e.into())),
            Ok(_) => Ok(id),
        }
    }

    async fn write_route(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: Uuid,
        s: &RouteSpec,
    ) -> Result<()> {
        let u = UpstreamCols::of(&s.upstream)?;
        let res = sqlx::query(
            "UPDATE envoy_routes SET name = $1, listen_port = $2, backend_host = $3, backend_port = $4, \
             cluster_type = $5, target_kind = $6, target_vps_id = $7, target_purpose = $8, target_port = $9, \
             target_countries = $10, connect_timeout_ms = $11, proxy_protocol = $12, status = $13, \
             updated_at = $14 WHERE id = $15",
        )
        .bind(s.name.clone())
        .bind(i64::from(s.listen_port))
        .bind(u.backend_host)
        .bind(u.backend_port)
        .bind(u.cluster_type)
        .bind(u.kind)
        .bind(u.target_vps_id)
        .bind(u.target_purpose)
        .bind(u.target_port)
        .bind(u.target_countries)
        .bind(i64::from(s.connect_timeout_ms))
        .bind(s.proxy_protocol.as_str())
        .bind(s.status.as_str())
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await;
        match res {
            Err(e) => Err(conflict_of(&e, s).unwrap_or(e.into())),
            Ok(_) => Ok(()),
        }
    }

    /// Adds a route to a VPS.
    pub async fn create_route(
        &self,
        actor: &str,
        vps_id: Uuid,
        s: &RouteSpec,
    ) -> Result<EnvoyRoute> {
        let mut tx = self.pools.write.begin().await?;
        self.live_vps_for_routes(&mut tx, vps_id).await?;
        let s = &self.resolve_spec(&mut tx, vps_id, s, "").await?;
        let id = self.insert_route(&mut tx, vps_id, s).await?;
        self.bump_envoy_version(&mut tx, vps_id).await?;
        let r = self.route_in(&mut tx, id).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "envoy_route.create",
                resource_type: "envoy_route",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&r),
        )
        .await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, vps_id).await?;
        Ok(r)
    }

    /// A route by id.
    pub async fn get_route(&self, id: Uuid) -> Result<EnvoyRoute> {
        let mut tx = self.pools.read.begin().await?;
        let r = self.route_in(&mut tx, id).await;
        tx.rollback().await?;
        r
    }

    /// Changes a route; `change` turns the stored route into the new one (or names bad fields).
    pub async fn update_route(
        &self,
        actor: &str,
        id: Uuid,
        change: impl FnOnce(&EnvoyRoute) -> Result<RouteSpec, sigma_types::FieldErrors>,
    ) -> Result<EnvoyRoute> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.route_in(&mut tx, id).await?;
        self.live_vps_for_routes(&mut tx, before.vps_id).await?;
        let spec = change(&before)?;
        let spec = self.resolve_spec(&mut tx, before.vps_id, &spec, "").await?;
        self.write_route(&mut tx, id, &spec).await?;
        self.bump_envoy_version(&mut tx, before.vps_id).await?;
        let after = self.route_in(&mut tx, id).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "envoy_route.update",
                resource_type: "envoy_route",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, before.vps_id).await?;
        Ok(after)
    }

    /// Removes a route.
    pub async fn delete_route(&self, actor: &str, id: Uuid) -> Result<EnvoyRoute> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.route_in(&mut tx, id).await?;
        self.live_vps_for_routes(&mut tx, before.vps_id).await?;
        sqlx::query("DELETE FROM envoy_routes WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        self.bump_envoy_version(&mut tx, before.vps_id).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "envoy_route.delete",
                resource_type: "envoy_route",
                resource_id: id.to_string(),
            },
            Some(&before),
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, before.vps_id).await?;
        Ok(before)
    }

    /// Creates or replaces routes by name (and with `prune` deletes the others), all in one
    /// transaction and one version step. Returns the VPS's routes afterwards.
    pub async fn upsert_routes(
        &self,
        actor: &str,
        vps_id: Uuid,
        specs: &[RouteSpec],
        prune: bool,
    ) -> Result<Vec<EnvoyRoute>> {
        let mut tx = self.pools.write.begin().await?;
        self.live_vps_for_routes(&mut tx, vps_id).await?;
        let mut resolved = Vec::with_capacity(specs.len());
        let mut bad = sigma_types::FieldErrors::new();
        for (i, s) in specs.iter().enumerate() {
            match self
                .resolve_spec(&mut tx, vps_id, s, &format!("routes[{i}]."))
                .await
            {
                Ok(s) => resolved.push(s),
                Err(Error::Invalid(e)) => bad.0.extend(e.0),
                Err(e) => return Err(e),
            }
        }
        bad.into_result()?;
        let specs = &resolved[..];
        let before = self.routes_in(&mut *tx, vps_id, false).await?;
        // Deletes first, then updates, then inserts, so that swapping ports between routes or
        // reusing a pruned route's port in one batch does not trip the uniqueness checks.
        let mut deleted = Vec::new();
        if prune {
            for r in before
                .iter()
                .filter(|r| !specs.iter().any(|s| s.name == r.name))
            {
                sqlx::query("DELETE FROM envoy_routes WHERE id = $1")
                    .bind(r.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                deleted.push(r.clone());
            }
        }
        // Routes whose content does not change are not written, so an unchanged batch is no new
        // version (and no push to Envoy).
        let existing: Vec<(&RouteSpec, &EnvoyRoute)> = specs
            .iter()
            .filter_map(|s| before.iter().find(|r| r.name == s.name).map(|r| (s, r)))
            .filter(|(s, r)| RouteSpec::from(*r) != **s)
            .collect();
        // Park updated routes on free high ports first, so two routes may swap listen ports.
        for (i, (_, r)) in existing.iter().enumerate() {
            sqlx::query("UPDATE envoy_routes SET listen_port = $1 WHERE id = $2")
                .bind(-1 - i as i64)
                .bind(r.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for (s, r) in &existing {
            self.write_route(&mut tx, r.id, s).await?;
        }
        for s in specs
            .iter()
            .filter(|s| !before.iter().any(|r| r.name == s.name))
        {
            self.insert_route(&mut tx, vps_id, s).await?;
        }
        let after = self.routes_in(&mut *tx, vps_id, false).await?;
        let content = |rs: &[EnvoyRoute]| rs.iter().map(RouteSpec::from).collect::<Vec<_>>();
        if content(&after) != content(&before) {
            self.bump_envoy_version(&mut tx, vps_id).await?;
            record(
                &mut *tx,
                Record {
                    actor,
                    action: "envoy_route.batch",
                    resource_type: "vps",
                    resource_id: vps_id.to_string(),
                },
                Some(&before),
                Some(&after),
            )
            .await?;
        }
        tx.commit().await?;
        self.reload_hot(&self.pools.read, vps_id).await?;
        Ok(after)
    }

    /// The config an agent serves: its VPS's active routes, the current addresses of their
    /// fleet targets, and a version that changes with either.
    pub async fn envoy_config(&self, vps_id: Uuid) -> Result<EnvoyConfig> {
        // One read transaction, so version, routes and addresses belong together.
        let mut tx = self.pools.read.begin().await?;
        let envoy_version = envoy_version_in(&mut tx, vps_id).await?;
        let routes = self.routes_in(&mut *tx, vps_id, true).await?;
        let endpoints = self.resolve_targets(&mut tx, vps_id, &routes).await?;
        tx.rollback().await?;
        Ok(EnvoyConfig {
            vps_id,
            version: config_version(envoy_version, &endpoints),
            routes,
            endpoints,
        })
    }

    /// The version [`Store::envoy_config`] returns, for callers that only compare it (the route
    /// plan's listener liveness): the same read, of the routes that count towards the version
    /// only (those to fleet targets, whose addresses it follows), and no config built.
    pub async fn envoy_config_version(&self, vps_id: Uuid) -> Result<i64> {
        let mut tx = self.pools.read.begin().await?;
        let envoy_version = envoy_version_in(&mut tx, vps_id).await?;
        let targeted = Self::routes_where(
            &mut *tx,
            vps_id,
            " AND r.status = 'active' AND r.target_kind <> 'backend'",
        )
        .await?;
        let endpoints = self.resolve_targets(&mut tx, vps_id, &targeted).await?;
        tx.rollback().await?;
        Ok(config_version(envoy_version, &endpoints))
    }

    /// The current endpoints of each of `routes` that has a fleet target, by route name.
    async fn resolve_targets(
        &self,
        tx: &mut Transaction<'_, Any>,
        vps_id: Uuid,
        routes: &[EnvoyRoute],
    ) -> Result<BTreeMap<String, Vec<RouteEndpoint>>> {
        let mut endpoints = BTreeMap::new();
        let mut settings: HashMap<String, Option<sigma_mesh::MeshSettings>> = HashMap::new();
        let healthy_since = now_ms().saturating_sub(
            i64::try_from(self.settings.target_silence.as_millis()).unwrap_or(i64::MAX),
        );
        for r in routes {
            if let Upstream::Target { target } = &r.upstream {
                let eps = self
                    .target_endpoints(tx, vps_id, target, healthy_since, &mut settings)
                    .await?;
                endpoints.insert(r.name.clone(), eps);
            }
        }
        Ok(endpoints)
    }

    /// An agent's view of its routes: returns at once when the version differs from
    /// `known_version`, otherwise waits up to `wait` for a change (long poll). Fleet targets
    /// are re-resolved on every inventory change and every few seconds, so a target that
    /// retires or falls silent leaves the config within about that time.
    pub async fn agent_envoy_config(
        &self,
        p: &Principal,
        hostname: &str,
        known_version: Option<i64>,
        wait: Duration,
    ) -> Result<EnvoyConfig> {
        let id = Self::agent_vps(p)?;
        let hot = self.hot_vps(id).await?;
        Self::check_hostname(id, &hot.hostname, hostname)?;
        if hot.status == VpsStatus::Deleted {
            return Err(Error::Conflict(format!("VPS {hostname} is deleted")));
        }
        // Subscribed before reading, so a change between the read and the wait still wakes it.
        let mut changes = self.fleet.subscribe();
        let mut cfg = self.envoy_config(id).await?;
        let Some(known) = known_version else {
            return Ok(cfg);
        };
        let deadline = tokio::time::Instant::now() + wait;
        while cfg.version == known {
            let fleet_targets = !cfg.endpoints.is_empty();
            let wake = if fleet_targets {
                (tokio::time::Instant::now() + TARGET_RECHECK).min(deadline)
            } else {
                deadline
            };
            let changed = tokio::time::timeout_at(wake, changes.changed())
                .await
                .is_ok();
            if !changed && wake == deadline {
                break;
            }
            // Without fleet targets only this VPS's own route version matters: a cheap check
            // on the cached row instead of a read of its routes.
            if !fleet_targets && self.hot_vps(id).await?.envoy_version == known {
                continue;
            }
            cfg = self.envoy_config(id).await?;
        }
        Ok(cfg)
    }
}

/// A route upstream as the columns that store it.
/// A VPS's route version (`vps.envoy_version`).
async fn envoy_version_in(tx: &mut Transaction<'_, Any>, vps_id: Uuid) -> Result<i64> {
    Ok(sqlx::query("SELECT envoy_version FROM vps WHERE id = $1")
        .bind(vps_id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no VPS with id {vps_id}")))?
        .try_get("envoy_version")?)
}

/// The version of a config: the route version alone without fleet targets, else a digest of
/// the route version and every address (equal configs, equal versions).
fn config_version(envoy_version: i64, endpoints: &BTreeMap<String, Vec<RouteEndpoint>>) -> i64 {
    if endpoints.is_empty() {
        return envoy_version;
    }
    let mut h = Sha256::new();
    h.update(envoy_version.to_be_bytes());
    h.update(serde_json::to_vec(endpoints).unwrap_or_default());
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) & i64::MAX
}

struct UpstreamCols {
    kind: &'static str,
    backend_host: Option<String>,
    backend_port: Option<i64>,
    cluster_type: Option<&'static str>,
    target_vps_id: Option<String>,
    target_purpose: Option<String>,
    target_port: Option<String>,
    target_countries: String,
}

impl UpstreamCols {
    fn of(u: &UpstreamSpec) -> Result<UpstreamCols> {
        let none = UpstreamCols {
            kind: "backend",
            backend_host: None,
            backend_port: None,
            cluster_type: None,
            target_vps_id: None,
            target_purpose: None,
            target_port: None,
            target_countries: "[]".into(),
        };
        Ok(match u {
            UpstreamSpec::Backend {
                host,
                port,
                cluster_type,
            } => UpstreamCols {
                backend_host: Some(host.clone()),
                backend_port: Some(i64::from(*port)),
                cluster_type: Some(cluster_type.as_str()),
                ..none
            },
            UpstreamSpec::Target(TargetSpec::Vps {
                vps: VpsRef::Id(id),
                port,
            }) => UpstreamCols {
                kind: "vps",
                target_vps_id: Some(id.to_string()),
                target_port: Some(port.clone()),
                ..none
            },
            UpstreamSpec::Target(TargetSpec::Vps {
                vps: VpsRef::Hostname(h),
                ..
            }) => {
                // resolve_spec names every target VPS by id before anything is written.
                return Err(Error::Corrupt(format!(
                    "route target VPS {h:?} was not looked up before writing"
                )));
            }
            UpstreamSpec::Target(TargetSpec::Pool {
                purpose,
                port,
                countries,
            }) => UpstreamCols {
                kind: "pool",
                target_purpose: Some(purpose.clone()),
                target_port: Some(port.clone()),
                target_countries: serde_json::to_string(countries).unwrap_or_else(|_| "[]".into()),
                ..none
            },
        })
    }
}

//! Providers, purposes and VPS.
//!
//! One file (about 1,160 lines) because the three are written in each other's transactions: a
//! provider or purpose is not deleted while VPS use it, and a VPS's row decoding reads the
//! fleet's pending heartbeats. It splits along providers, purposes and VPS if it grows further.

use sigma_types::{
    ContractFilter, IpAddress, List, Provider, ProviderCreate, ProviderPatch, Purpose,
    PurposeCreate, PurposePatch, SystemInfo, Vps, VpsContract, VpsContractPatch, VpsCreate,
    VpsPatch, VpsQuery, VpsStatus,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::auth::TokenRef;
use crate::db::{Sql, from_ms, now_ms};
use crate::error::{Error, Result, is_unique_violation};

const PROVIDER_COLS: &str = "pr.id, pr.name, pr.country, pr.website, pr.notes, pr.created_at, \
     pr.updated_at, (SELECT COUNT(*) FROM vps v WHERE v.provider_id = pr.id AND v.deleted_at IS NULL) AS vps_count";

const PURPOSE_COLS: &str = "pu.name, pu.display_name, pu.mesh, pu.created_at, pu.updated_at, \
     (SELECT COUNT(*) FROM vps v WHERE v.purpose = pu.name) AS vps_count";

pub(crate) const VPS_SELECT: &str = "SELECT v.id, v.hostname, v.alias, pr.name AS provider, \
     v.ip_addresses, v.country, v.city, v.purpose, v.status, v.tags, v.monitoring, \
     v.node_exporter_port, v.system_info, v.agent_state, v.last_heartbeat_at, v.desired_version, v.envoy_version, v.created_at, \
     v.updated_at, v.deleted_at, v.mesh_opt_out, v.mesh_status, v.mesh_message, v.mesh_attempt_at, v.mesh_entry, \
     v.cost_e4, v.currency, v.billing_cycle, v.purchased_on, v.expires_on, v.auto_renew, v.cpu_cores, \
     v.ram_mb, v.disk_gb, v.traffic_gb, v.ssh_port, v.data_center \
     FROM vps v LEFT JOIN providers pr ON pr.id = v.provider_id";

fn provider_from_row(r: &AnyRow) -> Result<Provider> {
    let id: String = r.try_get("id")?;
    Ok(Provider {
        id: Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("provider id {id:?}")))?,
        name: r.try_get("name")?,
        country: r.try_get("country")?,
        website: r.try_get("website")?,
        notes: r.try_get("notes")?,
        vps_count: r.try_get("vps_count")?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

fn purpose_from_row(r: &AnyRow) -> Result<Purpose> {
    let mesh: String = r.try_get("mesh")?;
    Ok(Purpose {
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        mesh: serde_json::from_str(&mesh)
            .map_err(|e| Error::Corrupt(format!("purpose mesh: {e}")))?,
        vps_count: r.try_get("vps_count")?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

/// What service discovery (and the renewal series) labels a VPS with: a narrow read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetVps {
    /// Its id.
    pub id: Uuid,
    /// Hostname.
    pub hostname: String,
    /// Alias.
    pub alias: Option<String>,
    /// Provider name.
    pub provider: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Purpose.
    pub purpose: String,
    /// Lifecycle status.
    pub status: VpsStatus,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether node-exporter is scraped.
    pub monitoring: bool,
    /// node-exporter's port.
    pub node_exporter_port: u16,
    /// Addresses (a reported change not yet written included).
    pub ip_addresses: Vec<IpAddress>,
    /// Kept out of the mesh.
    pub mesh_opt_out: bool,
    /// The WorkloadEntry the reconciler recorded.
    pub workload_entry: Option<String>,
}

impl From<&Vps> for TargetVps {
    fn from(v: &Vps) -> Self {
        TargetVps {
            id: v.id,
            hostname: v.hostname.clone(),
            alias: v.alias.clone(),
            provider: v.provider.clone(),
            country: v.country.clone(),
            city: v.city.clone(),
            purpose: v.purpose.clone(),
            status: v.status,
            tags: v.tags.clone(),
            monitoring: v.monitoring,
            node_exporter_port: v.node_exporter_port,
            ip_addresses: v.ip_addresses.clone(),
            mesh_opt_out: v.mesh_opt_out,
            workload_entry: v.mesh.workload_entry.clone(),
        }
    }
}

pub(crate) fn json_col<T: serde::de::DeserializeOwned>(r: &AnyRow, col: &str) -> Result<T> {
    let s: String = r.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("vps {col}: {e}")))
}

impl Store {
    pub(crate) fn vps_from_row(&self, r: &AnyRow) -> Result<Vps> {
        let id: String = r.try_get("id")?;
        let id = Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
        let status: String = r.try_get("status")?;
        let mut ip_addresses: Vec<IpAddress> = json_col(r, "ip_addresses")?;
        let mut system_info: Option<SystemInfo> = r
            .try_get::<Option<String>, _>("system_info")?
            .and_then(|s| serde_json::from_str(&s).ok());
        let mut agent_state: Option<sigma_types::AgentState> = r
            .try_get::<Option<String>, _>("agent_state")?
            .and_then(|s| serde_json::from_str(&s).ok());
        let mut last_heartbeat_at: Option<i64> = r.try_get("last_heartbeat_at")?;
        // A heartbeat not yet written is still the latest truth about the VPS.
        if let Some(b) = self.fleet.pending_beat(id)
            && last_heartbeat_at.is_none_or(|t| t <= b.at)
        {
            last_heartbeat_at = Some(b.at);
            if let Some(ips) = b.ips_json.and_then(|s| serde_json::from_str(&s).ok()) {
                ip_addresses = ips;
            }
            if let Some(si) = b
                .system_info_json
                .and_then(|s| serde_json::from_str(&s).ok())
            {
                system_info = Some(si);
            }
            if let Some(st) = b
                .agent_state_json
                .and_then(|s| serde_json::from_str(&s).ok())
            {
                agent_state = Some(st);
            }
        }
        let port: i64 = r.try_get("node_exporter_port")?;
        Ok(Vps {
            id,
            hostname: r.try_get("hostname")?,
            alias: r.try_get("alias")?,
            provider: r.try_get("provider")?,
            ip_addresses,
            country: r.try_get("country")?,
            city: r.try_get("city")?,
            purpose: r.try_get("purpose")?,
            status: VpsStatus::parse(&status)
                .ok_or_else(|| Error::Corrupt(format!("vps status {status:?}")))?,
            tags: json_col(r, "tags")?,
            monitoring: r.try_get::<i64, _>("monitoring")? != 0,
            node_exporter_port: u16::try_from(port)
                .map_err(|_| Error::Corrupt(format!("node_exporter_port {port}")))?,
            system_info,
            agent_state,
            last_heartbeat_at: last_heartbeat_at.map(from_ms),
            desired_version: r.try_get("desired_version")?,
            envoy_version: r.try_get("envoy_version")?,
            created_at: from_ms(r.try_get("created_at")?),
            updated_at: from_ms(r.try_get("updated_at")?),
            deleted_at: r.try_get::<Option<i64>, _>("deleted_at")?.map(from_ms),
            mesh_opt_out: r.try_get::<i64, _>("mesh_opt_out")? != 0,
            mesh: crate::mesh::mesh_status_from_row(r)?,
            contract: crate::contracts::contract_from_row(r)?,
        })
    }

    // -------------------------------------------------------------------------------------
    // Providers

    pub(crate) async fn provider_id_by_name<'c, E>(
        &self,
        exec: E,
        name: &str,
    ) -> Result<Option<String>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        Ok(sqlx::query("SELECT id FROM providers WHERE name_key = $1")
            .bind(name.to_lowercase())
            .fetch_optional(exec)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?)
    }

    async fn provider_in<'c, E>(&self, exec: E, id_or_name: &str) -> Result<Provider>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let (col, val) = match Uuid::parse_str(id_or_name) {
            Ok(u) => ("pr.id", u.to_string()),
            Err(_) => ("pr.name_key", id_or_name.to_lowercase()),
        };
        let row = sqlx::query(dynsql!(
            "SELECT {PROVIDER_COLS} FROM providers pr WHERE {col} = $1"
        ))
        .bind(val)
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no provider {id_or_name:?}")))?;
        provider_from_row(&row)
    }

    /// A provider by id or name.
    pub async fn get_provider(&self, id_or_name: &str) -> Result<Provider> {
        self.provider_in(&self.pools.read, id_or_name).await
    }

    /// Every provider, by name.
    pub async fn list_providers(&self, limit: i64, offset: i64) -> Result<List<Provider>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM providers")
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(dynsql!(
            "SELECT {PROVIDER_COLS} FROM providers pr ORDER BY pr.name_key LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.read)
        .await?;
        Ok(List {
            items: rows.iter().map(provider_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    /// Adds a provider.
    pub async fn create_provider(&self, actor: &str, c: &ProviderCreate) -> Result<Provider> {
        let id = Uuid::new_v4();
        let now = now_ms();
        let mut tx = self.pools.write.begin().await?;
        let res = sqlx::query(
            "INSERT INTO providers (id, name, name_key, country, website, notes, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id.to_string())
        .bind(c.name.clone())
        .bind(c.name.to_lowercase())
        .bind(c.country.clone())
        .bind(c.website.clone())
        .bind(c.notes.clone())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!(
                    "a provider named {:?} exists",
                    c.name
                )));
            }
            r => r?,
        };
        let p = self.provider_in(&mut *tx, &id.to_string()).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "provider.create",
                resource_type: "provider",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&p),
        )
        .await?;
        tx.commit().await?;
        Ok(p)
    }

    /// Changes a provider.
    pub async fn update_provider(
        &self,
        actor: &str,
        id_or_name: &str,
        p: &ProviderPatch,
    ) -> Result<Provider> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.provider_in(&mut *tx, id_or_name).await?;
        let name = p
            .name
            .clone()
            .flatten()
            .unwrap_or_else(|| before.name.clone());
        let pick = |v: &Option<Option<String>>, old: &Option<String>| match v {
            Some(v) => v.clone(),
            None => old.clone(),
        };
        let res = sqlx::query(
            "UPDATE providers SET name = $1, name_key = $2, country = $3, website = $4, notes = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(name.clone())
        .bind(name.to_lowercase())
        .bind(pick(&p.country, &before.country))
        .bind(pick(&p.website, &before.website))
        .bind(pick(&p.notes, &before.notes))
        .bind(now_ms())
        .bind(before.id.to_string())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!("a provider named {name:?} exists")));
            }
            r => r?,
        };
        let after = self.provider_in(&mut *tx, &before.id.to_string()).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "provider.update",
                resource_type: "provider",
                resource_id: before.id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Removes a provider that no live VPS uses. Deleted VPS that named it forget it.
    pub async fn delete_provider(&self, actor: &str, id_or_name: &str) -> Result<Provider> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.provider_in(&mut *tx, id_or_name).await?;
        if before.vps_count > 0 {
            return Err(Error::Conflict(format!(
                "provider {:?} is used by {} VPS; move them to another provider first",
                before.name, before.vps_count
            )));
        }
        sqlx::query(
            "UPDATE vps SET provider_id = NULL WHERE provider_id = $1 AND deleted_at IS NOT NULL",
        )
        .bind(before.id.to_string())
        .execute(&mut *tx)
        .await?;
        self.revoke_tokens_referring(&mut tx, actor, TokenRef::Provider, &before.id.to_string())
            .await?;
        sqlx::query("DELETE FROM providers WHERE id = $1")
            .bind(before.id.to_string())
            .execute(&mut *tx)
            .await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "provider.delete",
                resource_type: "provider",
                resource_id: before.id.to_string(),
            },
            Some(&before),
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        Ok(before)
    }

    // -------------------------------------------------------------------------------------
    // Purposes

    pub(crate) async fn purpose_exists<'c, E>(&self, exec: E, name: &str) -> Result<bool>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        Ok(sqlx::query("SELECT 1 AS one FROM purposes WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(exec)
            .await?
            .is_some())
    }

    async fn purpose_in<'c, E>(&self, exec: E, name: &str) -> Result<Purpose>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let row = sqlx::query(dynsql!(
            "SELECT {PURPOSE_COLS} FROM purposes pu WHERE pu.name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no purpose {name:?}")))?;
        purpose_from_row(&row)
    }

    /// A purpose by name.
    pub async fn get_purpose(&self, name: &str) -> Result<Purpose> {
        self.purpose_in(&self.pools.read, name).await
    }

    /// Every purpose, by name.
    pub async fn list_purposes(&self, limit: i64, offset: i64) -> Result<List<Purpose>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM purposes")
            .fetch_one(&self.pools.read)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(dynsql!(
            "SELECT {PURPOSE_COLS} FROM purposes pu ORDER BY pu.name LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pools.read)
        .await?;
        Ok(List {
            items: rows.iter().map(purpose_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    /// Adds a purpose. Its `mesh` object must be valid mesh settings.
    pub async fn create_purpose(&self, actor: &str, c: &PurposeCreate) -> Result<Purpose> {
        if let Some(m) = &c.mesh {
            crate::mesh::check_mesh_settings(m)?;
        }
        let now = now_ms();
        let mut tx = self.pools.write.begin().await?;
        let res = sqlx::query(
            "INSERT INTO purposes (name, display_name, mesh, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(c.name.clone())
        .bind(c.display_name.clone().unwrap_or_else(|| c.name.clone()))
        .bind(serde_json::to_string(&c.mesh.clone().unwrap_or_else(|| serde_json::json!({}))).unwrap_or_else(|_| "{}".into()))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!(
                    "a purpose named {:?} exists",
                    c.name
                )));
            }
            r => r?,
        };
        let p = self.purpose_in(&mut *tx, &c.name).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "purpose.create",
                resource_type: "purpose",
                resource_id: c.name.clone(),
            },
            None::<&()>,
            Some(&p),
        )
        .await?;
        tx.commit().await?;
        self.fleet.mesh_changed();
        Ok(p)
    }

    /// Changes a purpose. A change of its mesh settings changes the desired state of its VPS.
    pub async fn update_purpose(
        &self,
        actor: &str,
        name: &str,
        p: &PurposePatch,
    ) -> Result<Purpose> {
        if let Some(Some(m)) = &p.mesh {
            crate::mesh::check_mesh_settings(m)?;
        }
        let mut tx = self.pools.write.begin().await?;
        let before = self.purpose_in(&mut *tx, name).await?;
        let display = p
            .display_name
            .clone()
            .flatten()
            .unwrap_or_else(|| before.display_name.clone());
        let mesh = p
            .mesh
            .clone()
            .flatten()
            .unwrap_or_else(|| before.mesh.clone());
        let now = now_ms();
        sqlx::query(
            "UPDATE purposes SET display_name = $1, mesh = $2, updated_at = $3 WHERE name = $4",
        )
        .bind(display)
        .bind(serde_json::to_string(&mesh).unwrap_or_else(|_| "{}".into()))
        .bind(now)
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?;
        if mesh != before.mesh {
            sqlx::query("UPDATE vps SET desired_version = desired_version + 1, updated_at = $1, mesh_status = 'pending' WHERE purpose = $2 AND deleted_at IS NULL")
                .bind(now)
                .bind(name.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let after = self.purpose_in(&mut *tx, name).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "purpose.update",
                resource_type: "purpose",
                resource_id: name.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        if mesh != before.mesh {
            // Cached desired versions of this purpose's VPS are stale now.
            self.refresh().await?;
            self.fleet.mesh_changed();
        }
        Ok(after)
    }

    /// Removes a purpose no VPS (deleted ones included) has.
    pub async fn delete_purpose(&self, actor: &str, name: &str) -> Result<Purpose> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.purpose_in(&mut *tx, name).await?;
        if before.vps_count > 0 {
            return Err(Error::Conflict(format!(
                "purpose {name:?} is used by {} VPS (deleted ones included); change their purpose first",
                before.vps_count
            )));
        }
        let targeted: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM envoy_routes WHERE target_purpose = $1")
                .bind(name.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if targeted > 0 {
            return Err(Error::Conflict(format!(
                "purpose {name:?} is the pool target of {targeted} route(s); change or delete them first"
            )));
        }
        self.revoke_tokens_referring(&mut tx, actor, TokenRef::Purpose, name)
            .await?;
        sqlx::query("DELETE FROM purposes WHERE name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "purpose.delete",
                resource_type: "purpose",
                resource_id: name.to_string(),
            },
            Some(&before),
            None::<&()>,
        )
        .await?;
        tx.commit().await?;
        self.fleet.mesh_changed();
        Ok(before)
    }

    // -------------------------------------------------------------------------------------
    // VPS

    pub(crate) async fn vps_in<'c, E>(&self, exec: E, id: Uuid) -> Result<Vps>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let row = sqlx::query(dynsql!("{VPS_SELECT} WHERE v.id = $1"))
            .bind(id.to_string())
            .fetch_optional(exec)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no VPS with id {id}")))?;
        self.vps_from_row(&row)
    }

    /// A VPS by id (deleted ones too).
    pub async fn get_vps(&self, id: Uuid) -> Result<Vps> {
        self.vps_in(&self.pools.read, id).await
    }

    /// VPS matching a query, by hostname.
    pub async fn list_vps(&self, q: &VpsQuery) -> Result<List<Vps>> {
        self.list_vps_filtered(q, &ContractFilter::default()).await
    }

    /// What service discovery needs of every live VPS of these statuses, handed to `each` one at
    /// a time from one streaming read, in no particular order; returns how many. Paging the
    /// fleet with `OFFSET` re-read the skipped rows and counted the matches on every page
    /// (quadratic); reading whole VPS rows decoded every JSON column (system info, agent
    /// state) and contract field for 14 that are used: at 1,000,000 VPS 27 s of a render
    /// whose query alone takes under a second (sqlite3 CLI).
    pub async fn for_each_target(
        &self,
        statuses: &[VpsStatus],
        mut each: impl FnMut(TargetVps),
    ) -> Result<usize> {
        use futures_util::TryStreamExt;
        if statuses.is_empty() {
            return Ok(0);
        }
        let mut sel = Sql::new(
            "SELECT v.id, v.hostname, v.alias, pr.name AS provider, v.country, v.city, v.purpose, \
             v.status, v.tags, v.monitoring, v.node_exporter_port, v.ip_addresses, v.mesh_opt_out, \
             v.mesh_entry FROM vps v LEFT JOIN providers pr ON pr.id = v.provider_id",
        );
        sel.push(" WHERE v.deleted_at IS NULL AND v.status IN (");
        for (i, st) in statuses.iter().enumerate() {
            if i > 0 {
                sel.push(", ");
            }
            sel.bind(st.as_str());
        }
        sel.push(")");
        let mut rows = sel.query().fetch(&self.pools.read);
        let mut n = 0;
        while let Some(r) = rows.try_next().await? {
            let id: String = r.try_get("id")?;
            let id = Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
            // An address change not yet written is already the VPS's address.
            let pending = self.fleet.pending_ips_json(id);
            let ip_addresses = match pending.and_then(|j| serde_json::from_str(&j).ok()) {
                Some(ips) => ips,
                None => json_col(&r, "ip_addresses")?,
            };
            let status: String = r.try_get("status")?;
            let port: i64 = r.try_get("node_exporter_port")?;
            each(TargetVps {
                id,
                hostname: r.try_get("hostname")?,
                alias: r.try_get("alias")?,
                provider: r.try_get("provider")?,
                country: r.try_get("country")?,
                city: r.try_get("city")?,
                purpose: r.try_get("purpose")?,
                status: VpsStatus::parse(&status)
                    .ok_or_else(|| Error::Corrupt(format!("vps status {status:?}")))?,
                tags: json_col(&r, "tags")?,
                monitoring: r.try_get::<i64, _>("monitoring")? != 0,
                node_exporter_port: u16::try_from(port)
                    .map_err(|_| Error::Corrupt(format!("node_exporter_port {port}")))?,
                ip_addresses,
                mesh_opt_out: r.try_get::<i64, _>("mesh_opt_out")? != 0,
                workload_entry: r.try_get("mesh_entry")?,
            });
            n += 1;
        }
        Ok(n)
    }

    /// VPS matching a query and contract filters, by hostname.
    pub async fn list_vps_filtered(&self, q: &VpsQuery, f: &ContractFilter) -> Result<List<Vps>> {
        // The console's list, which reads `q` from the text-search index, counts without the
        // provider join unless a provider is asked for, and walks past `offset` in the sort
        // index only: at 100,000 VPS in SQLite the first page took 80-100 ms and the last
        // 165-270 ms the plain way (a count through the join, every skipped row read).
        self.list_vps_console(
            q,
            &crate::console::ConsoleFilter {
                contract: f.clone(),
                ..Default::default()
            },
            crate::console::VpsSort::Hostname,
            false,
        )
        .await
    }

    async fn resolve_refs(
        &self,
        tx: &mut Transaction<'_, Any>,
        purpose: Option<&str>,
        provider: Option<&str>,
    ) -> Result<Option<String>> {
        if let Some(p) = purpose
            && !self.purpose_exists(&mut **tx, p).await?
        {
            return Err(Error::invalid("purpose", format!("no purpose named {p:?}")));
        }
        match provider {
            None => Ok(None),
            Some(name) => match self.provider_id_by_name(&mut **tx, name).await? {
                Some(id) => Ok(Some(id)),
                None => Err(Error::invalid(
                    "provider",
                    format!("no provider named {name:?}"),
                )),
            },
        }
    }

    async fn hostname_taken(&self, tx: &mut Transaction<'_, Any>, hostname: &str) -> Error {
        let other: Option<String> =
            sqlx::query("SELECT id FROM vps WHERE hostname = $1 AND deleted_at IS NULL")
                .bind(hostname.to_string())
                .fetch_optional(&mut **tx)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get("id").ok());
        Error::Conflict(match other {
            Some(id) => format!("hostname {hostname:?} is taken by VPS {id}"),
            None => format!("hostname {hostname:?} is taken"),
        })
    }

    pub(crate) async fn write_tags(
        tx: &mut Transaction<'_, Any>,
        id: Uuid,
        tags: &[String],
    ) -> Result<()> {
        sqlx::query("DELETE FROM vps_tags WHERE vps_id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        for t in tags {
            sqlx::query("INSERT INTO vps_tags (vps_id, tag) VALUES ($1, $2)")
                .bind(id.to_string())
                .bind(t.clone())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Inserts a VPS inside `tx` (shared by operators' creates and agents' enrollments).
    pub(crate) async fn insert_vps(
        &self,
        tx: &mut Transaction<'_, Any>,
        c: &VpsCreate,
        system_info: Option<&SystemInfo>,
        heartbeat_at: Option<i64>,
        provider_ref: Option<String>,
    ) -> Result<Uuid> {
        // `provider_ref`: a provider by id (an enrollment token's preset), when `c` names none.
        let provider_id = self
            .resolve_refs(tx, Some(&c.purpose), c.provider.as_deref())
            .await?
            .or(provider_ref);
        let id = Uuid::new_v4();
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO vps (id, hostname, alias, provider_id, ip_addresses, country, city, purpose, status, \
             tags, monitoring, node_exporter_port, system_info, last_heartbeat_at, desired_version, created_at, updated_at, mesh_opt_out) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, $15, $15, $16)",
        )
        .bind(id.to_string())
        .bind(c.hostname.clone())
        .bind(c.alias.clone())
        .bind(provider_id)
        .bind(serde_json::to_string(&c.ip_addresses).unwrap_or_else(|_| "[]".into()))
        .bind(c.country.clone())
        .bind(c.city.clone())
        .bind(c.purpose.clone())
        .bind(c.status.unwrap_or(VpsStatus::Provisioning).as_str())
        .bind(serde_json::to_string(&c.tags).unwrap_or_else(|_| "[]".into()))
        .bind(i64::from(c.monitoring))
        .bind(c.node_exporter_port)
        .bind(system_info.and_then(|s| serde_json::to_string(s).ok()))
        .bind(heartbeat_at)
        .bind(now)
        .bind(i64::from(c.mesh_opt_out))
        .execute(&mut **tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(self.hostname_taken(tx, &c.hostname).await);
            }
            r => r?,
        };
        Self::write_tags(tx, id, &c.tags).await?;
        Ok(id)
    }

    /// Adds a VPS.
    pub async fn create_vps(&self, actor: &str, c: &VpsCreate) -> Result<Vps> {
        self.create_vps_with(actor, c, &VpsContract::default())
            .await
    }

    /// Adds a VPS with its contract terms (checked by the caller).
    pub async fn create_vps_with(
        &self,
        actor: &str,
        c: &VpsCreate,
        contract: &VpsContract,
    ) -> Result<Vps> {
        let mut tx = self.pools.write.begin().await?;
        let id = self.insert_vps(&mut tx, c, None, None, None).await?;
        if *contract != VpsContract::default() {
            crate::contracts::write_contract(&mut tx, id, contract).await?;
        }
        let v = self.vps_in(&mut *tx, id).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "vps.create",
                resource_type: "vps",
                resource_id: id.to_string(),
            },
            None::<&()>,
            Some(&v),
        )
        .await?;
        tx.commit().await?;
        self.fleet.mesh_changed();
        Ok(v)
    }

    /// Changes a VPS. Lifecycle moves must be ones an operator may make; a deleted VPS must be
    /// restored first. `mesh_opt_out`, when given, keeps the VPS out of the mesh or lets it in.
    pub async fn update_vps(
        &self,
        actor: &str,
        id: Uuid,
        p: &VpsPatch,
        mesh_opt_out: Option<bool>,
    ) -> Result<Vps> {
        self.update_vps_with(actor, id, p, mesh_opt_out, None).await
    }

    /// [`Store::update_vps`] that also changes contract fields: the patch is applied to the
    /// stored contract and the result checked as a whole (422 naming `contract.<field>`).
    pub async fn update_vps_with(
        &self,
        actor: &str,
        id: Uuid,
        p: &VpsPatch,
        mesh_opt_out: Option<bool>,
        contract: Option<&VpsContractPatch>,
    ) -> Result<Vps> {
        // An address edit replaces what the agent reported before it: the addresses of a
        // heartbeat still queued are taken out (and no flush runs) until this write is
        // committed, else the flush would write the older report over the edit.
        let ip_edit = match &p.ip_addresses {
            Some(Some(_)) => {
                let mut e = IpEdit::begin(&self.fleet).await;
                e.take(id);
                Some(e)
            }
            _ => None,
        };
        let mut tx = self.pools.write.begin().await?;
        let (after, mesh_changed) = self
            .update_vps_tx(&mut tx, actor, id, p, mesh_opt_out, contract)
            .await?;
        tx.commit().await?;
        if let Some(e) = ip_edit {
            e.committed();
        }
        self.reload_hot(&self.pools.read, id).await?;
        if mesh_changed {
            self.fleet.mesh_changed();
        }
        Ok(after)
    }

    /// The change of [`Store::update_vps_with`] inside `tx`, audited there; returns the VPS
    /// after it and whether its mesh inputs changed (the caller signals that after commit).
    pub(crate) async fn update_vps_tx(
        &self,
        tx: &mut Transaction<'_, Any>,
        actor: &str,
        id: Uuid,
        p: &VpsPatch,
        mesh_opt_out: Option<bool>,
        contract: Option<&VpsContractPatch>,
    ) -> Result<(Vps, bool)> {
        let before = self.vps_in(&mut **tx, id).await?;
        if before.status == VpsStatus::Deleted {
            return Err(Error::Conflict(format!(
                "VPS {id} is deleted; restore it first"
            )));
        }
        let status = p.status.flatten().unwrap_or(before.status);
        if !before.status.can_become(status) {
            return Err(Error::Conflict(format!(
                "a {} VPS cannot become {} (allowed: provisioning→active|retiring|retired, active→retiring|retired, retiring→active|retired, retired→provisioning)",
                before.status.as_str(),
                status.as_str()
            )));
        }
        let purpose = p
            .purpose
            .clone()
            .flatten()
            .unwrap_or_else(|| before.purpose.clone());
        let provider = match &p.provider {
            Some(v) => v.clone(),
            None => before.provider.clone(),
        };
        let provider_id = self
            .resolve_refs(
                tx,
                (purpose != before.purpose).then_some(purpose.as_str()),
                provider.as_deref(),
            )
            .await?;
        let hostname = p
            .hostname
            .clone()
            .flatten()
            .unwrap_or_else(|| before.hostname.clone());
        let pick = |v: &Option<Option<String>>, old: &Option<String>| match v {
            Some(v) => v.clone(),
            None => old.clone(),
        };
        let ips = p
            .ip_addresses
            .clone()
            .flatten()
            .unwrap_or_else(|| before.ip_addresses.clone());
        let tags = p
            .tags
            .clone()
            .flatten()
            .unwrap_or_else(|| before.tags.clone());
        let monitoring = p.monitoring.flatten().unwrap_or(before.monitoring);
        let port = p
            .node_exporter_port
            .flatten()
            .unwrap_or(i64::from(before.node_exporter_port));
        // What the agent applies: its lifecycle and everything its purpose implies.
        let bump = i64::from(status != before.status || purpose != before.purpose);
        let opt_out = mesh_opt_out.unwrap_or(before.mesh_opt_out);
        let country = pick(&p.country, &before.country);
        let city = pick(&p.city, &before.city);
        // Everything the VPS's WorkloadEntry is made of: a change makes its mesh state pending
        // until the reconciler has acted on it.
        let mesh_changed = hostname != before.hostname
            || provider != before.provider
            || ips != before.ip_addresses
            || country != before.country
            || city != before.city
            || purpose != before.purpose
            || status != before.status
            || opt_out != before.mesh_opt_out;
        let res = sqlx::query(
            "UPDATE vps SET hostname = $1, alias = $2, provider_id = $3, ip_addresses = $4, country = $5, city = $6, \
             purpose = $7, status = $8, tags = $9, monitoring = $10, node_exporter_port = $11, \
             desired_version = desired_version + $12, updated_at = $13, mesh_opt_out = $15, \
             mesh_status = CASE WHEN $16 = 1 THEN 'pending' ELSE mesh_status END WHERE id = $14",
        )
        .bind(hostname.clone())
        .bind(pick(&p.alias, &before.alias))
        .bind(provider_id)
        .bind(serde_json::to_string(&ips).unwrap_or_else(|_| "[]".into()))
        .bind(country)
        .bind(city)
        .bind(purpose)
        .bind(status.as_str())
        .bind(serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into()))
        .bind(i64::from(monitoring))
        .bind(port)
        .bind(bump)
        .bind(now_ms())
        .bind(id.to_string())
        .bind(i64::from(opt_out))
        .bind(i64::from(mesh_changed))
        .execute(&mut **tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(self.hostname_taken(tx, &hostname).await);
            }
            r => r?,
        };
        if tags != before.tags {
            Self::write_tags(tx, id, &tags).await?;
        }
        if let Some(cp) = contract.filter(|c| !c.is_empty()) {
            let c = cp.apply_checked(&before.contract)?;
            crate::contracts::write_contract(tx, id, &c).await?;
        }
        let after = self.vps_in(&mut **tx, id).await?;
        record(
            &mut **tx,
            Record {
                actor,
                action: "vps.update",
                resource_type: "vps",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        Ok((after, mesh_changed))
    }

    /// Moves a VPS along its lifecycle inside `tx` if it is still in `from`; returns whether
    /// it moved. Every move changes the desired state.
    pub(crate) async fn transition(
        &self,
        tx: &mut Transaction<'_, Any>,
        actor: &str,
        action: &str,
        id: Uuid,
        from: VpsStatus,
        to: VpsStatus,
    ) -> Result<bool> {
        let before = self.vps_in(&mut **tx, id).await?;
        if before.status != from {
            return Ok(false);
        }
        let now = now_ms();
        let moved = match to {
            VpsStatus::Deleted => sqlx::query(
                "UPDATE vps SET status = 'deleted', status_before_delete = status, deleted_at = $1, \
                 desired_version = desired_version + 1, updated_at = $1, mesh_status = 'pending' \
                 WHERE id = $2 AND status = $3",
            )
            .bind(now)
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(&mut **tx)
            .await?,
            _ => sqlx::query(
                "UPDATE vps SET status = $1, desired_version = desired_version + 1, updated_at = $2, \
                 mesh_status = 'pending' WHERE id = $3 AND status = $4",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(&mut **tx)
            .await?,
        };
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        let after = self.vps_in(&mut **tx, id).await?;
        record(
            &mut **tx,
            Record {
                actor,
                action,
                resource_type: "vps",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        Ok(true)
    }

    /// Starts retiring a VPS (its agent stops what it manages and reports back, which makes it
    /// `retired`), or with `force` marks it retired at once. Idempotent.
    pub async fn retire_vps(&self, actor: &str, id: Uuid, force: bool) -> Result<Vps> {
        let mut tx = self.pools.write.begin().await?;
        let v = self.vps_in(&mut *tx, id).await?;
        let to = if force {
            VpsStatus::Retired
        } else {
            VpsStatus::Retiring
        };
        match v.status {
            VpsStatus::Deleted => return Err(Error::Conflict(format!("VPS {id} is deleted"))),
            VpsStatus::Retired => {}
            VpsStatus::Retiring if !force => {}
            from => {
                self.transition(&mut tx, actor, "vps.retire", id, from, to)
                    .await?;
            }
        }
        let after = self.vps_in(&mut *tx, id).await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, id).await?;
        Ok(after)
    }

    /// Soft-deletes a VPS (idempotent); its hostname becomes free.
    pub async fn delete_vps(&self, actor: &str, id: Uuid) -> Result<Vps> {
        let mut tx = self.pools.write.begin().await?;
        let v = self.vps_in(&mut *tx, id).await?;
        if v.status != VpsStatus::Deleted {
            self.transition(
                &mut tx,
                actor,
                "vps.delete",
                id,
                v.status,
                VpsStatus::Deleted,
            )
            .await?;
        }
        let after = self.vps_in(&mut *tx, id).await?;
        tx.commit().await?;
        self.fleet.remove(id);
        Ok(after)
    }

    /// Restores a soft-deleted VPS to the status it had.
    pub async fn restore_vps(&self, actor: &str, id: Uuid) -> Result<Vps> {
        let mut tx = self.pools.write.begin().await?;
        let before = self.vps_in(&mut *tx, id).await?;
        if before.status != VpsStatus::Deleted {
            return Err(Error::Conflict(format!("VPS {id} is not deleted")));
        }
        let res = sqlx::query(
            "UPDATE vps SET status = COALESCE(status_before_delete, 'provisioning'), status_before_delete = NULL, \
             deleted_at = NULL, desired_version = desired_version + 1, updated_at = $1, mesh_status = 'pending' \
             WHERE id = $2",
        )
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(self.hostname_taken(&mut tx, &before.hostname).await);
            }
            r => r?,
        };
        let after = self.vps_in(&mut *tx, id).await?;
        record(
            &mut *tx,
            Record {
                actor,
                action: "vps.restore",
                resource_type: "vps",
                resource_id: id.to_string(),
            },
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, id).await?;
        Ok(after)
    }

    /// How many VPS are in each status (for metrics).
    pub async fn count_vps_by_status(&self) -> Result<Vec<(VpsStatus, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM vps GROUP BY status")
            .fetch_all(&self.pools.read)
            .await?;
        let mut out: Vec<(VpsStatus, i64)> = VpsStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for r in rows {
            let s: String = r.try_get("status")?;
            let n: i64 = r.try_get("n")?;
            if let Some(slot) = out.iter_mut().find(|(st, _)| st.as_str() == s) {
                slot.1 = n;
            }
        }
        Ok(out)
    }
}

/// Operators' address edits in progress: holds the flush gate and the queued heartbeats'
/// addresses taken for them; dropped before [`IpEdit::committed`] (the edits failed or were
/// rolled back), it puts them back.
pub(crate) struct IpEdit<'a> {
    fleet: &'a crate::fleet::Fleet,
    taken: Vec<(Uuid, i64, String)>,
    _gate: tokio::sync::MutexGuard<'a, ()>,
}

impl<'a> IpEdit<'a> {
    /// Waits for a running flush to finish and keeps the next one from starting.
    pub(crate) async fn begin(fleet: &'a crate::fleet::Fleet) -> IpEdit<'a> {
        let gate = fleet.flush_gate.lock().await;
        IpEdit {
            fleet,
            taken: Vec::new(),
            _gate: gate,
        }
    }

    /// Takes the addresses out of the VPS's queued heartbeat, if it has one.
    pub(crate) fn take(&mut self, id: Uuid) {
        if let Some((at, ips)) = self.fleet.take_pending_ips(id) {
            self.taken.push((id, at, ips));
        }
    }

    /// Puts back what was taken for one VPS (its edit failed while others go on).
    pub(crate) fn give_back(&mut self, id: Uuid) {
        let (back, keep): (Vec<_>, Vec<_>) = self.taken.drain(..).partition(|t| t.0 == id);
        self.taken = keep;
        for (id, at, ips) in back {
            self.fleet.restore_pending_ips(id, at, ips);
        }
    }

    /// The edits are stored: the older reports stay dropped.
    pub(crate) fn committed(mut self) {
        self.taken.clear();
    }
}

impl Drop for IpEdit<'_> {
    fn drop(&mut self) {
        for (id, at, ips) in self.taken.drain(..) {
            self.fleet.restore_pending_ips(id, at, ips);
        }
    }
}

/// The WHERE clause of [`VpsQuery`]'s filters as `GET /api/vps` means them (every list of VPS
/// uses it, so a filter means the same on every page); provider names are matched through the
/// `pr` join, and callers append their own clauses.
pub(crate) fn vps_filters(q: &VpsQuery) -> Sql {
    let mut w = Sql::new(" WHERE ");
    match q.status {
        Some(VpsStatus::Deleted) => w.push("v.deleted_at IS NOT NULL"),
        Some(s) => w
            .push("v.deleted_at IS NULL AND v.status = ")
            .bind(s.as_str()),
        None => w.push("v.deleted_at IS NULL"),
    };
    if let Some(p) = &q.purpose {
        w.push(" AND v.purpose = ").bind(p.as_str());
    }
    if let Some(c) = &q.country {
        w.push(" AND v.country = ").bind(c.as_str());
    }
    if let Some(p) = &q.provider {
        w.push(" AND pr.name_key = ").bind(p.to_lowercase());
    }
    if let Some(t) = &q.tag {
        // `IN` rather than a correlated `EXISTS`: SQLite then reads the tag's index entries
        // instead of probing vps_tags once for every live VPS (1.2 s at 100,000 VPS).
        w.push(" AND v.id IN (SELECT t.vps_id FROM vps_tags t WHERE t.tag = ")
            .bind(t.as_str())
            .push(")");
    }
    if let Some(h) = &q.hostname {
        w.push(" AND v.hostname = ").bind(h.as_str());
    }
    if let Some(text) = &q.q {
        let escaped = text
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pat = format!("%{escaped}%");
        w.push(" AND (v.hostname LIKE ")
            .bind(pat.clone())
            .push(" ESCAPE '\\'");
        for col in ["v.alias", "v.city", "v.ip_addresses"] {
            w.push(&format!(" OR LOWER(COALESCE({col}, '')) LIKE "))
                .bind(pat.clone())
                .push(" ESCAPE '\\'");
        }
        w.push(")");
    }
    w
}

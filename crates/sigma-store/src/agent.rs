//! What agents do: enroll, register, heartbeat.

use sigma_types::{
    DesiredState, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, Role,
    Vps, VpsCreate, VpsStatus,
};
use sqlx::{Any, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::auth::Principal;
use crate::db::now_ms;
use crate::error::{Error, Result, is_unique_violation};
use crate::fleet::Beat;

fn desired(v: &Vps) -> DesiredState {
    DesiredState {
        vps_id: v.id,
        status: v.status,
        desired_version: v.desired_version,
        envoy_version: v.envoy_version,
    }
}

fn agent_actor(hostname: &str) -> String {
    format!("agent:{hostname}")
}

fn refuse_inactive(v: &Vps) -> Result<()> {
    match v.status {
        VpsStatus::Retired => Err(Error::Conflict(format!(
            "VPS {} ({}) is retired; an agent cannot bring it back. An operator can re-commission it \
             (status provisioning) or delete it so the hostname can enroll anew",
            v.hostname, v.id
        ))),
        VpsStatus::Deleted => Err(Error::Conflict(format!(
            "VPS {} ({}) is deleted; an operator must restore it first",
            v.hostname, v.id
        ))),
        _ => Ok(()),
    }
}

impl Store {
    /// First contact: an agent presents an enrollment token. The VPS is matched by hostname or
    /// created from the token's presets, and a new key bound to it is returned.
    pub async fn register_with_token(
        &self,
        token: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse> {
        // Two agents of one hostname enrolling at once on PostgreSQL: the loser of the insert
        // race sees a unique violation and, on the retry, finds the winner's VPS.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_register_with_token(token, req).await {
                Err(Error::Db(e)) if attempt < 3 && is_unique_violation(&e) => continue,
                Err(Error::Conflict(m)) if attempt < 3 && m.contains("is taken") => continue,
                r => return r,
            }
        }
    }

    async fn try_register_with_token(
        &self,
        token: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse> {
        let mut tx = self.pools.write.begin().await?;
        let t = self.consume_enrollment_token(&mut tx, token).await?;
        let enroll_actor = format!("enroll:{}", t.prefix);
        let existing: Option<String> =
            sqlx::query("SELECT id FROM vps WHERE hostname = $1 AND deleted_at IS NULL")
                .bind(req.hostname.clone())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("id"))
                .transpose()?;
        let now = now_ms();
        let id = match existing {
            Some(id) => {
                let id =
                    Uuid::parse_str(&id).map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
                let v = self.vps_in(&mut *tx, id).await?;
                refuse_inactive(&v)?;
                self.record_contact(&mut tx, &enroll_actor, id, req, now)
                    .await?;
                if v.status == VpsStatus::Provisioning {
                    self.transition(
                        &mut tx,
                        &enroll_actor,
                        "vps.activate",
                        id,
                        VpsStatus::Provisioning,
                        VpsStatus::Active,
                    )
                    .await?;
                }
                id
            }
            None => {
                let purpose = t
                    .presets
                    .purpose
                    .clone()
                    .or_else(|| req.purpose.clone())
                    .ok_or_else(|| Error::invalid("purpose", "the enrollment token has no purpose preset, so the agent must send one"))?;
                let create = VpsCreate {
                    hostname: req.hostname.clone(),
                    alias: None,
                    provider: t.presets.provider.clone(),
                    ip_addresses: req.ip_addresses.clone(),
                    country: t.presets.country.clone(),
                    city: None,
                    purpose,
                    status: Some(VpsStatus::Active),
                    tags: t.presets.tags.clone(),
                    monitoring: true,
                    node_exporter_port: 9100,
                    mesh_opt_out: false,
                };
                let id = self
                    .insert_vps(&mut tx, &create, req.system_info.as_ref(), Some(now))
                    .await?;
                let v = self.vps_in(&mut *tx, id).await?;
                record(
                    &mut *tx,
                    Record {
                        actor: &enroll_actor,
                        action: "vps.enroll",
                        resource_type: "vps",
                        resource_id: id.to_string(),
                    },
                    None::<&()>,
                    Some(&v),
                )
                .await?;
                id
            }
        };
        let (api_key, key) = self
            .insert_key(
                &mut tx,
                &enroll_actor,
                &format!("agent {}", req.hostname),
                Role::Agent,
                Some(id),
                None,
            )
            .await?;
        let vps = self.vps_in(&mut *tx, id).await?;
        tx.commit().await?;
        self.keys.remember(&api_key, key.hash);
        self.reload_hot(&self.pools.read, id).await?;
        Ok(RegisterResponse {
            desired: desired(&vps),
            vps,
            agent_key: Some(key.plaintext),
        })
    }

    /// Writes what an agent reported at register time (register is rare; no coalescing).
    async fn record_contact(
        &self,
        tx: &mut Transaction<'_, Any>,
        _actor: &str,
        id: Uuid,
        req: &RegisterRequest,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE vps SET ip_addresses = $1, system_info = COALESCE($2, system_info), last_heartbeat_at = $3, updated_at = $3 WHERE id = $4",
        )
        .bind(serde_json::to_string(&req.ip_addresses).unwrap_or_else(|_| "[]".into()))
        .bind(req.system_info.as_ref().and_then(|s| serde_json::to_string(s).ok()))
        .bind(now)
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub(crate) fn agent_vps(p: &Principal) -> Result<Uuid> {
        match (p.role, p.vps_id) {
            (Role::Agent, Some(id)) => Ok(id),
            _ => Err(Error::Forbidden(format!(
                "only an agent key bound to a VPS may do this; {} is a {} key",
                p.prefix,
                p.role.as_str()
            ))),
        }
    }

    pub(crate) fn check_hostname(id: Uuid, bound: &str, asked: &str) -> Result<()> {
        if bound != asked {
            return Err(Error::Forbidden(format!(
                "this agent key belongs to VPS {id} ({bound}), not to {asked}"
            )));
        }
        Ok(())
    }

    /// Re-registration with the agent's own key (after a restart): refreshes what the VPS
    /// reports and activates a provisioning VPS.
    pub async fn register_with_key(
        &self,
        p: &Principal,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse> {
        let id = Self::agent_vps(p)?;
        let mut tx = self.pools.write.begin().await?;
        let v = self.vps_in(&mut *tx, id).await?;
        Self::check_hostname(id, &v.hostname, &req.hostname)?;
        refuse_inactive(&v)?;
        let actor = agent_actor(&v.hostname);
        self.record_contact(&mut tx, &actor, id, req, now_ms())
            .await?;
        if v.status == VpsStatus::Provisioning {
            self.transition(
                &mut tx,
                &actor,
                "vps.activate",
                id,
                VpsStatus::Provisioning,
                VpsStatus::Active,
            )
            .await?;
        }
        let vps = self.vps_in(&mut *tx, id).await?;
        tx.commit().await?;
        self.reload_hot(&self.pools.read, id).await?;
        Ok(RegisterResponse {
            desired: desired(&vps),
            vps,
            agent_key: None,
        })
    }

    /// A heartbeat. Validated against memory and queued for the next batched write; only a
    /// lifecycle move (provisioning → active, retiring → retired) touches the database now.
    pub async fn heartbeat(
        &self,
        p: &Principal,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse> {
        let id = Self::agent_vps(p)?;
        let mut hot = self.hot_vps(id).await?;
        Self::check_hostname(id, &hot.hostname, &req.hostname)?;
        if hot.status == VpsStatus::Deleted {
            return Err(Error::Conflict(format!(
                "VPS {} ({id}) is deleted; an operator must restore it first",
                hot.hostname
            )));
        }
        let now = now_ms();
        let ips_json = req
            .ip_addresses
            .as_ref()
            .and_then(|ips| serde_json::to_string(ips).ok())
            .filter(|j| self.fleet.note_ips(id, j));
        self.fleet.queue_beat(
            id,
            Beat {
                at: now,
                ips_json,
                system_info_json: req
                    .system_info
                    .as_ref()
                    .and_then(|s| serde_json::to_string(s).ok()),
                agent_state_json: req
                    .agent_state
                    .as_ref()
                    .and_then(|s| serde_json::to_string(s).ok()),
            },
        );
        let step = match hot.status {
            VpsStatus::Provisioning => Some((VpsStatus::Active, "vps.activate")),
            VpsStatus::Retiring
                if req
                    .applied_version
                    .is_some_and(|a| a >= hot.desired_version) =>
            {
                Some((VpsStatus::Retired, "vps.retired"))
            }
            _ => None,
        };
        if let Some((to, action)) = step {
            let mut tx = self.pools.write.begin().await?;
            self.transition(
                &mut tx,
                &agent_actor(&hot.hostname),
                action,
                id,
                hot.status,
                to,
            )
            .await?;
            tx.commit().await?;
            self.reload_hot(&self.pools.read, id).await?;
            hot = self.hot_vps(id).await?;
        }
        Ok(HeartbeatResponse {
            vps_id: id,
            status: hot.status,
            desired_version: hot.desired_version,
            envoy_version: hot.envoy_version,
            server_time: OffsetDateTime::now_utc(),
        })
    }
}

//! What agents do: enroll, register, heartbeat.

use sigma_types::{
    DesiredState, EnrollmentToken, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, Role, Vps, VpsCreate, VpsStatus,
};
use sqlx::{Any, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::auth::{Principal, TokenRefs};
use crate::db::now_ms;
use crate::error::{Error, Result, is_unique_violation};
use crate::fleet::{Beat, MeshFacts};

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
        let (t, refs) = self.consume_enrollment_token(&mut tx, token).await?;
        let enroll_actor = format!("enroll:{}", t.prefix);
        let now = now_ms();
        let (id, revoked) = match refs.vps_id {
            Some(bound) => {
                // A reinstall token: it enrolls its own VPS only, and replaces its agent key.
                let v = self.vps_in(&mut *tx, bound).await?;
                let refusal = if v.deleted_at.is_some() {
                    Some(Error::Conflict(format!(
                        "enrollment token {} is bound to VPS {} ({bound}), which is deleted; an \
                         operator must restore it first",
                        t.prefix, v.hostname
                    )))
                } else if v.hostname != req.hostname {
                    Some(Error::Forbidden(format!(
                        "enrollment token {} is bound to VPS {} ({bound}) and cannot enroll {}",
                        t.prefix, v.hostname, req.hostname
                    )))
                } else {
                    refuse_inactive(&v).err()
                };
                if let Some(e) = refusal {
                    tx.rollback().await?;
                    self.audit_refused_enrollment(&enroll_actor, &t, Some(bound), req, &e)
                        .await?;
                    return Err(e);
                }
                let revoked = self
                    .revoke_agent_keys(&mut tx, &enroll_actor, bound, now)
                    .await?;
                self.record_contact(&mut tx, &enroll_actor, bound, req, now)
                    .await?;
                self.activate_if_provisioning(&mut tx, &enroll_actor, &v)
                    .await?;
                let after = self.vps_in(&mut *tx, bound).await?;
                record(
                    &mut *tx,
                    Record {
                        actor: &enroll_actor,
                        action: "vps.reenroll",
                        resource_type: "vps",
                        resource_id: bound.to_string(),
                    },
                    Some(&v),
                    Some(&serde_json::json!({
                        "vps": after,
                        "enrollment_token_id": t.id,
                        "enrollment_token_prefix": t.prefix,
                        "revoked_agent_keys": revoked,
                    })),
                )
                .await?;
                (bound, revoked)
            }
            None => {
                let existing: Option<String> =
                    sqlx::query("SELECT id FROM vps WHERE hostname = $1 AND deleted_at IS NULL")
                        .bind(req.hostname.clone())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("id"))
                        .transpose()?;
                match existing {
                    Some(id) => {
                        let id = Uuid::parse_str(&id)
                            .map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
                        let v = self.vps_in(&mut *tx, id).await?;
                        let live = self.live_agent_keys(&mut tx, id, now).await?;
                        let refusal = refuse_inactive(&v).err().or_else(|| {
                            (!live.is_empty()).then(|| {
                                Error::Conflict(format!(
                                    "VPS {} ({id}) already has a live agent key ({}); an enrollment \
                                     token cannot take it over. To reinstall its agent, an operator \
                                     runs `sigmactl vps reenroll {}` (a single-use token bound to \
                                     this VPS), or revokes its agent key first",
                                    v.hostname,
                                    live.join(", "),
                                    v.hostname
                                ))
                            })
                        });
                        if let Some(e) = refusal {
                            tx.rollback().await?;
                            self.audit_refused_enrollment(&enroll_actor, &t, Some(id), req, &e)
                                .await?;
                            return Err(e);
                        }
                        // No live key: a VPS an operator created for this host, or one whose
                        // key an operator revoked. The token's holder claims it.
                        self.record_contact(&mut tx, &enroll_actor, id, req, now)
                            .await?;
                        self.activate_if_provisioning(&mut tx, &enroll_actor, &v)
                            .await?;
                        let after = self.vps_in(&mut *tx, id).await?;
                        record(
                            &mut *tx,
                            Record {
                                actor: &enroll_actor,
                                action: "vps.enroll",
                                resource_type: "vps",
                                resource_id: id.to_string(),
                            },
                            Some(&v),
                            Some(&after),
                        )
                        .await?;
                        (id, Vec::new())
                    }
                    None => (
                        self.enroll_new(&mut tx, &t, &refs, req, now).await?,
                        Vec::new(),
                    ),
                }
            }
        };
        let answer = self.finish_enrollment(&t, id, req, tx).await?;
        // Committed: the old keys stop working here at once (other replicas at their next
        // change poll).
        for prefix in &revoked {
            self.keys.mark_revoked(prefix, now);
        }
        Ok(answer)
    }

    /// Creates the VPS of a first enrollment from the token's presets. A preset that fails is
    /// the token's fault and is said so; only what the agent sent is blamed on the agent.
    async fn enroll_new(
        &self,
        tx: &mut Transaction<'_, Any>,
        t: &EnrollmentToken,
        refs: &TokenRefs,
        req: &RegisterRequest,
        now: i64,
    ) -> Result<Uuid> {
        let enroll_actor = format!("enroll:{}", t.prefix);
        let purpose = refs
            .purpose
            .clone()
            .or_else(|| req.purpose.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "purpose",
                    "the enrollment token has no purpose preset, so the agent must send one",
                )
            })?;
        let create = VpsCreate {
            hostname: req.hostname.clone(),
            alias: None,
            provider: None,
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
            .insert_vps(
                tx,
                &create,
                req.system_info.as_ref(),
                Some(now),
                refs.provider_id.clone(),
            )
            .await
            .map_err(|e| match e {
                Error::Invalid(f) if refs.purpose.is_some() && f.0.contains_key("purpose") => {
                    Error::Conflict(format!(
                        "enrollment token {}'s purpose preset {:?} designates no purpose any more; \
                         an operator must issue a new token",
                        t.prefix, create.purpose
                    ))
                }
                e => e,
            })?;
        if let Some(c) = &t.presets.contract {
            crate::contracts::write_contract(tx, id, c).await?;
        }
        let v = self.vps_in(&mut **tx, id).await?;
        record(
            &mut **tx,
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
        Ok(id)
    }

    /// Issues the agent key of an enrollment in its transaction, commits, and answers.
    async fn finish_enrollment(
        &self,
        t: &EnrollmentToken,
        id: Uuid,
        req: &RegisterRequest,
        mut tx: Transaction<'_, Any>,
    ) -> Result<RegisterResponse> {
        let enroll_actor = format!("enroll:{}", t.prefix);
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

    async fn activate_if_provisioning(
        &self,
        tx: &mut Transaction<'_, Any>,
        actor: &str,
        v: &Vps,
    ) -> Result<()> {
        if v.status == VpsStatus::Provisioning {
            self.transition(
                tx,
                actor,
                "vps.activate",
                v.id,
                VpsStatus::Provisioning,
                VpsStatus::Active,
            )
            .await?;
        }
        Ok(())
    }

    /// Prefixes of the agent keys of VPS `id` that still authenticate.
    async fn live_agent_keys(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: Uuid,
        now: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT prefix FROM api_keys WHERE vps_id = $1 AND role = 'agent' AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2) ORDER BY prefix",
        )
        .bind(id.to_string())
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|r| r.try_get("prefix").map_err(Error::from))
            .collect()
    }

    /// Revokes every unrevoked agent key of VPS `id` (a reinstall), auditing each; returns
    /// their prefixes.
    async fn revoke_agent_keys(
        &self,
        tx: &mut Transaction<'_, Any>,
        actor: &str,
        id: Uuid,
        now: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT prefix FROM api_keys WHERE vps_id = $1 AND role = 'agent' AND revoked_at IS NULL ORDER BY prefix",
        )
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?;
        let mut prefixes = Vec::with_capacity(rows.len());
        for r in &rows {
            let prefix: String = r.try_get("prefix")?;
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE prefix = $2")
                .bind(now)
                .bind(prefix.clone())
                .execute(&mut **tx)
                .await?;
            record(
                &mut **tx,
                Record {
                    actor,
                    action: "api_key.revoke",
                    resource_type: "api_key",
                    resource_id: prefix.clone(),
                },
                None::<&()>,
                Some(&serde_json::json!({"prefix": prefix, "reason": "agent reinstalled with a token bound to its VPS"})),
            )
            .await?;
            prefixes.push(prefix);
        }
        Ok(prefixes)
    }

    /// Records an enrollment that was refused (after its transaction rolled back, so nothing
    /// else changed and the token keeps its use).
    async fn audit_refused_enrollment(
        &self,
        actor: &str,
        t: &EnrollmentToken,
        vps: Option<Uuid>,
        req: &RegisterRequest,
        why: &Error,
    ) -> Result<()> {
        record(
            &self.pools.write,
            Record {
                actor,
                action: "vps.enroll_refused",
                resource_type: "vps",
                resource_id: vps.map(|v| v.to_string()).unwrap_or_default(),
            },
            None::<&()>,
            Some(&serde_json::json!({
                "enrollment_token_id": t.id,
                "enrollment_token_prefix": t.prefix,
                "hostname": req.hostname,
                "reason": why.to_string(),
            })),
        )
        .await
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
                mesh: req.agent_state.as_ref().map(MeshFacts::of),
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

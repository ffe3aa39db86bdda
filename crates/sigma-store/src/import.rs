//! `POST /api/vps/import` in the store: rows applied in one transaction, each in a savepoint,
//! matched to live VPS by hostname (issue 20).

use sigma_types::records::{CheckedRecord, ImportOutcome, ImportReport, ImportRow, changes};
use sigma_types::{FieldErrors, VpsStatus};
use sqlx::{Acquire, Row};
use uuid::Uuid;

use crate::Store;
use crate::audit::{Record, record};
use crate::error::{Error, Result};

/// One row to import: its number, its hostname as given, and the record or why it is bad.
#[derive(Debug)]
pub struct ImportInput {
    /// 1-based row number.
    pub row: usize,
    /// The hostname as given, for the report.
    pub hostname: Option<String>,
    /// The checked record, or its field errors.
    pub record: std::result::Result<CheckedRecord, FieldErrors>,
}

/// A row error an import reports instead of failing the request.
fn row_error(e: Error) -> Result<(std::collections::BTreeMap<String, String>, Option<String>)> {
    match e {
        Error::Invalid(f) => Ok((f.0, None)),
        Error::Conflict(m) | Error::NotFound(m) => Ok((Default::default(), Some(m))),
        other => Err(other),
    }
}

impl Store {
    /// Imports rows: each creates a VPS, changes the live VPS of the same hostname to match,
    /// or matches already. With `partial` false nothing is written if any row fails; with
    /// `dry_run` nothing is written at all and the report says what would happen. Every
    /// create and change is audited as usual, and the import itself as `vps.import`.
    pub async fn import_vps(
        &self,
        actor: &str,
        rows: Vec<ImportInput>,
        dry_run: bool,
        partial: bool,
    ) -> Result<ImportReport> {
        // Rows that change addresses replace what agents reported before the import: as for
        // one edit, their queued heartbeats' addresses are taken out and no flush runs until
        // the import is committed (put back if it is not).
        let mut ip_edit = crate::inventory::IpEdit::begin(&self.fleet).await;
        let mut tx = self.pools.write.begin().await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut touched: Vec<Uuid> = Vec::new();
        let mut mesh_changed = false;
        let mut seen = std::collections::HashSet::new();
        for input in rows {
            let mut result = ImportRow {
                row: input.row,
                hostname: input.hostname.clone(),
                outcome: ImportOutcome::Error,
                id: None,
                fields: Default::default(),
                message: None,
            };
            let rec = match input.record {
                Ok(r) => r,
                Err(f) => {
                    result.fields = f.0;
                    out.push(result);
                    continue;
                }
            };
            if !seen.insert(rec.create.hostname.clone()) {
                result.message = Some(format!(
                    "hostname {:?} appears on an earlier row",
                    rec.create.hostname
                ));
                out.push(result);
                continue;
            }
            let mut sp = tx.begin().await?;
            let existing: Option<String> =
                sqlx::query("SELECT id FROM vps WHERE hostname = $1 AND deleted_at IS NULL")
                    .bind(rec.create.hostname.clone())
                    .fetch_optional(&mut *sp)
                    .await?
                    .map(|r| r.try_get("id"))
                    .transpose()?;
            // The VPS this row updates, so a failed update gives back what it took.
            let mut updating = None;
            let done = match existing {
                None => {
                    let mut create = rec.create.clone();
                    match rec.status {
                        None | Some(VpsStatus::Provisioning) | Some(VpsStatus::Active) => {
                            create.status = Some(rec.status.unwrap_or(VpsStatus::Provisioning));
                        }
                        Some(s) => {
                            result.fields.insert(
                                "status".into(),
                                format!("a new VPS is provisioning or active, not {}", s.as_str()),
                            );
                            out.push(result);
                            continue;
                        }
                    }
                    self.import_create(&mut sp, actor, &create, &rec)
                        .await
                        .map(|id| {
                            mesh_changed = true;
                            (ImportOutcome::Created, id)
                        })
                }
                Some(id) => {
                    let id = Uuid::parse_str(&id)
                        .map_err(|_| Error::Corrupt(format!("vps id {id:?}")))?;
                    let before = self.vps_in(&mut *sp, id).await?;
                    match changes(&before, &rec) {
                        None => Ok((ImportOutcome::Unchanged, id)),
                        Some((patch, opt_out, contract)) => {
                            if matches!(patch.ip_addresses, Some(Some(_))) {
                                ip_edit.take(id);
                                updating = Some(id);
                            }
                            self.update_vps_tx(
                                &mut sp,
                                actor,
                                id,
                                &patch,
                                opt_out,
                                contract.as_ref(),
                            )
                            .await
                            .map(|(_, m)| {
                                mesh_changed |= m;
                                touched.push(id);
                                (ImportOutcome::Updated, id)
                            })
                        }
                    }
                }
            };
            match done {
                Ok((outcome, id)) => {
                    sp.commit().await?;
                    result.outcome = outcome;
                    result.id = Some(id);
                }
                Err(e) => {
                    sp.rollback().await?;
                    if let Some(id) = updating {
                        ip_edit.give_back(id);
                    }
                    let (fields, message) = row_error(e)?;
                    result.fields = fields;
                    result.message = message;
                }
            }
            out.push(result);
        }
        let count = |o: ImportOutcome| out.iter().filter(|r| r.outcome == o).count();
        let errors = count(ImportOutcome::Error);
        let applied = !dry_run && (partial || errors == 0);
        let report = ImportReport {
            dry_run,
            mode: if partial { "partial" } else { "all" }.into(),
            applied,
            created: count(ImportOutcome::Created),
            updated: count(ImportOutcome::Updated),
            unchanged: count(ImportOutcome::Unchanged),
            errors,
            rows: out,
        };
        if !applied {
            tx.rollback().await?;
            return Ok(report);
        }
        record(
            &mut *tx,
            Record {
                actor,
                action: "vps.import",
                resource_type: "vps",
                resource_id: "import".into(),
            },
            None::<&()>,
            Some(&serde_json::json!({
                "mode": report.mode, "created": report.created, "updated": report.updated,
                "unchanged": report.unchanged, "errors": report.errors,
            })),
        )
        .await?;
        tx.commit().await?;
        ip_edit.committed();
        for id in touched {
            self.reload_hot(&self.pools.read, id).await?;
        }
        if mesh_changed {
            self.fleet.mesh_changed();
        }
        Ok(report)
    }

    async fn import_create(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        actor: &str,
        create: &sigma_types::VpsCreate,
        rec: &CheckedRecord,
    ) -> Result<Uuid> {
        let id = self.insert_vps(tx, create, None, None, None).await?;
        crate::contracts::write_contract(tx, id, &rec.contract).await?;
        let v = self.vps_in(&mut **tx, id).await?;
        record(
            &mut **tx,
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
        Ok(id)
    }
}

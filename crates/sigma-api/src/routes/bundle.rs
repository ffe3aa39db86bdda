//! Istio bootstrap bundles: what a mesh-enabled VPS needs to run pilot-agent, built from the
//! cluster at the moment it is asked for.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sigma_store::Principal;
use sigma_store::mesh::MeshSubject;
use sigma_types::Role;
use sigma_types::mesh::IstioBootstrapBundle;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ApiResult, fields_under};
use crate::extract::{ApiQuery, MeshIdentity};
use crate::metrics::ResultLabels;

/// Seconds a client is asked to wait after a 503: the cluster pieces it lacks (istiod, the
/// east-west gateway) take longer than the default second to appear, and a fleet retrying every
/// second would only load the API server.
const RETRY_AFTER_SECONDS: &str = "10";

/// Query of the bootstrap endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BootstrapQuery {
    /// The VPS's hostname (for an agent key: its own VPS's). Required: a missing one is a
    /// 422 naming `hostname` (it is an `Option` only so that answer, not serde's, is given).
    #[param(required = true)]
    pub hostname: Option<String>,
}

/// A VPS's Istio bootstrap bundle: the files `istioctl x workload entry configure` writes
/// (`root-cert.pem`, `istio-token`, `mesh.yaml`, `cluster.env`, `hosts`), built from the
/// cluster for this VPS, with the token's expiry, the root certificate's fingerprint and a
/// version that changes when anything but the token changes.
///
/// An agent key gets its own VPS's bundle only; admin and operator keys get any VPS's (for
/// manual installs; recorded in the audit log). Only for an active VPS of a mesh-enabled
/// purpose that is not opted out (409 otherwise), and only with `--mesh kubernetes` (409).
/// 503 names what the cluster lacks (istiod's root certificate ConfigMap, the mesh config, the
/// east-west gateway's address, a refused TokenRequest).
#[utoipa::path(get, path = "/api/agent/istio-bootstrap", tag = "agent", params(BootstrapQuery),
    responses(
        (status = 200, body = IstioBootstrapBundle),
        (status = 401, body = sigma_types::ErrorBody),
        (status = 403, description = "a readonly key, or another VPS's agent key", body = sigma_types::ErrorBody),
        (status = 404, description = "no VPS with this hostname", body = sigma_types::ErrorBody),
        (status = 409, description = "the VPS gets no mesh proxy, or the mesh mode is not kubernetes", body = sigma_types::ErrorBody),
        (status = 422, body = sigma_types::ErrorBody),
        (status = 503, description = "the cluster lacks a piece of the bundle (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn istio_bootstrap(
    State(s): State<AppState>,
    who: Result<MeshIdentity, ApiError>,
    query: Result<ApiQuery<BootstrapQuery>, ApiError>,
) -> Response {
    let started = Instant::now();
    // Set when TokenRequests are throttled: how long until the next is allowed.
    let mut busy: Option<std::time::Duration> = None;
    let r = async {
        // Credentials and role before the query, so a readonly key learns nothing from it.
        let MeshIdentity(p) = who?;
        let ApiQuery(q) = query?;
        issue(&s, &p, q, &mut busy).await
    }
    .await;
    let labels = ResultLabels::of(&r);
    s.metrics.bootstrap_issued.get_or_create(&labels).inc();
    s.metrics
        .bootstrap_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match r {
        // The bundle holds a credential: no cache may keep it.
        Ok(b) => ([(header::CACHE_CONTROL, "no-store")], Json(b)).into_response(),
        Err(e) => {
            let unavailable = e.status == StatusCode::SERVICE_UNAVAILABLE;
            let mut resp = e.into_response();
            if unavailable {
                let retry_after = match busy {
                    // Whole seconds, rounded up: never sooner than a token is free.
                    Some(d) => HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64),
                    None => HeaderValue::from_static(RETRY_AFTER_SECONDS),
                };
                resp.headers_mut().insert(header::RETRY_AFTER, retry_after);
            }
            resp
        }
    }
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// The VPS the principal may fetch the bundle of: an agent key's own VPS (whatever hostname
/// it asks for, another VPS is refused), or the VPS with this hostname for people who manage
/// the fleet.
async fn subject(s: &AppState, p: &Principal, hostname: &str) -> ApiResult<MeshSubject> {
    match p.role {
        Role::Agent => {
            let id = p.vps_id.ok_or_else(|| {
                ApiError::forbidden(format!("agent key {} is bound to no VPS", p.prefix))
            })?;
            let subject = s.store.mesh_subject(id).await.map_err(|e| match e {
                sigma_store::Error::NotFound(_) => {
                    ApiError::forbidden(format!("agent key {} is bound to no VPS", p.prefix))
                }
                other => other.into(),
            })?;
            if subject.vps.hostname != hostname {
                return Err(ApiError::forbidden(format!(
                    "this agent key belongs to VPS {id} ({}), not to {hostname}",
                    subject.vps.hostname
                )));
            }
            Ok(subject)
        }
        Role::Admin | Role::Operator => Ok(s.store.mesh_subject_by_hostname(hostname).await?),
        Role::Readonly => Err(ApiError::forbidden(
            "a readonly key may not fetch bootstrap bundles: they hold a credential of the VPS's mesh identity (needs admin, operator, or the VPS's agent key)",
        )),
    }
}

async fn issue(
    s: &AppState,
    p: &Principal,
    q: BootstrapQuery,
    busy: &mut Option<std::time::Duration>,
) -> ApiResult<IstioBootstrapBundle> {
    let hostname = match q.hostname.as_deref() {
        None => return Err(ApiError::field("hostname", "required")),
        Some(h) => {
            sigma_types::validate::hostname(h).map_err(|r| ApiError::field("hostname", r))?
        }
    };
    let subject = subject(s, p, &hostname).await?;

    let bundles = s.mesh.bundles()?;
    let purpose = subject.purpose.map_err(|invalid| {
        let fields = fields_under(&format!("purposes.{}", invalid.name), invalid.errors);
        ApiError {
            status: StatusCode::CONFLICT,
            code: "mesh_invalid",
            message: format!(
                "the stored mesh settings of purpose {} are invalid; fix them with PATCH /api/purposes/{}",
                invalid.name, invalid.name
            ),
            fields,
        }
    })?;

    let bundle = bundles
        .issue(&s.mesh.template, &purpose, &subject.vps)
        .await
        .map_err(|e| {
            if let sigma_reconciler::Error::Throttled { retry_after, .. } = &e {
                *busy = Some(*retry_after);
            }
            issue_error(&hostname, e)
        })?;

    if matches!(p.role, Role::Admin | Role::Operator) {
        // Recorded before the answer leaves: a credential handed to a person is never
        // unaccounted for. The token itself stays out of the log.
        let details = serde_json::json!({
            "hostname": bundle.hostname,
            "workload_entry": bundle.workload_entry,
            "bundle_version": bundle.bundle_version,
            "root_cert_sha256": bundle.root_cert_sha256,
            "token_expires_at": bundle
                .token_expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        s.store
            .audit_bootstrap_issued(&p.actor(), bundle.vps_id, &details)
            .await?;
    }
    Ok(bundle)
}

/// Inventory reasons are the client's to fix (409); everything else is the cluster's state
/// (503), logged with the VPS it stopped.
fn issue_error(hostname: &str, e: sigma_reconciler::Error) -> ApiError {
    use sigma_reconciler::Error as E;
    match e {
        E::Model(sigma_mesh::Error::NotMeshed(m)) => conflict("not_meshed", m),
        E::Model(sigma_mesh::Error::InvalidPurpose { purpose, errors }) => {
            let fields = fields_under(&format!("purposes.{purpose}.mesh"), errors);
            ApiError {
                status: StatusCode::CONFLICT,
                code: "mesh_invalid",
                message: format!("the mesh settings of purpose {purpose} are invalid"),
                fields,
            }
        }
        // Not the cluster's fault: said without a warning per refused agent in a storm.
        E::Throttled { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mesh_busy", e.to_string())
        }
        other => {
            tracing::warn!(%hostname, error = %other, "bootstrap bundle not issued");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "mesh_unavailable",
                format!("cannot build the bootstrap bundle from the cluster: {other}"),
            )
        }
    }
}

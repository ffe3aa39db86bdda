//! The whole bodies of `POST /api/vps` and `PATCH /api/vps/{id}` (the inventory fields with
//! the contract and `mesh_opt_out` beside them), and the queries of the VPS endpoints.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{MAX_NAME_LEN, VpsCreate, VpsPatch, VpsStatus, opt, page};
use crate::validate::{self as v, FieldErrors, Normalize};

/// The body of `PATCH /api/vps/{id}`: the fields of [`VpsPatch`] plus `mesh_opt_out`.
///
/// `mesh_opt_out` is carried beside [`VpsPatch`] rather than in it so that code building a
/// `VpsPatch` literal keeps compiling.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct VpsPatchBody {
    /// The inventory fields.
    #[serde(flatten)]
    pub patch: VpsPatch,
    /// `true` keeps the VPS out of the mesh, `false` lets it join; cannot be `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_opt_out: Option<bool>,
    /// Contract fields to change (absent ones stay, `null` clears one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<crate::VpsContractPatch>,
}

impl VpsPatchBody {
    /// Decodes a request body, naming the field of every mistake like the other bodies do.
    pub fn from_json(body: serde_json::Value) -> Result<VpsPatchBody, FieldErrors> {
        Self::from_json_with(body, |v| {
            serde_path_to_error::deserialize(v).map_err(|err| {
                let path = err.path().to_string();
                let field = if path == "." || path.is_empty() {
                    "body".to_string()
                } else {
                    path
                };
                let mut e = FieldErrors::new();
                e.add(field, err.into_inner().to_string());
                e
            })
        })
    }

    /// [`Self::from_json`] with the caller's decoder for the patch itself: sigma-api passes its
    /// strict one (no struct in serde's positional array form), so this body follows the same
    /// rules as every other.
    pub fn from_json_with(
        mut body: serde_json::Value,
        decode: impl FnOnce(serde_json::Value) -> Result<VpsPatch, FieldErrors>,
    ) -> Result<VpsPatchBody, FieldErrors> {
        let mut e = FieldErrors::new();
        let mut mesh_opt_out = None;
        match body.as_object_mut() {
            Some(map) => match map.remove("mesh_opt_out") {
                None => {}
                Some(serde_json::Value::Bool(b)) => mesh_opt_out = Some(b),
                Some(serde_json::Value::Null) => e.add("mesh_opt_out", "cannot be null"),
                Some(other) => e.add(
                    "mesh_opt_out",
                    format!("invalid type: {other}, expected a boolean"),
                ),
            },
            None => e.add("body", "expected a JSON object"),
        }
        e.into_result()?;
        let contract: Option<crate::VpsContractPatch> =
            crate::contract::take_contract(&mut body, |v| {
                serde_path_to_error::deserialize(v).map_err(path_error)
            })?;
        let patch = decode(body)?;
        // Both halves are checked before either error is returned, so one 422 names all.
        let mut e = FieldErrors::new();
        let patch = patch.normalize().map_err(|x| e.0.extend(x.0)).ok();
        if let Some(c) = &contract
            && let Err(x) = c.check_fields()
        {
            e.0.extend(x.0);
        }
        e.into_result()?;
        Ok(VpsPatchBody {
            patch: patch.expect("checked above"),
            mesh_opt_out,
            contract,
        })
    }
}

fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> FieldErrors {
    let path = err.path().to_string();
    let field = if path == "." || path.is_empty() {
        "body".to_string()
    } else {
        path
    };
    let mut e = FieldErrors::new();
    e.add(field, err.into_inner().to_string());
    e
}

/// The body of `POST /api/vps`: the fields of [`VpsCreate`] plus `contract`.
///
/// `contract` is carried beside [`VpsCreate`] rather than in it so that code building a
/// `VpsCreate` literal keeps compiling.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VpsCreateBody {
    /// The inventory fields.
    #[serde(flatten)]
    pub create: VpsCreate,
    /// Contract terms and rented specs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<crate::VpsContract>,
}

impl VpsCreateBody {
    /// Decodes and checks a request body with the caller's strict decoder (used for both the
    /// inventory fields and the contract), naming every mistake's field.
    pub fn from_json_with(
        mut body: serde_json::Value,
        decode_contract: impl FnOnce(serde_json::Value) -> Result<crate::VpsContract, FieldErrors>,
        decode: impl FnOnce(serde_json::Value) -> Result<VpsCreate, FieldErrors>,
    ) -> Result<VpsCreateBody, FieldErrors> {
        let contract = crate::contract::take_contract(&mut body, decode_contract)?;
        let create = decode(body)?;
        // Both halves are checked before either error is returned, so one 422 names all.
        let mut e = FieldErrors::new();
        let create = create.normalize().map_err(|x| e.0.extend(x.0)).ok();
        let contract = match contract.map(Normalize::normalize).transpose() {
            Ok(c) => c,
            Err(x) => {
                e.0.extend(x.0);
                None
            }
        };
        e.into_result()?;
        Ok(VpsCreateBody {
            create: create.expect("checked above"),
            contract,
        })
    }
}

/// Filters and page of `GET /api/vps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VpsQuery {
    /// Only this status (`deleted` lists deleted VPS; by default they are left out).
    pub status: Option<VpsStatus>,
    /// Only this purpose.
    pub purpose: Option<String>,
    /// Only this country.
    pub country: Option<String>,
    /// Only this provider (name).
    pub provider: Option<String>,
    /// Only VPS with this tag.
    pub tag: Option<String>,
    /// Exactly this hostname (case-insensitive).
    pub hostname: Option<String>,
    /// Case-insensitive text search in hostname, alias, city and addresses.
    pub q: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl Normalize for VpsQuery {
    fn normalize(self) -> Result<Self, FieldErrors> {
        let mut e = FieldErrors::new();
        let purpose = opt(self.purpose, "purpose", &mut e, v::dns_label);
        let country = opt(self.country, "country", &mut e, v::country);
        let provider = opt(self.provider, "provider", &mut e, |s| {
            v::name(s, MAX_NAME_LEN)
        });
        let tag = opt(self.tag, "tag", &mut e, v::tag);
        let hostname = opt(self.hostname, "hostname", &mut e, v::hostname);
        let q = opt(self.q, "q", &mut e, |s| v::name(s, MAX_NAME_LEN));
        let (limit, offset) = page(self.limit, self.offset, &mut e);
        e.into_result()?;
        Ok(VpsQuery {
            status: self.status,
            purpose,
            country,
            provider,
            tag,
            hostname,
            q,
            limit: Some(limit),
            offset: Some(offset),
        })
    }
}

/// Query of `POST /api/vps/{id}/retire`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetireQuery {
    /// Skip `retiring` and mark it `retired` at once (for a VPS whose agent is gone).
    #[serde(default)]
    pub force: bool,
}

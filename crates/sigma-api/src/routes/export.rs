//! The inventory in and out as operators keep it in spreadsheets (issue 20):
//! `GET /api/vps/export?format=csv|json` and `POST /api/vps/import`.
//!
//! CSV cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a
//! tab or a carriage return) are written with a leading `'`; an import reads such a cell back
//! without it, so an export re-imports unchanged.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sigma_store::import::ImportInput;
use sigma_types::records::{ImportReport, VpsRecord};
use sigma_types::{FieldErrors, IpAddress, VpsListQuery, VpsStatus};
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Operator, Reader};

/// Most rows in one import.
pub const IMPORT_MAX_ROWS: usize = 5000;

/// The CSV columns, in order: the fields of [`VpsRecord`], its contract flattened.
pub const COLUMNS: [&str; 24] = [
    "hostname",
    "alias",
    "provider",
    "purpose",
    "status",
    "country",
    "city",
    "ip_addresses",
    "tags",
    "monitoring",
    "node_exporter_port",
    "mesh_opt_out",
    "cost",
    "currency",
    "billing_cycle",
    "purchased_on",
    "expires_on",
    "auto_renew",
    "cpu_cores",
    "ram_mb",
    "disk_gb",
    "traffic_gb",
    "ssh_port",
    "data_center",
];

/// Export format.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `text/csv`, one header line then one line per VPS.
    Csv,
    /// `{"items": [record, …]}`.
    Json,
}

/// Query of `GET /api/vps/export`: the filters of `GET /api/vps` (no paging) and the format.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` or `json`.
    #[param(inline)]
    pub format: Format,
    /// Only this status (`deleted` exports deleted VPS).
    #[param(inline)]
    pub status: Option<VpsStatus>,
    /// Only this purpose.
    pub purpose: Option<String>,
    /// Only this country.
    pub country: Option<String>,
    /// Only this provider (name).
    pub provider: Option<String>,
    /// Only VPS with this tag.
    pub tag: Option<String>,
    /// Case-insensitive text search.
    pub q: Option<String>,
    /// Only VPS paid until at most this many days from today.
    pub expires_within_days: Option<i64>,
    /// Only VPS priced in this currency.
    pub currency: Option<String>,
    /// Cost per billing cycle at least this.
    #[param(value_type = Option<String>)]
    pub cost_min: Option<sigma_types::Amount>,
    /// Cost per billing cycle at most this.
    #[param(value_type = Option<String>)]
    pub cost_max: Option<sigma_types::Amount>,
}

/// A cell as written to CSV: formula-like text neutralised.
pub fn safe_cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// A cell as read from CSV: the neutralising `'` taken off again.
fn unsafe_cell(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => s,
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The CSV cells of a record, in [`COLUMNS`] order.
pub fn csv_cells(r: &VpsRecord) -> Vec<String> {
    let c = &r.contract;
    let cells = vec![
        r.hostname.clone(),
        opt(&r.alias),
        opt(&r.provider),
        r.purpose.clone(),
        r.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
        opt(&r.country),
        opt(&r.city),
        r.ip_addresses
            .iter()
            .map(|a| format!("{}={}", a.label, a.ip))
            .collect::<Vec<_>>()
            .join(";"),
        r.tags.join(";"),
        r.monitoring.to_string(),
        r.node_exporter_port.to_string(),
        r.mesh_opt_out.to_string(),
        opt(&c.cost),
        opt(&c.currency),
        c.billing_cycle
            .map(|b| b.as_str().to_string())
            .unwrap_or_default(),
        opt(&c.purchased_on),
        opt(&c.expires_on),
        c.auto_renew.to_string(),
        opt(&c.cpu_cores),
        opt(&c.ram_mb),
        opt(&c.disk_gb),
        opt(&c.traffic_gb),
        opt(&c.ssh_port),
        opt(&c.data_center),
    ];
    cells.iter().map(|s| safe_cell(s)).collect()
}

/// The inventory matching the filters, as CSV or JSON records.
#[utoipa::path(get, path = "/api/vps/export", tag = "vps", params(ExportQuery),
    responses((status = 200, description = "text/csv, or {\"items\": [VpsRecord]}", body = Records<VpsRecord>),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn export_vps(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let (base, filter) = VpsListQuery {
        status: q.status,
        purpose: q.purpose,
        country: q.country,
        provider: q.provider,
        tag: q.tag,
        hostname: None,
        q: q.q,
        expires_within_days: q.expires_within_days,
        currency: q.currency,
        cost_min: q.cost_min,
        cost_max: q.cost_max,
        limit: Some(sigma_types::MAX_LIMIT),
        offset: None,
    }
    .checked()?;
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let mut page_q = base.clone();
        page_q.offset = Some(offset);
        let page = s.store.list_vps_filtered(&page_q, &filter).await?;
        offset += page.items.len() as i64;
        records.extend(page.items.iter().map(VpsRecord::from));
        if page.items.is_empty() || offset >= page.total {
            break;
        }
    }
    match q.format {
        Format::Json => {
            let body = serde_json::to_vec(&Records { items: records })
                .map_err(|e| ApiError::internal(&e))?;
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(COLUMNS)
                .map_err(|e| ApiError::internal(&e))?;
            for r in &records {
                w.write_record(csv_cells(r))
                    .map_err(|e| ApiError::internal(&e))?;
            }
            let body = w.into_inner().map_err(|e| ApiError::internal(&e))?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"vps.csv\"",
                    ),
                ],
                body,
            )
                .into_response())
        }
    }
}

/// Query of `POST /api/vps/import`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Report what would happen, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// `all` (default: nothing is written if any row fails) or `partial` (good rows are).
    #[serde(default)]
    #[param(inline)]
    pub mode: ImportMode,
}

/// How an import treats failing rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// All rows or none.
    #[default]
    All,
    /// Every good row; failing rows are reported.
    Partial,
}

fn parse_cell<T>(
    cell: &str,
    field: &str,
    e: &mut FieldErrors,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    if cell.is_empty() {
        return None;
    }
    e.check(field, f(cell))
}

fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

fn int(s: &str) -> Result<i64, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

fn ips(s: &str) -> Result<Vec<IpAddress>, String> {
    s.split([';', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (label, ip) = p.split_once('=').unwrap_or(("public", p));
            Ok(IpAddress {
                ip: ip.to_string(),
                label: label.to_string(),
            })
        })
        .collect()
}

/// One CSV row as a record (a cell that does not parse left empty) and the cells that did not
/// parse, named by their field.
fn csv_record(cols: &[String], row: &csv::StringRecord) -> (VpsRecord, FieldErrors) {
    let mut e = FieldErrors::new();
    let get = |name: &str| -> String {
        cols.iter()
            .position(|c| c == name)
            .and_then(|i| row.get(i))
            .map(|c| unsafe_cell(c.trim()).to_string())
            .unwrap_or_default()
    };
    let text = |name: &str| Some(get(name)).filter(|s| !s.is_empty());
    let mut contract = sigma_types::VpsContract {
        cost: parse_cell(
            &get("cost"),
            "contract.cost",
            &mut e,
            sigma_types::Amount::parse,
        ),
        currency: text("currency"),
        billing_cycle: parse_cell(
            &get("billing_cycle"),
            "contract.billing_cycle",
            &mut e,
            |s| {
                sigma_types::BillingCycle::parse(s)
                    .ok_or_else(|| format!("{s:?} is not monthly, quarterly, yearly or other"))
            },
        ),
        purchased_on: parse_cell(
            &get("purchased_on"),
            "contract.purchased_on",
            &mut e,
            sigma_types::Day::parse,
        ),
        expires_on: parse_cell(
            &get("expires_on"),
            "contract.expires_on",
            &mut e,
            sigma_types::Day::parse,
        ),
        auto_renew: false,
        cpu_cores: parse_cell(&get("cpu_cores"), "contract.cpu_cores", &mut e, int),
        ram_mb: parse_cell(&get("ram_mb"), "contract.ram_mb", &mut e, int),
        disk_gb: parse_cell(&get("disk_gb"), "contract.disk_gb", &mut e, int),
        traffic_gb: parse_cell(&get("traffic_gb"), "contract.traffic_gb", &mut e, int),
        ssh_port: parse_cell(&get("ssh_port"), "contract.ssh_port", &mut e, int),
        data_center: text("data_center"),
    };
    contract.auto_renew =
        parse_cell(&get("auto_renew"), "contract.auto_renew", &mut e, boolean).unwrap_or(false);
    let rec = VpsRecord {
        hostname: get("hostname"),
        alias: text("alias"),
        provider: text("provider"),
        purpose: get("purpose"),
        status: parse_cell(&get("status"), "status", &mut e, |s| {
            VpsStatus::parse(s).ok_or_else(|| format!("{s:?} is not a status"))
        }),
        country: text("country"),
        city: text("city"),
        ip_addresses: parse_cell(&get("ip_addresses"), "ip_addresses", &mut e, ips)
            .unwrap_or_default(),
        tags: get("tags")
            .split([';', ' '])
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        monitoring: parse_cell(&get("monitoring"), "monitoring", &mut e, boolean).unwrap_or(true),
        node_exporter_port: parse_cell(
            &get("node_exporter_port"),
            "node_exporter_port",
            &mut e,
            int,
        )
        .unwrap_or(9100),
        mesh_opt_out: parse_cell(&get("mesh_opt_out"), "mesh_opt_out", &mut e, boolean)
            .unwrap_or(false),
        contract,
    };
    (rec, e)
}

/// A CSV row checked: the cells that did not parse and what the record's own checks find,
/// all named in one set.
fn csv_checked(
    cols: &[String],
    row: &csv::StringRecord,
) -> Result<sigma_types::records::CheckedRecord, FieldErrors> {
    let (rec, mut e) = csv_record(cols, row);
    match rec.checked() {
        Ok(c) if e.is_empty() => Ok(c),
        Ok(_) => Err(e),
        Err(x) => {
            for (f, why) in x.0 {
                e.add(f, why);
            }
            Err(e)
        }
    }
}

fn too_large(what: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", what)
}

/// The rows of a CSV body.
fn csv_rows(body: &[u8]) -> Result<Vec<ImportInput>, ApiError> {
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(body);
    let cols: Vec<String> = r
        .headers()
        .map_err(|e| ApiError::field("body", format!("the CSV header line: {e}")))?
        .iter()
        .map(|c| c.trim().to_string())
        .collect();
    let mut e = FieldErrors::new();
    for c in &cols {
        if !COLUMNS.contains(&c.as_str()) && c != "id" {
            e.add(
                format!("columns.{c}"),
                format!("unknown column (known: {})", COLUMNS.join(", ")),
            );
        }
    }
    for need in ["hostname", "purpose"] {
        if !cols.iter().any(|c| c == need) {
            e.add(format!("columns.{need}"), "required column missing");
        }
    }
    e.into_result()?;
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        if out.len() >= IMPORT_MAX_ROWS {
            return Err(too_large(format!(
                "more than {IMPORT_MAX_ROWS} rows; split the import"
            )));
        }
        let rec = rec.map_err(|e| ApiError::field(&format!("rows[{}]", i + 1), e.to_string()))?;
        let record = csv_checked(&cols, &rec);
        let hostname = cols
            .iter()
            .position(|c| c == "hostname")
            .and_then(|p| rec.get(p))
            .map(str::to_string);
        out.push(ImportInput {
            row: i + 1,
            hostname,
            record,
        });
    }
    Ok(out)
}

/// A JSON import or export: `{"items": [record, …]}`.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Records<T> {
    /// The records.
    pub items: Vec<T>,
}

/// The rows of a JSON body (`{"items": [...]}`, as exported).
fn json_rows(body: &[u8]) -> Result<Vec<ImportInput>, ApiError> {
    let Records { items } = crate::json::decode::<Records<serde_json::Value>>(body)?;
    if items.len() > IMPORT_MAX_ROWS {
        return Err(too_large(format!(
            "more than {IMPORT_MAX_ROWS} rows; split the import"
        )));
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let hostname = v["hostname"].as_str().map(str::to_string);
            ImportInput {
                row: i + 1,
                hostname,
                record: crate::json::decode_value::<VpsRecord>(v).and_then(VpsRecord::checked),
            }
        })
        .collect())
}

/// Imports VPS records (CSV with `Content-Type: text/csv`, or JSON `{"items": [...]}` as exported):
/// each row creates a VPS, changes the live VPS of the same hostname to match, or matches
/// already. `mode=all` (default) writes nothing if any row fails (422 with the report);
/// `mode=partial` writes the good rows. `dry_run=true` writes nothing and reports what would
/// happen. At most the server's body limit (SIGMA_MAX_BODY_BYTES) and 5000 rows (413
/// beyond).
#[utoipa::path(post, path = "/api/vps/import", tag = "vps", params(ImportQuery),
    request_body(content = Records<VpsRecord>, description = "{\"items\": [VpsRecord]} as exported, or text/csv with the export's columns"),
    responses((status = 200, body = ImportReport),
    (status = 413, body = sigma_types::ErrorBody),
    (status = 415, body = sigma_types::ErrorBody),
    (status = 422, description = "bad columns, or rows refused in mode all (the body carries the report as `report`)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_vps(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiQuery(q): ApiQuery<ImportQuery>,
    req: Request,
) -> ApiResult<Response> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let is_csv = ctype == "text/csv";
    if !is_csv && ctype != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send text/csv, or application/json ({\"items\": [...]}, as exported)",
        ));
    }
    // The server's body limit (SIGMA_MAX_BODY_BYTES) bounds an import like any body.
    let bytes = Bytes::from_request(req, &s).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(
                "the import is larger than the server's body limit (SIGMA_MAX_BODY_BYTES, \
                 default 256 KiB): split it, or raise the limit"
                    .into(),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("could not read the body: {r}"),
            )
        }
    })?;
    let rows = if is_csv {
        csv_rows(&bytes)?
    } else {
        json_rows(&bytes)?
    };
    let partial = q.mode == ImportMode::Partial;
    let report = s
        .store
        .import_vps(&p.actor(), rows, q.dry_run, partial)
        .await?;
    if report.errors > 0 && !partial {
        // Fields are named where they are in the body: `rows[N]` (1-based data line) of a
        // CSV, `items[N]` (0-based index) of JSON, as every other body names its fields.
        let at = |row: usize| {
            if is_csv {
                format!("rows[{row}]")
            } else {
                format!("items[{}]", row - 1)
            }
        };
        let mut fields = serde_json::Map::new();
        for r in report
            .rows
            .iter()
            .filter(|r| !r.fields.is_empty() || r.message.is_some())
        {
            for (f, why) in &r.fields {
                fields.insert(format!("{}.{f}", at(r.row)), why.clone().into());
            }
            if let Some(m) = &r.message {
                fields.insert(at(r.row), m.clone().into());
            }
        }
        let body = serde_json::json!({
            "error": "validation",
            "message": format!("{} of {} rows refused; nothing was imported (mode=partial imports the others)",
                report.errors, report.rows.len()),
            "fields": fields,
            "report": report,
        });
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response());
    }
    Ok(axum::Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_read_back() {
        for s in ["=1+1", "+x", "-x", "@SUM(A1)", "\tx"] {
            let w = safe_cell(s);
            assert!(w.starts_with('\''), "{s:?}");
            assert_eq!(unsafe_cell(&w), s);
        }
        assert_eq!(safe_cell("edge-1"), "edge-1");
        assert_eq!(
            unsafe_cell("'quoted"),
            "'quoted",
            "only a neutralising quote is taken off"
        );
    }

    #[test]
    fn csv_rows_name_bad_cells_by_column() {
        let body = b"hostname,purpose,cost,currency,ssh_port,monitoring\n\
                     a.example,xrayr,4.99,EUR,2222,yes\n\
                     b.example,xrayr,4.999999,EUR,x,maybe\n";
        let rows = csv_rows(body).unwrap();
        let a = rows[0].record.as_ref().unwrap();
        assert_eq!(a.contract.cost.unwrap().to_string(), "4.99");
        assert_eq!(a.create.hostname, "a.example");
        assert_eq!(a.contract.ssh_port, Some(2222));
        let e = rows[1].record.as_ref().unwrap_err();
        for f in ["contract.cost", "contract.ssh_port", "monitoring"] {
            assert!(e.0.contains_key(f), "{f}: {e:?}");
        }
        let err = csv_rows(b"hostname,colour\nx,y\n").unwrap_err();
        let body = format!("{err:?}");
        assert!(
            body.contains("columns.colour") && body.contains("columns.purpose"),
            "{body}"
        );
    }
}

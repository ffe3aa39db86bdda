//! The VPS page: inventory and contract fields (editable, with the API's own validation
//! messages at the field), addresses, system info, the mesh section, routes, lifecycle steps
//! and history.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_store::sessions::Session;
use sigma_types::{
    AuditFilter, BillingCycle, FieldErrors, Provider, Purpose, Vps, VpsContract, VpsPatchBody,
    VpsStatus,
};
use uuid::Uuid;

use super::vps::{choices, provider_options, purpose_options, select, status_options};
use super::{field_error, lifecycle, mesh, routes};
use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};

fn parse_id(id: &str) -> WebResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| WebError::NotFound(format!("no VPS with id {id:?}")))
}

/// The edit form's values from the stored VPS.
fn draft_of(v: &Vps) -> Form {
    let o = |s: &Option<String>| s.clone().unwrap_or_default();
    let mut pairs = vec![
        ("hostname".to_string(), v.hostname.clone()),
        ("alias".to_string(), o(&v.alias)),
        ("provider".to_string(), o(&v.provider)),
        ("country".to_string(), o(&v.country)),
        ("city".to_string(), o(&v.city)),
        ("purpose".to_string(), v.purpose.clone()),
        ("status".to_string(), v.status.as_str().to_string()),
        ("tags".to_string(), v.tags.join(", ")),
        (
            "node_exporter_port".to_string(),
            v.node_exporter_port.to_string(),
        ),
    ];
    if v.monitoring {
        pairs.push(("monitoring".into(), "on".into()));
    }
    if v.mesh_opt_out {
        pairs.push(("mesh_opt_out".into(), "on".into()));
    }
    let c = &v.contract;
    let n = |x: Option<i64>| x.map(|n| n.to_string()).unwrap_or_default();
    for (k, val) in [
        ("cost", c.cost.map(|a| a.to_string()).unwrap_or_default()),
        ("currency", o(&c.currency)),
        (
            "billing_cycle",
            c.billing_cycle
                .map(|b| b.as_str().to_string())
                .unwrap_or_default(),
        ),
        (
            "purchased_on",
            c.purchased_on.map(|d| d.to_string()).unwrap_or_default(),
        ),
        (
            "expires_on",
            c.expires_on.map(|d| d.to_string()).unwrap_or_default(),
        ),
        ("cpu_cores", n(c.cpu_cores)),
        ("ram_mb", n(c.ram_mb)),
        ("disk_gb", n(c.disk_gb)),
        ("traffic_gb", n(c.traffic_gb)),
        ("ssh_port", n(c.ssh_port)),
        ("data_center", o(&c.data_center)),
    ] {
        pairs.push((format!("contract.{k}"), val));
    }
    if c.auto_renew {
        pairs.push(("contract.auto_renew".into(), "on".into()));
    }
    Form::from_pairs(pairs)
}

/// The contract fields of the edit form: text fields, then the whole numbers.
const CONTRACT_TEXT: [&str; 6] = [
    "cost",
    "currency",
    "billing_cycle",
    "purchased_on",
    "expires_on",
    "data_center",
];
const CONTRACT_NUMBERS: [&str; 5] = ["cpu_cores", "ram_mb", "disk_gb", "traffic_gb", "ssh_port"];

/// The `contract` member of the PATCH body: every field present (blank clears it), numbers as
/// numbers when they read as one and as typed otherwise, so the API's decoder names the field.
fn contract_json(f: &Form) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for k in CONTRACT_TEXT {
        let v = f
            .text(&format!("contract.{k}"))
            .map_or(serde_json::Value::Null, serde_json::Value::String);
        m.insert(k.to_string(), v);
    }
    for k in CONTRACT_NUMBERS {
        let v = match f.text(&format!("contract.{k}")) {
            None => serde_json::Value::Null,
            Some(t) => t
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or(serde_json::Value::String(t)),
        };
        m.insert(k.to_string(), v);
    }
    m.insert(
        "auto_renew".into(),
        serde_json::Value::Bool(f.get("contract.auto_renew").is_some()),
    );
    serde_json::Value::Object(m)
}

/// The PATCH body a submitted edit form stands for, in the JSON API's shape, so it is checked
/// by the API's own decoder and validators.
fn patch_json(f: &Form) -> serde_json::Value {
    let nullable = |k: &str| match f.text(k) {
        Some(v) => serde_json::Value::String(v),
        None => serde_json::Value::Null,
    };
    let required = |k: &str| serde_json::Value::String(f.get(k).unwrap_or("").trim().to_string());
    let tags: Vec<String> = f
        .get("tags")
        .unwrap_or("")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let port = f.get("node_exporter_port").unwrap_or("").trim();
    serde_json::json!({
        "hostname": required("hostname"),
        "alias": nullable("alias"),
        "provider": nullable("provider"),
        "country": nullable("country"),
        "city": nullable("city"),
        "purpose": required("purpose"),
        "status": required("status"),
        "tags": tags,
        "monitoring": f.get("monitoring").is_some(),
        "node_exporter_port": port.parse::<i64>().map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::String(port.to_string())),
        "mesh_opt_out": f.get("mesh_opt_out").is_some(),
        "contract": contract_json(f),
    })
}

struct EditState<'a> {
    draft: &'a Form,
    errors: &'a FieldErrors,
    message: Option<&'a str>,
}

fn text_input(d: &EditState, name: &str, label: &str, hint: &str) -> Markup {
    let err = d.errors.0.get(name);
    html! {
        div.field {
            label for={ "e-" (name) } { (label) }
            input id={ "e-" (name) } type="text" name=(name) value=(d.draft.get(name).unwrap_or(""))
                aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("err-{name}"))];
            @if !hint.is_empty() { span.hint { (hint) } }
            (field_error(d.errors, name))
        }
    }
}

/// The form names the edit form shows an error at; others are listed above the button.
fn shown_at_a_field(k: &str) -> bool {
    [
        "hostname",
        "alias",
        "provider",
        "country",
        "city",
        "purpose",
        "status",
        "tags",
        "node_exporter_port",
        "mesh_opt_out",
        "contract.auto_renew",
    ]
    .contains(&k)
        || k.strip_prefix("contract.")
            .is_some_and(|c| CONTRACT_TEXT.contains(&c) || CONTRACT_NUMBERS.contains(&c))
}

/// The contract part of the edit form.
fn contract_fields(d: &EditState) -> Markup {
    let cycles: Vec<(String, String)> = std::iter::once((String::new(), "(not set)".to_string()))
        .chain(
            BillingCycle::ALL
                .iter()
                .map(|c| (c.as_str().to_string(), c.as_str().to_string())),
        )
        .collect();
    html! {
        fieldset.contract {
            legend { "Contract and specs" }
            (text_input(d, "contract.cost", "Cost per billing cycle", "exact decimal, e.g. 4.99"))
            (text_input(d, "contract.currency", "Currency", "ISO 4217, e.g. EUR; required with a cost"))
            div.field {
                (select("contract.billing_cycle", "Billing cycle", d.draft.get("contract.billing_cycle").unwrap_or(""), None, &cycles))
                (field_error(d.errors, "contract.billing_cycle"))
            }
            (text_input(d, "contract.purchased_on", "Purchased on", "YYYY-MM-DD"))
            (text_input(d, "contract.expires_on", "Paid until", "YYYY-MM-DD"))
            div.field.check {
                input #e-contract-auto_renew type="checkbox" name="contract.auto_renew" checked[d.draft.get("contract.auto_renew").is_some()];
                label for="e-contract-auto_renew" { "Renewed by the provider by itself" }
                (field_error(d.errors, "contract.auto_renew"))
            }
            (text_input(d, "contract.cpu_cores", "CPU cores", ""))
            (text_input(d, "contract.ram_mb", "RAM (MiB)", ""))
            (text_input(d, "contract.disk_gb", "Disk (GB)", ""))
            (text_input(d, "contract.traffic_gb", "Traffic per month (GB)", "blank: unknown or unmetered"))
            (text_input(d, "contract.ssh_port", "SSH port", ""))
            (text_input(d, "contract.data_center", "Data centre", ""))
        }
    }
}

/// The contract card of the VPS page.
fn contract_card(c: &VpsContract) -> Markup {
    let dash = |o: Option<String>| o.unwrap_or_else(|| "—".to_string());
    html! {
        section.card #contract {
            h2 { "Contract" }
            dl {
                dt { "Cost" } dd { @match (c.cost, &c.currency) {
                    (Some(a), Some(cur)) => { (a.to_string()) " " (cur) @if let Some(b) = c.billing_cycle { " / " (b.as_str()) } },
                    _ => "—",
                } }
                dt { "Purchased on" } dd { (dash(c.purchased_on.map(|d| d.to_string()))) }
                dt { "Paid until" } dd { (dash(c.expires_on.map(|d| d.to_string()))) @if c.auto_renew { " (renews automatically)" } }
                dt { "CPU / RAM / disk" } dd {
                    (dash(c.cpu_cores.map(|n| format!("{n} cores")))) " / "
                    (dash(c.ram_mb.map(|n| format!("{n} MiB")))) " / "
                    (dash(c.disk_gb.map(|n| format!("{n} GB"))))
                }
                dt { "Traffic" } dd { (dash(c.traffic_gb.map(|n| format!("{n} GB per month")))) }
                dt { "SSH port" } dd { (dash(c.ssh_port.map(|n| n.to_string()))) }
                dt { "Data centre" } dd { (dash(c.data_center.clone())) }
            }
        }
    }
}

fn edit_form(
    s: &Session,
    v: &Vps,
    d: &EditState,
    purposes: &[Purpose],
    providers: &[Provider],
) -> Markup {
    let mut provider_opts = provider_options(providers);
    provider_opts.insert(0, (String::new(), "(none)".into()));
    html! {
        section.card #edit {
            h2 { "Edit" }
            @if let Some(m) = d.message { p.error-message role="alert" { (m) } }
            @if !d.errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
            form.edit method="post" action={ "/vps/" (v.id) } {
                (layout::csrf(s))
                (text_input(d, "hostname", "Hostname", ""))
                (text_input(d, "alias", "Alias", ""))
                div.field {
                    (select("provider", "Provider", d.draft.get("provider").unwrap_or(""), None, &provider_opts))
                    (field_error(d.errors, "provider"))
                }
                (text_input(d, "country", "Country", "ISO 3166 code, e.g. DE"))
                (text_input(d, "city", "City", ""))
                div.field {
                    (select("purpose", "Purpose", d.draft.get("purpose").unwrap_or(""), None, &purpose_options(purposes)))
                    (field_error(d.errors, "purpose"))
                }
                div.field {
                    (select("status", "Status", d.draft.get("status").unwrap_or(""), None,
                        &status_options().into_iter().filter(|(s, _)| s != "deleted").collect::<Vec<_>>()))
                    (field_error(d.errors, "status"))
                }
                (text_input(d, "tags", "Tags", "separated by commas"))
                (text_input(d, "node_exporter_port", "node_exporter port", ""))
                div.field.check {
                    input #e-monitoring type="checkbox" name="monitoring" checked[d.draft.get("monitoring").is_some()];
                    label for="e-monitoring" { "Monitored by Prometheus" }
                }
                div.field.check {
                    input #e-mesh_opt_out type="checkbox" name="mesh_opt_out" checked[d.draft.get("mesh_opt_out").is_some()];
                    label for="e-mesh_opt_out" { "Keep out of the mesh" }
                    (field_error(d.errors, "mesh_opt_out"))
                }
                (contract_fields(d))
                @for (k, m) in &d.errors.0 {
                    @if !shown_at_a_field(k) {
                        p.field-error role="alert" { (k) ": " (m) }
                    }
                }
                button type="submit" { "Save" }
            }
        }
    }
}

async fn detail_page(
    web: &Web,
    s: &Session,
    v: &Vps,
    edit: Option<EditState<'_>>,
    notice: Option<&str>,
) -> WebResult<Markup> {
    let routes = web.store.list_routes(v.id).await?;
    let audit = web
        .store
        .list_audit(&AuditFilter {
            resource_type: Some("vps".into()),
            resource_id: Some(v.id.to_string()),
            limit: 20,
            ..AuditFilter::default()
        })
        .await?;
    let operate = s.may_operate() && v.status != VpsStatus::Deleted;
    let (purposes, providers) = if operate {
        choices(web).await?
    } else {
        Default::default()
    };
    // Where the routes run today and whether each listener is live: one plan for the routes
    // table and the mesh chain's route link (none outside sigma-api).
    let plan = match &web.mesh {
        Some(m) => m.route_plan(v.id).await.ok(),
        None => None,
    };
    let mesh_section = mesh::section(web, s, v, plan.as_ref()).await;
    let stored = draft_of(v);
    let no_errors = FieldErrors::new();
    let edit = edit.unwrap_or(EditState {
        draft: &stored,
        errors: &no_errors,
        message: None,
    });
    let body = html! {
        p.crumbs { a href="/vps" { "VPS" } " / " }
        h1 { (v.hostname) " " span class={ "badge " (v.status.as_str()) } { (v.status.as_str()) } }
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        @if s.may_operate() { (lifecycle::actions(v)) }
        div.grid {
            section.card {
                h2 { "Inventory" }
                dl {
                    dt { "ID" } dd.mono { (v.id) }
                    dt { "Alias" } dd { (v.alias.as_deref().unwrap_or("—")) }
                    dt { "Purpose" } dd { (v.purpose) }
                    dt { "Provider" } dd { (v.provider.as_deref().unwrap_or("—")) }
                    dt { "Country / city" } dd { (v.country.as_deref().unwrap_or("—")) " / " (v.city.as_deref().unwrap_or("—")) }
                    dt { "Tags" } dd { @if v.tags.is_empty() { "—" } @for t in &v.tags { span.tag { (t) } " " } }
                    dt { "Monitoring" } dd { @if v.monitoring { "on, node_exporter port " (v.node_exporter_port) } @else { "off" } }
                    dt { "Created" } dd { (layout::time(v.created_at)) }
                    dt { "Updated" } dd { (layout::time(v.updated_at)) }
                }
            }
            section.card {
                h2 { "Agent" }
                dl {
                    dt { "Last heartbeat" }
                    dd { @match v.last_heartbeat_at { Some(t) => { (layout::ago(t)) " (" (layout::time(t)) ")" }, None => "never" } }
                    dt { "Addresses" }
                    dd { @if v.ip_addresses.is_empty() { "—" } ul.plain { @for a in &v.ip_addresses { li { span.mono { (a.ip) } " " span.muted { (a.label) } } } } }
                    dt { "Desired / Envoy version" } dd { (v.desired_version) " / " (v.envoy_version) }
                    @if let Some(st) = &v.agent_state {
                        @if let Some(n) = &st.last_nack {
                            dt { "Last Envoy NACK" } dd.pre { (n.type_url) " v" (n.version) ": " (n.detail) }
                        }
                    }
                }
            }
            section.card #system-info {
                h2 { "System info" }
                @match &v.system_info {
                    None => p.empty { "The agent has not reported system information yet." },
                    Some(si) => dl {
                        @if let Some(x) = &si.os { dt { "OS" } dd { (x) } }
                        @if let Some(x) = &si.kernel { dt { "Kernel" } dd { (x) } }
                        @if let Some(x) = &si.agent_version { dt { "Agent" } dd { (x) } }
                        @if let Some(x) = si.cpu_cores { dt { "CPU cores" } dd { (x) } }
                        @if let Some(x) = si.memory_total_bytes { dt { "Memory" } dd { (layout::bytes(x)) @if let Some(a) = si.memory_available_bytes { ", " (layout::bytes(a)) " available" } } }
                        @if let Some(x) = si.disk_total_bytes { dt { "Disk" } dd { (layout::bytes(x)) @if let Some(u) = si.disk_used_bytes { ", " (layout::bytes(u)) " used" } } }
                        @if let Some(x) = si.uptime_seconds { dt { "Uptime" } dd { (x / 86_400) "d " (x % 86_400 / 3600) "h" } }
                        @if let Some(l) = si.load_average { dt { "Load" } dd { (format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])) } }
                        @for (k, val) in &si.extra {
                            dt { (k) }
                            dd { @match val { serde_json::Value::String(t) => (t), other => (other.to_string()) } }
                        }
                    },
                }
            }
        }
        (contract_card(&v.contract))
        (mesh_section)
        (routes::section(s, v, &routes, plan.as_ref()))
        @if operate { (edit_form(s, v, &edit, &purposes, &providers)) }
        section.card #history {
            h2 { "History" }
            @if audit.items.is_empty() {
                p.empty { "No recorded changes." }
            } @else {
                table { thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } } }
                    tbody { @for a in &audit.items { tr { td { (layout::time(a.at)) } td { (a.actor) } td { (a.action) } } } } }
                @if audit.total > audit.items.len() as i64 { p.muted { "Showing the latest " (audit.items.len()) " of " (audit.total) " changes." } }
            }
            @if s.principal.role == sigma_types::Role::Admin {
                p { a href={ "/audit?resource_type=vps&resource_id=" (v.id) } { "All of this VPS's entries in the audit log" }
                    " (route changes are under resource type " span.mono { "envoy_route" } ")" }
            }
        }
    };
    Ok(layout::page(&v.hostname, Section::Vps, s, body))
}

/// `GET /vps/{id}`.
pub async fn detail(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> WebResult<Markup> {
    let v = web.store.get_vps(parse_id(&id)?).await?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let notice = pairs
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v.as_str()) {
            ("saved", "1") => Some("Saved."),
            ("done", "retire") => Some("Retirement started."),
            ("done", "delete") => Some("Deleted. It can be restored from here."),
            ("done", "restore") => Some("Restored."),
            ("route", "added") => Some("Route added."),
            ("route", "saved") => Some("Route saved."),
            ("route", "active") => Some("Route enabled."),
            ("route", "disabled") => Some("Route disabled."),
            ("route", "deleted") => Some("Route deleted."),
            _ => None,
        });
    detail_page(&web, &s, &v, None, notice).await
}

/// `POST /vps/{id}`: saves the edit form; mistakes come back at their fields.
pub async fn edit(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let id = parse_id(&id)?;
    let result = match VpsPatchBody::from_json(patch_json(&form)) {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(b) => {
            web.store
                .update_vps_with(
                    &s.principal.actor(),
                    id,
                    &b.patch,
                    b.mesh_opt_out,
                    b.contract.as_ref(),
                )
                .await
        }
    };
    let (errors, message) = match result {
        Ok(_) => return Ok(Redirect::to(&format!("/vps/{id}?saved=1")).into_response()),
        Err(sigma_store::Error::Invalid(fe)) => (fe, None),
        Err(sigma_store::Error::Conflict(m)) => (FieldErrors::new(), Some(m)),
        Err(e) => return Err(e.into()),
    };
    let v = web.store.get_vps(id).await?;
    let page = detail_page(
        &web,
        &s,
        &v,
        Some(EditState {
            draft: &form,
            errors: &errors,
            message: message.as_deref(),
        }),
        None,
    )
    .await?;
    let status = if message.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, page).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_form_becomes_the_api_patch() {
        let f = Form::from_pairs(vec![
            ("hostname".into(), " Web-1.example.net ".into()),
            ("alias".into(), "".into()),
            ("purpose".into(), "xrayr".into()),
            ("status".into(), "active".into()),
            ("tags".into(), "a, b".into()),
            ("node_exporter_port".into(), "nine".into()),
        ]);
        let j = patch_json(&f);
        assert_eq!(j["alias"], serde_json::Value::Null);
        assert_eq!(j["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(j["monitoring"], false);
        assert_eq!(j["contract"]["cost"], serde_json::Value::Null);
        assert_eq!(j["contract"]["auto_renew"], false);
        let e = VpsPatchBody::from_json(j).unwrap_err();
        assert!(e.0.contains_key("node_exporter_port"), "{e:?}");
    }

    #[test]
    fn contract_fields_reach_the_api_decoder_and_come_back_named() {
        let f = Form::from_pairs(vec![
            ("hostname".into(), "web-1.example.net".into()),
            ("purpose".into(), "xrayr".into()),
            ("status".into(), "active".into()),
            ("node_exporter_port".into(), "9100".into()),
            ("contract.cost".into(), "4.99".into()),
            ("contract.currency".into(), "eur".into()),
            ("contract.expires_on".into(), "2027-02-30".into()),
            ("contract.ssh_port".into(), "22".into()),
            ("contract.auto_renew".into(), "on".into()),
        ]);
        let j = patch_json(&f);
        assert_eq!(j["contract"]["ssh_port"], 22);
        assert_eq!(j["contract"]["auto_renew"], true);
        let e = VpsPatchBody::from_json(j).unwrap_err();
        assert!(e.0.contains_key("contract.expires_on"), "{e:?}");
        assert!(shown_at_a_field("contract.expires_on") && !shown_at_a_field("contract"));

        let ok = Form::from_pairs(vec![
            ("hostname".into(), "web-1.example.net".into()),
            ("purpose".into(), "xrayr".into()),
            ("status".into(), "active".into()),
            ("node_exporter_port".into(), "9100".into()),
            ("contract.cost".into(), "4.99".into()),
            ("contract.currency".into(), "EUR".into()),
            ("contract.cpu_cores".into(), "two".into()),
        ]);
        let e = VpsPatchBody::from_json(patch_json(&ok)).unwrap_err();
        assert!(e.0.contains_key("contract.cpu_cores"), "{e:?}");
    }
}

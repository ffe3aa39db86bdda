//! The VPS list (filters, search, server-side pages through the store's own list query) and
//! the VPS detail page (fields, addresses, system info, mesh, routes, audit; edit and retire).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_store::console::VpsSort;
use sigma_store::sessions::Session;
use sigma_types::{
    AuditFilter, FieldErrors, MeshSyncStatus, Normalize, Provider, Purpose, Vps, VpsPatchBody,
    VpsQuery, VpsStatus,
};
use uuid::Uuid;

use super::{field_error, lifecycle, mesh, query, routes};
use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};

/// Page sizes offered; the store accepts up to 1000.
const PAGE_SIZES: [i64; 4] = [25, 50, 100, 200];
const DEFAULT_PAGE_SIZE: i64 = 50;

/// The list's filters as typed, kept for the form and the page links.
#[derive(Debug, Default)]
struct Filters {
    status: String,
    purpose: String,
    country: String,
    provider: String,
    tag: String,
    q: String,
    mesh: String,
    sort: VpsSort,
    desc: bool,
    page: i64,
    per_page: i64,
}

impl Filters {
    fn parse(raw: Option<&str>) -> (Filters, FieldErrors) {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let mut e = FieldErrors::new();
        let page = match get("page").as_str() {
            "" => 1,
            p => p
                .parse::<i64>()
                .ok()
                .filter(|p| *p >= 1)
                .unwrap_or_else(|| {
                    e.add("page", "must be a whole number from 1");
                    1
                }),
        };
        let per_page = match get("per_page").as_str() {
            "" => DEFAULT_PAGE_SIZE,
            p => p
                .parse::<i64>()
                .ok()
                .filter(|p| PAGE_SIZES.contains(p))
                .unwrap_or_else(|| {
                    e.add("per_page", "must be 25, 50, 100 or 200");
                    DEFAULT_PAGE_SIZE
                }),
        };
        let sort = match get("sort").as_str() {
            "" => VpsSort::Hostname,
            v => VpsSort::parse(v).unwrap_or_else(|| {
                e.add("sort", "must be hostname, status, country or heartbeat");
                VpsSort::Hostname
            }),
        };
        let desc = match get("dir").as_str() {
            "" | "asc" => false,
            "desc" => true,
            _ => {
                e.add("dir", "must be asc or desc");
                false
            }
        };
        (
            Filters {
                status: get("status"),
                purpose: get("purpose"),
                country: get("country"),
                provider: get("provider"),
                tag: get("tag"),
                q: get("q"),
                mesh: get("mesh"),
                sort,
                desc,
                page,
                per_page,
            },
            e,
        )
    }

    /// The mesh-state filter, checked.
    fn mesh(&self, e: &mut FieldErrors) -> Option<MeshSyncStatus> {
        match self.mesh.as_str() {
            "" => None,
            m => MeshSyncStatus::parse(m).or_else(|| {
                e.add("mesh", format!("{m:?} is not a mesh state"));
                None
            }),
        }
    }

    /// The store query, checked by the same rules as `GET /api/vps`.
    fn query(&self, e: &mut FieldErrors) -> Option<VpsQuery> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let status = match self.status.as_str() {
            "" => None,
            s => match VpsStatus::parse(s) {
                Some(st) => Some(st),
                None => {
                    e.add("status", format!("{s:?} is not a status"));
                    None
                }
            },
        };
        let q = VpsQuery {
            status,
            purpose: opt(&self.purpose),
            country: opt(&self.country),
            provider: opt(&self.provider),
            tag: opt(&self.tag),
            hostname: None,
            q: opt(&self.q),
            limit: Some(self.per_page),
            offset: Some((self.page - 1).saturating_mul(self.per_page)),
        };
        match q.normalize() {
            Ok(q) if e.is_empty() => Some(q),
            Ok(_) => None,
            Err(fe) => {
                for (k, v) in fe.0 {
                    e.add(k, v);
                }
                None
            }
        }
    }

    /// This list's URL on another page.
    fn link(&self, page: i64) -> String {
        self.link_sorted(page, self.sort, self.desc)
    }

    /// This list's URL sorted another way, on `page`.
    fn link_sorted(&self, page: i64, sort: VpsSort, desc: bool) -> String {
        let page = page.to_string();
        let per_page = self.per_page.to_string();
        let mut pairs: Vec<(&str, &str)> = [
            ("status", self.status.as_str()),
            ("purpose", &self.purpose),
            ("country", &self.country),
            ("provider", &self.provider),
            ("tag", &self.tag),
            ("mesh", &self.mesh),
            ("q", &self.q),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        if self.per_page != DEFAULT_PAGE_SIZE {
            pairs.push(("per_page", &per_page));
        }
        if sort != VpsSort::Hostname || desc {
            pairs.push(("sort", sort.as_str()));
            pairs.push(("dir", if desc { "desc" } else { "asc" }));
        }
        pairs.push(("page", &page));
        format!("/vps{}", query(&pairs))
    }

    /// A sortable column header: a link that sorts by the column (ascending first, then
    /// toggling), with `aria-sort` on the column the list is sorted by.
    fn sort_header(&self, sort: VpsSort, label: &str) -> Markup {
        let current = self.sort == sort;
        let next_desc = current && !self.desc;
        let aria = current.then_some(if self.desc { "descending" } else { "ascending" });
        let arrow = match (current, self.desc) {
            (false, _) => "",
            (true, false) => " ▲",
            (true, true) => " ▼",
        };
        let hint = if next_desc { "descending" } else { "ascending" };
        html! {
            th scope="col" aria-sort=[aria] {
                a.sort href=(self.link_sorted(1, sort, next_desc)) title={ "Sort by " (label) ", " (hint) } {
                    (label) (arrow)
                }
            }
        }
    }
}

fn select(
    name: &str,
    label: &str,
    current: &str,
    any: Option<&str>,
    options: &[(String, String)],
) -> Markup {
    html! {
        label for={ "f-" (name) } { (label) }
        select id={ "f-" (name) } name=(name) {
            @if let Some(a) = any { option value="" selected[current.is_empty()] { (a) } }
            @for (value, text) in options {
                option value=(value) selected[current == value] { (text) }
            }
        }
    }
}

async fn choices(web: &Web) -> WebResult<(Vec<Purpose>, Vec<Provider>)> {
    let purposes = web.store.list_purposes(1000, 0).await?.items;
    let providers = web.store.list_providers(1000, 0).await?.items;
    Ok((purposes, providers))
}

fn purpose_options(p: &[Purpose]) -> Vec<(String, String)> {
    p.iter()
        .map(|p| (p.name.clone(), format!("{} ({})", p.name, p.display_name)))
        .collect()
}

fn provider_options(p: &[Provider]) -> Vec<(String, String)> {
    p.iter().map(|p| (p.name.clone(), p.name.clone())).collect()
}

fn mesh_options() -> Vec<(String, String)> {
    MeshSyncStatus::ALL
        .iter()
        .map(|m| {
            let label = match m {
                MeshSyncStatus::NotMeshed => "off (not meshed)",
                other => other.as_str(),
            };
            (m.as_str().to_string(), label.to_string())
        })
        .collect()
}

fn status_options() -> Vec<(String, String)> {
    VpsStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), s.as_str().to_string()))
        .collect()
}

/// `GET /vps`.
pub async fn list(
    State(web): State<Web>,
    Signed(s): Signed,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let (f, mut errors) = Filters::parse(raw.as_deref());
    let mesh = f.mesh(&mut errors);
    let q = f.query(&mut errors);
    let (purposes, providers) = choices(&web).await?;
    let result = match &q {
        Some(q) if errors.is_empty() => {
            Some(web.store.list_vps_sorted(q, mesh, f.sort, f.desc).await?)
        }
        _ => None,
    };
    let body = html! {
        h1 { "VPS" }
        form.filters method="get" action="/vps" role="search" {
            div.field { (select("status", "Status", &f.status, Some("any (not deleted)"), &status_options())) (field_error(&errors, "status")) }
            div.field { (select("purpose", "Purpose", &f.purpose, Some("any"), &purpose_options(&purposes))) (field_error(&errors, "purpose")) }
            div.field { (select("provider", "Provider", &f.provider, Some("any"), &provider_options(&providers))) (field_error(&errors, "provider")) }
            div.field {
                label for="f-country" { "Country" }
                input #f-country type="text" name="country" value=(f.country) placeholder="DE" size="4";
                (field_error(&errors, "country"))
            }
            div.field { (select("mesh", "Mesh", &f.mesh, Some("any"), &mesh_options())) (field_error(&errors, "mesh")) }
            div.field {
                label for="f-tag" { "Tag" }
                input #f-tag type="text" name="tag" value=(f.tag) size="10";
                (field_error(&errors, "tag"))
            }
            div.field.grow {
                label for="f-q" { "Search" }
                input #f-q type="search" name="q" value=(f.q) placeholder="hostname, alias, city, address";
                (field_error(&errors, "q"))
            }
            div.field {
                label for="f-per_page" { "Per page" }
                select #f-per_page name="per_page" {
                    @for n in PAGE_SIZES { option value=(n) selected[n == f.per_page] { (n) } }
                }
                (field_error(&errors, "per_page"))
            }
            @if f.sort != VpsSort::Hostname || f.desc {
                input type="hidden" name="sort" value=(f.sort.as_str());
                input type="hidden" name="dir" value=(if f.desc { "desc" } else { "asc" });
            }
            div.field.actions {
                button type="submit" { "Filter" }
                a href="/vps" { "Clear" }
            }
            (field_error(&errors, "page"))
            (field_error(&errors, "offset"))
            (field_error(&errors, "sort"))
            (field_error(&errors, "dir"))
        }
        @match &result {
            None => p.error-message role="alert" { "Fix the filters marked above." },
            Some(list) if list.items.is_empty() => {
                p.empty {
                    @if list.total > 0 {
                        "This page is past the end. " a href=(f.link(1)) { "First page" }
                    } @else if raw.as_deref().is_some_and(|r| !r.is_empty()) {
                        "No VPS match these filters. " a href="/vps" { "Clear the filters" }
                    } @else {
                        "No VPS yet. " a href="/enrollment" { "Enroll one" }
                    }
                }
            }
            Some(list) => {
                @let first = (f.page - 1) * f.per_page + 1;
                @let last = first + list.items.len() as i64 - 1;
                p.summary { "VPS " (first) "–" (last) " of " (list.total) " (sorted by " (f.sort.as_str()) @if f.desc { ", descending" } ")" }
                div.table-wrap {
                    table.vps-list {
                        thead { tr {
                            (f.sort_header(VpsSort::Hostname, "Hostname")) th scope="col" { "Alias" } (f.sort_header(VpsSort::Status, "Status"))
                            th scope="col" { "Purpose" } (f.sort_header(VpsSort::Country, "Country")) th scope="col" { "Provider" }
                            th scope="col" { "Public IP" } (f.sort_header(VpsSort::Heartbeat, "Last heartbeat")) th scope="col" { "Mesh" }
                        } }
                        tbody {
                            @for v in &list.items {
                                tr {
                                    td { a href={ "/vps/" (v.id) } { (v.hostname) } }
                                    td { (v.alias.as_deref().unwrap_or("")) }
                                    td { span class={ "badge " (v.status.as_str()) } { (v.status.as_str()) } }
                                    td { (v.purpose) }
                                    td { (v.country.as_deref().unwrap_or("")) }
                                    td { (v.provider.as_deref().unwrap_or("")) }
                                    td.mono { (v.public_ip().unwrap_or("")) }
                                    td { @match v.last_heartbeat_at { Some(t) => span title=(layout::time(t)) { (layout::ago(t)) }, None => span.muted { "never" } } }
                                    td { span class={ "badge mesh-" (v.mesh.status.as_str()) } { (v.mesh.status.as_str()) } }
                                }
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if f.page > 1 { a rel="prev" href=(f.link(f.page - 1)) { "← Previous" } }
                    span { "Page " (f.page) " of " (((list.total + f.per_page - 1) / f.per_page).max(1)) }
                    @if last < list.total { a rel="next" href=(f.link(f.page + 1)) { "Next →" } }
                }
            }
        }
    };
    let status = if result.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, layout::page("VPS", Section::Vps, &s, body)).into_response())
}

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
    Form::from_pairs(pairs)
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
                @for (k, m) in &d.errors.0 {
                    @if !["hostname", "alias", "provider", "country", "city", "purpose", "status", "tags", "node_exporter_port", "mesh_opt_out"].contains(&k.as_str()) {
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
    let mesh_section = mesh::section(web, s, v).await;
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
        (mesh_section)
        (routes::section(s, v, &routes))
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
                .update_vps(&s.principal.actor(), id, &b.patch, b.mesh_opt_out)
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
    fn filters_keep_what_was_typed_and_check_it() {
        let (f, mut e) = Filters::parse(Some("status=active&country=de&q=web%201&page=2"));
        assert_eq!(f.page, 2);
        let q = f.query(&mut e).expect("valid");
        assert_eq!(q.country.as_deref(), Some("DE"));
        assert_eq!(q.offset, Some(DEFAULT_PAGE_SIZE));
        assert_eq!(q.status, Some(VpsStatus::Active));
        assert!(f.link(3).contains("page=3") && f.link(3).contains("q=web+1"));

        let (f, mut e) = Filters::parse(Some("status=bogus&country=Germany1&page=0"));
        assert!(f.query(&mut e).is_none());
        assert!(
            e.0.contains_key("status") && e.0.contains_key("country") && e.0.contains_key("page"),
            "{e:?}"
        );
    }

    #[test]
    fn sorting_and_the_mesh_filter_survive_every_link() {
        let (f, mut e) = Filters::parse(Some("mesh=error&sort=heartbeat&dir=desc&page=3"));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(f.mesh(&mut e), Some(MeshSyncStatus::Error));
        assert_eq!((f.sort, f.desc), (VpsSort::Heartbeat, true));
        let next = f.link(4);
        assert!(
            next.contains("mesh=error")
                && next.contains("sort=heartbeat")
                && next.contains("dir=desc"),
            "{next}"
        );
        // The current column's header toggles the direction and starts again at page 1;
        // another column starts ascending.
        let h = f
            .sort_header(VpsSort::Heartbeat, "Last heartbeat")
            .into_string();
        assert!(
            h.contains("aria-sort=\"descending\"") && h.contains("dir=asc") && h.contains("page=1"),
            "{h}"
        );
        let h = f.sort_header(VpsSort::Country, "Country").into_string();
        assert!(
            !h.contains("aria-sort") && h.contains("sort=country&amp;dir=asc"),
            "{h}"
        );

        let (f, mut e) = Filters::parse(Some("mesh=sideways&sort=ip&dir=up"));
        assert_eq!(f.mesh(&mut e), None);
        assert!(
            e.0.contains_key("mesh") && e.0.contains_key("sort") && e.0.contains_key("dir"),
            "{e:?}"
        );
    }

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
        let e = VpsPatchBody::from_json(j).unwrap_err();
        assert!(e.0.contains_key("node_exporter_port"), "{e:?}");
    }
}

//! Providers (everyone reads, operators change), API keys and the audit log (admins only, as
//! in the JSON API). Every form goes through the API's own checks (`ProviderCreate`,
//! `ProviderPatch`, `ApiKeyCreate` normalisation, `AuditQuery::filter`).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_store::sessions::Session;
use sigma_types::{
    ApiKeyCreate, AuditQuery, FieldErrors, Normalize, Provider, ProviderCreate, ProviderPatch, Role,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::query;
use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};
use crate::pages::field_error;

fn require_admin(s: &Session) -> WebResult<()> {
    if s.principal.role == Role::Admin {
        Ok(())
    } else {
        Err(WebError::Forbidden(format!(
            "a {} key may not do this (needs admin)",
            s.principal.role.as_str()
        )))
    }
}

fn text_field(
    d: &Form,
    errors: &FieldErrors,
    id: &str,
    name: &str,
    label: &str,
    hint: &str,
) -> Markup {
    let err = errors.0.get(name);
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) type="text" name=(name) value=(d.get(name).unwrap_or(""))
                aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("err-{name}"))];
            @if !hint.is_empty() { span.hint { (hint) } }
            (field_error(errors, name))
        }
    }
}

fn store_errors(r: sigma_store::Error, conflict_field: &str) -> WebResult<FieldErrors> {
    match r {
        sigma_store::Error::Invalid(fe) => Ok(fe),
        sigma_store::Error::Conflict(m) => {
            let mut e = FieldErrors::new();
            e.add(conflict_field, m);
            Ok(e)
        }
        other => Err(other.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Providers

fn provider_fields(d: &Form, errors: &FieldErrors) -> Markup {
    html! {
        (text_field(d, errors, "pr-name", "name", "Name", ""))
        (text_field(d, errors, "pr-country", "country", "Country", "ISO 3166 code, e.g. DE"))
        (text_field(d, errors, "pr-website", "website", "Website", "http or https URL"))
        (text_field(d, errors, "pr-notes", "notes", "Notes", ""))
    }
}

async fn providers_page(
    web: &Web,
    s: &Session,
    d: &Form,
    errors: &FieldErrors,
    notice: Option<&str>,
) -> WebResult<Markup> {
    let providers = web.store.list_providers(1000, 0).await?.items;
    let body = html! {
        h1 { "Providers" }
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        @if providers.is_empty() {
            p.empty { "No providers yet. " @if s.may_operate() { "Add the companies your VPS are rented from below; VPS and enrollment tokens can then name them." } }
        } @else {
            div.table-wrap { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Country" } th scope="col" { "Website" } th scope="col" { "Notes" } th scope="col" { "VPS" } } }
                tbody { @for p in &providers { tr {
                    td { @if s.may_operate() { a href={ "/providers/" (p.id) } { (p.name) } } @else { (p.name) } }
                    td { (p.country.as_deref().unwrap_or("")) }
                    td { @if let Some(w) = &p.website { a href=(w) rel="noopener noreferrer" { (w) } } }
                    td { (p.notes.as_deref().unwrap_or("")) }
                    td.num { a href={ "/vps" (query(&[("provider", p.name.as_str())])) } { (p.vps_count) } }
                } } }
            } }
        }
        @if s.may_operate() {
            section.card {
                h2 { "New provider" }
                @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
                form.edit.provider method="post" action="/providers" {
                    (layout::csrf(s))
                    (provider_fields(d, errors))
                    button type="submit" { "Add provider" }
                }
            }
        }
    };
    Ok(layout::page("Providers", Section::Providers, s, body))
}

/// `GET /providers`.
pub async fn providers(
    State(web): State<Web>,
    Signed(s): Signed,
    RawQuery(raw): RawQuery,
) -> WebResult<Markup> {
    let notice = match raw.as_deref() {
        Some("added=1") => Some("Provider added."),
        Some("deleted=1") => Some("Provider deleted."),
        _ => None,
    };
    providers_page(
        &web,
        &s,
        &Form::from_pairs(vec![]),
        &FieldErrors::new(),
        notice,
    )
    .await
}

/// `POST /providers`.
pub async fn create_provider(
    State(web): State<Web>,
    Signed(s): Signed,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let c = ProviderCreate {
        name: form.get("name").unwrap_or("").trim().to_string(),
        country: form.text("country"),
        website: form.text("website"),
        notes: form.text("notes"),
    };
    let result = match c.normalize() {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(c) => web.store.create_provider(&s.principal.actor(), &c).await,
    };
    let errors = match result {
        Ok(_) => return Ok(Redirect::to("/providers?added=1").into_response()),
        Err(e) => store_errors(e, "name")?,
    };
    let page = providers_page(&web, &s, &form, &errors, None).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
}

fn provider_draft(p: &Provider) -> Form {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    Form::from_pairs(vec![
        ("name".into(), p.name.clone()),
        ("country".into(), o(&p.country)),
        ("website".into(), o(&p.website)),
        ("notes".into(), o(&p.notes)),
    ])
}

fn provider_edit_page(
    s: &Session,
    p: &Provider,
    d: &Form,
    errors: &FieldErrors,
    notice: Option<&str>,
) -> Markup {
    let body = html! {
        p.crumbs { a href="/providers" { "Providers" } " / " }
        h1 { (p.name) }
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        section.card {
            @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
            form.edit.provider method="post" action={ "/providers/" (p.id) } {
                (layout::csrf(s))
                (provider_fields(d, errors))
                button type="submit" { "Save" }
            }
        }
        section.card {
            h2 { "Delete" }
            @if p.vps_count > 0 {
                p { (p.vps_count) " VPS use this provider: " a href={ "/vps" (query(&[("provider", p.name.as_str())])) } { "move them to another provider" } " first." }
            } @else {
                p { "Enrollment tokens that preset this provider are revoked with it." }
                form method="post" action={ "/providers/" (p.id) "/delete" } {
                    (layout::csrf(s))
                    div.field.check {
                        input #confirm-delete type="checkbox" name="confirm" required;
                        label for="confirm-delete" { "Yes, delete " (p.name) }
                    }
                    button.danger type="submit" { "Delete provider" }
                }
            }
        }
    };
    layout::page(&p.name, Section::Providers, s, body)
}

fn provider_id(id: &str) -> WebResult<String> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| WebError::NotFound(format!("no provider with id {id:?}")))
}

/// `GET /providers/{id}`.
pub async fn provider(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> WebResult<Markup> {
    s.require_operator()?;
    let p = web.store.get_provider(&provider_id(&id)?).await?;
    let notice = (raw.as_deref() == Some("saved=1")).then_some("Saved.");
    Ok(provider_edit_page(
        &s,
        &p,
        &provider_draft(&p),
        &FieldErrors::new(),
        notice,
    ))
}

/// `POST /providers/{id}`.
pub async fn update_provider(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let p = web.store.get_provider(&provider_id(&id)?).await?;
    let nullable = |k: &str| Some(form.text(k));
    let patch = ProviderPatch {
        name: Some(Some(form.get("name").unwrap_or("").trim().to_string())),
        country: nullable("country"),
        website: nullable("website"),
        notes: nullable("notes"),
    };
    let result = match patch.normalize() {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(patch) => {
            web.store
                .update_provider(&s.principal.actor(), &p.id.to_string(), &patch)
                .await
        }
    };
    let errors = match result {
        Ok(_) => return Ok(Redirect::to(&format!("/providers/{}?saved=1", p.id)).into_response()),
        Err(e) => store_errors(e, "name")?,
    };
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        provider_edit_page(&s, &p, &form, &errors, None),
    )
        .into_response())
}

/// `POST /providers/{id}/delete` (the form's confirmation box must be ticked).
pub async fn delete_provider(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    if form.get("confirm").is_none() {
        return Err(WebError::BadRequest(
            "tick the confirmation box to delete the provider".into(),
        ));
    }
    web.store
        .delete_provider(&s.principal.actor(), &provider_id(&id)?)
        .await?;
    Ok(Redirect::to("/providers?deleted=1").into_response())
}

// ---------------------------------------------------------------------------------------------
// API keys

/// Lifetimes offered for a new key.
const KEY_TTLS: [(&str, &str); 5] = [
    ("", "does not expire"),
    ("86400", "1 day"),
    ("2592000", "30 days"),
    ("7776000", "90 days"),
    ("31536000", "1 year"),
];

async fn keys_page(
    web: &Web,
    s: &Session,
    d: &Form,
    errors: &FieldErrors,
    created: Option<(String, String)>,
) -> WebResult<Markup> {
    let keys = web.store.list_api_keys(1000, 0).await?;
    let now = OffsetDateTime::now_utc();
    let role = d.get("role").unwrap_or("readonly").to_string();
    let ttl = d.get("ttl_seconds").unwrap_or("").to_string();
    let body = html! {
        h1 { "API keys" }
        @if let Some((prefix, key)) = &created {
            section.card.created #new-key {
                h2 { "Key " (prefix) " created" }
                p { "Copy it now: it is shown only once. Use it to sign in here or as " span.mono { "Authorization: Bearer <key>" } "." }
                div.copy-row {
                    input #created-key type="text" readonly value=(key) aria-label="New API key";
                    button type="button" data-copy="created-key" { "Copy" }
                }
            }
        }
        section.card {
            h2 { "New key" }
            @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
            form.edit.api-key method="post" action="/api-keys" {
                (layout::csrf(s))
                (text_field(d, errors, "k-name", "name", "Name", "who or what uses it"))
                div.field {
                    label for="k-role" { "Role" }
                    select #k-role name="role" {
                        @for (r, text) in [("readonly", "readonly (reads everything)"), ("operator", "operator (changes the inventory)"), ("admin", "admin (also keys and the audit log)")] {
                            option value=(r) selected[role == r] { (text) }
                        }
                    }
                    span.hint { "Agent keys are issued by enrollment." }
                    (field_error(errors, "role"))
                }
                div.field {
                    label for="k-ttl" { "Valid for" }
                    select #k-ttl name="ttl_seconds" {
                        @for (secs, text) in KEY_TTLS { option value=(secs) selected[ttl == secs] { (text) } }
                    }
                    (field_error(errors, "ttl_seconds"))
                }
                button type="submit" { "Create key" }
            }
        }
        div.table-wrap { table {
            thead { tr { th scope="col" { "Prefix" } th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "Expires" } th scope="col" { "State" } th scope="col" { span.sr-only { "Actions" } } } }
            tbody { @for k in &keys.items {
                @let live = k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now);
                tr {
                    td.mono { (k.prefix) }
                    td { (k.name) @if let Some(v) = k.vps_id { " " a href={ "/vps/" (v) } { "(VPS)" } } }
                    td { (k.role.as_str()) }
                    td { (layout::time(k.created_at)) " by " (k.created_by) }
                    td { @match k.last_used_at { Some(t) => (layout::ago(t)), None => span.muted { "never" } } }
                    td { @match k.expires_at { Some(t) => (layout::time(t)), None => "—" } }
                    td { @if k.revoked_at.is_some() { "revoked" } @else if !live { "expired" } @else { "live" } }
                    td { @if live && k.id != s.principal.key_id {
                        form method="post" action={ "/api-keys/" (k.id) "/revoke" } {
                            (layout::csrf(s))
                            button.danger type="submit" aria-label={ "Revoke " (k.prefix) } { "Revoke" }
                        }
                    } @else if k.id == s.principal.key_id { span.muted { "this session's key" } } }
                }
            } }
        } }
    };
    Ok(layout::page("API keys", Section::Keys, s, body))
}

/// `GET /api-keys` (admins only).
pub async fn keys(State(web): State<Web>, Signed(s): Signed) -> WebResult<Markup> {
    require_admin(&s)?;
    keys_page(
        &web,
        &s,
        &Form::from_pairs(vec![]),
        &FieldErrors::new(),
        None,
    )
    .await
}

/// `POST /api-keys`: issues a key and shows it once.
pub async fn create_key(
    State(web): State<Web>,
    Signed(s): Signed,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    require_admin(&s)?;
    let mut e = FieldErrors::new();
    let role = match form.get("role").and_then(Role::parse) {
        Some(Role::Agent) => {
            e.add("role", "agent keys are issued by enrollment");
            Role::Readonly
        }
        Some(r) => r,
        None => {
            e.add("role", "must be readonly, operator or admin");
            Role::Readonly
        }
    };
    let ttl_seconds = match form.text("ttl_seconds") {
        None => None,
        Some(t) => t.parse::<i64>().map(Some).unwrap_or_else(|_| {
            e.add("ttl_seconds", "must be a whole number of seconds");
            None
        }),
    };
    let c = ApiKeyCreate {
        name: form.get("name").unwrap_or("").trim().to_string(),
        role,
        vps_id: None,
        ttl_seconds,
    };
    let result = match c.normalize() {
        Ok(c) if e.is_empty() => web.store.create_api_key(&s.principal.actor(), &c).await,
        Ok(_) => Err(sigma_store::Error::Invalid(e)),
        Err(fe) => {
            for (k, v) in fe.0 {
                e.add(k, v);
            }
            Err(sigma_store::Error::Invalid(e))
        }
    };
    match result {
        Ok(k) => {
            let page = keys_page(
                &web,
                &s,
                &Form::from_pairs(vec![]),
                &FieldErrors::new(),
                Some((k.api_key.prefix, k.key)),
            )
            .await?;
            Ok((StatusCode::CREATED, page).into_response())
        }
        Err(err) => {
            let errors = store_errors(err, "name")?;
            let page = keys_page(&web, &s, &form, &errors, None).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
    }
}

/// `POST /api-keys/{id}/revoke`.
pub async fn revoke_key(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    Form::parse(&body)?.csrf(&s)?;
    require_admin(&s)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| WebError::NotFound(format!("no API key with id {id:?}")))?;
    web.store.revoke_api_key(&s.principal, id).await?;
    Ok(Redirect::to("/api-keys").into_response())
}

// ---------------------------------------------------------------------------------------------
// Audit log

const AUDIT_PAGE: i64 = 100;

/// `GET /audit` (admins only): the audit log, filtered as `GET /api/audit` filters it.
pub async fn audit(
    State(web): State<Web>,
    Signed(s): Signed,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    require_admin(&s)?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut errors = FieldErrors::new();
    let page = match get("page") {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 1)
            .unwrap_or_else(|| {
                errors.add("page", "must be a whole number from 1");
                1
            }),
    };
    let q = AuditQuery {
        actor: get("actor"),
        action: get("action"),
        resource_type: get("resource_type"),
        resource_id: get("resource_id"),
        since: get("since"),
        until: get("until"),
        limit: Some(AUDIT_PAGE),
        offset: Some((page - 1) * AUDIT_PAGE),
    };
    let filter = match q.filter() {
        Ok(f) if errors.is_empty() => Some(f),
        Ok(_) => None,
        Err(fe) => {
            for (k, v) in fe.0 {
                errors.add(k, v);
            }
            None
        }
    };
    let list = match &filter {
        Some(f) => Some(web.store.list_audit(f).await?),
        None => None,
    };
    let keep: Vec<(&str, String)> = [
        "actor",
        "action",
        "resource_type",
        "resource_id",
        "since",
        "until",
    ]
    .into_iter()
    .filter_map(|k| get(k).map(|v| (k, v)))
    .collect();
    let link = |page: i64| {
        let p = page.to_string();
        let mut pairs: Vec<(&str, &str)> = keep.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.push(("page", &p));
        format!("/audit{}", query(&pairs))
    };
    let d = Form::from_pairs(pairs.clone());
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/audit" role="search" {
            (text_field(&d, &errors, "a-actor", "actor", "Actor", "key:sgm_1234abcd"))
            (text_field(&d, &errors, "a-action", "action", "Action", "vps.update"))
            (text_field(&d, &errors, "a-resource_type", "resource_type", "Resource type", "vps, envoy_route, session…"))
            (text_field(&d, &errors, "a-resource_id", "resource_id", "Resource id", ""))
            (text_field(&d, &errors, "a-since", "since", "Since", "RFC 3339, e.g. 2026-12-01T00:00:00Z"))
            (text_field(&d, &errors, "a-until", "until", "Until", "RFC 3339"))
            div.field.actions { button type="submit" { "Filter" } a href="/audit" { "Clear" } }
            (field_error(&errors, "page"))
        }
        @match &list {
            None => p.error-message role="alert" { "Fix the filters marked above." },
            Some(l) if l.items.is_empty() => p.empty { "No entries match. " a href="/audit" { "Clear the filters" } },
            Some(l) => {
                p.summary { (l.total) " entries, newest first" }
                div.table-wrap { table.audit {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Resource" } } }
                    tbody { @for a in &l.items { tr {
                        td { (layout::time(a.at)) }
                        td.mono { (a.actor) }
                        td { (a.action) }
                        td {
                            (a.resource_type) " "
                            @if a.resource_type == "vps" { a.mono href={ "/vps/" (a.resource_id) } { (a.resource_id) } } @else { span.mono { (a.resource_id) } }
                        }
                    } } }
                } }
                nav.pager aria-label="Pages" {
                    @if page > 1 { a rel="prev" href=(link(page - 1)) { "← Newer" } }
                    @if page * AUDIT_PAGE < l.total { a rel="next" href=(link(page + 1)) { "Older →" } }
                }
            }
        }
    };
    let status = if list.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, layout::page("Audit log", Section::Audit, &s, body)).into_response())
}

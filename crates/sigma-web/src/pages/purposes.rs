//! Purposes, with their mesh settings edited as a form. The form becomes the `mesh` JSON object
//! `PATCH /api/purposes/{name}` takes and goes through the same checks (`PurposePatch::normalize`,
//! then the store's `check_mesh_settings`); the errors, named by JSON path
//! (`mesh.ports[1].number`), are shown at the form field that path came from.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use sigma_mesh::settings::Protocol;
use sigma_store::sessions::Session;
use sigma_types::{FieldErrors, Normalize, Purpose, PurposeCreate, PurposePatch};

use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::WebResult;
use crate::layout::{self, Section};
use crate::pages::field_error;

/// Blank rows offered below the existing ports and egress entries.
const SPARE_ROWS: usize = 2;

/// `GET /purposes`.
pub async fn list(State(web): State<Web>, Signed(s): Signed) -> WebResult<Markup> {
    render_list(&web, &s, &Form::from_pairs(vec![]), &FieldErrors::new()).await
}

async fn render_list(web: &Web, s: &Session, d: &Form, errors: &FieldErrors) -> WebResult<Markup> {
    let purposes = web.store.list_purposes(1000, 0).await?.items;
    let body = html! {
        h1 { "Purposes" }
        p.hint { "A purpose says what a VPS is for, and whether and how its VPS join the mesh." }
        div.table-wrap { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Display name" } th scope="col" { "Mesh" } th scope="col" { "VPS" } } }
            tbody { @for p in &purposes { tr {
                td { a href={ "/purposes/" (p.name) } { (p.name) } }
                td { (p.display_name) }
                td { @if p.mesh.get("enabled").and_then(Value::as_bool) == Some(true) { "on" } @else { span.muted { "off" } } }
                td.num { a href={ "/vps?purpose=" (p.name) } { (p.vps_count) } }
            } } }
        } }
        @if s.may_operate() {
            section.card {
                h2 { "New purpose" }
                @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
                form.edit.new-purpose method="post" action="/purposes" {
                    (layout::csrf(s))
                    div.field {
                        label for="p-name" { "Name" }
                        input #p-name type="text" name="name" value=(d.get("name").unwrap_or("")) placeholder="vpn-exit";
                        span.hint { "lower-case letters, digits and '-'; cannot be changed later" }
                        (field_error(errors, "name"))
                    }
                    div.field {
                        label for="p-display_name" { "Display name" }
                        input #p-display_name type="text" name="display_name" value=(d.get("display_name").unwrap_or(""));
                        (field_error(errors, "display_name"))
                    }
                    button type="submit" { "Create purpose" }
                }
            }
        }
    };
    Ok(layout::page("Purposes", Section::Purposes, s, body))
}

/// `POST /purposes`.
pub async fn create(State(web): State<Web>, Signed(s): Signed, body: Bytes) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let c = PurposeCreate {
        name: form.get("name").unwrap_or("").trim().to_string(),
        display_name: form.text("display_name"),
        mesh: None,
    };
    let result = match c.normalize() {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(c) => web.store.create_purpose(&s.principal.actor(), &c).await,
    };
    let errors = match result {
        Ok(p) => {
            return Ok(Redirect::to(&format!("/purposes/{}?created=1", p.name)).into_response());
        }
        Err(sigma_store::Error::Invalid(fe)) => fe,
        Err(sigma_store::Error::Conflict(m)) => {
            let mut e = FieldErrors::new();
            e.add("name", m);
            e
        }
        Err(e) => return Err(e.into()),
    };
    let page = render_list(&web, &s, &form, &errors).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The form's values from stored mesh settings.
fn draft_of(p: &Purpose) -> Form {
    let m = &p.mesh;
    let mut pairs = vec![("display_name".to_string(), p.display_name.clone())];
    let mut put = |k: String, v: String| pairs.push((k, v));
    if m.get("enabled").and_then(Value::as_bool) == Some(true) {
        put("enabled".into(), "on".into());
    }
    put("service_account".into(), text_of(m.get("service_account")));
    put("network".into(), text_of(m.get("network")));
    let empty = Vec::new();
    for (i, port) in m
        .get("ports")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        for f in ["name", "number", "protocol", "target_port"] {
            put(format!("ports[{i}].{f}"), text_of(port.get(f)));
        }
    }
    for (i, eg) in m
        .get("egress")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        for f in ["host", "port", "protocol", "bind"] {
            put(format!("egress[{i}].{f}"), text_of(eg.get(f)));
        }
    }
    if let Some(probe) = m.get("probe") {
        if let Some(h) = probe.get("http_get") {
            put("probe_kind".into(), "http_get".into());
            put("probe_path".into(), text_of(h.get("path")));
            put("probe_port".into(), text_of(h.get("port")));
        } else if let Some(t) = probe.get("tcp_socket") {
            put("probe_kind".into(), "tcp_socket".into());
            put("probe_port".into(), text_of(t.get("port")));
        }
    }
    if let Some(i) = m.get("interception") {
        put("interception".into(), text_of(i.get("mode")));
        let cidrs: Vec<String> = i
            .get("service_cidrs")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|c| text_of(Some(c))).collect())
            .unwrap_or_default();
        put("service_cidrs".into(), cidrs.join(", "));
    }
    Form::from_pairs(pairs)
}

/// A number typed into a field as JSON: a whole number when it is one, else the text, so the
/// settings' own decoder names the field and says what it wants.
fn number_or_text(s: &str) -> Value {
    s.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(s.to_string()))
}

/// How many rows of `table` the form fills (its highest index with a value + 1), so blank
/// rows sent back do not pile up on every save.
fn rows(f: &Form, table: &str) -> usize {
    let prefix = format!("{table}[");
    f.pairs()
        .filter(|(_, v)| !v.trim().is_empty())
        .filter_map(|(k, _)| {
            k.strip_prefix(&prefix)?
                .split_once(']')?
                .0
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The `mesh` object a submitted form stands for, and for each table the form row each JSON
/// array index came from (blank rows are left out, so the indices can differ).
fn mesh_json(f: &Form) -> (Value, BTreeMap<(&'static str, usize), usize>) {
    let mut m = Map::new();
    let mut rows_of = BTreeMap::new();
    m.insert("enabled".into(), Value::Bool(f.get("enabled").is_some()));
    for k in ["service_account", "network"] {
        if let Some(v) = f.text(k) {
            m.insert(k.into(), Value::String(v));
        }
    }
    let tables: [(&'static str, [&str; 4], [&str; 2]); 2] = [
        (
            "ports",
            ["name", "number", "protocol", "target_port"],
            ["number", "target_port"],
        ),
        ("egress", ["host", "port", "protocol", "bind"], ["port", ""]),
    ];
    for (table, fields, numeric) in tables {
        let mut out = Vec::new();
        for row in 0..rows(f, table) {
            let mut o = Map::new();
            for field in fields {
                if let Some(v) = f.text(&format!("{table}[{row}].{field}")) {
                    let value = if numeric.contains(&field) {
                        number_or_text(&v)
                    } else {
                        Value::String(v)
                    };
                    o.insert(field.into(), value);
                }
            }
            if !o.is_empty() {
                rows_of.insert((table, out.len()), row);
                out.push(Value::Object(o));
            }
        }
        if !out.is_empty() {
            m.insert(table.into(), Value::Array(out));
        }
    }
    let port = f
        .text("probe_port")
        .map(|p| number_or_text(&p))
        .unwrap_or(Value::Null);
    match f.text("probe_kind").as_deref() {
        Some("http_get") => {
            let path = f
                .text("probe_path")
                .map(Value::String)
                .unwrap_or(Value::Null);
            m.insert(
                "probe".into(),
                json!({"http_get": {"path": path, "port": port}}),
            );
        }
        Some("tcp_socket") => {
            m.insert("probe".into(), json!({"tcp_socket": {"port": port}}));
        }
        Some(other) => {
            m.insert("probe".into(), json!({ other: {} }));
        }
        None => {}
    }
    match f.text("interception").as_deref() {
        None | Some("none") => {}
        Some(mode) => {
            let cidrs: Vec<Value> = f
                .get("service_cidrs")
                .unwrap_or("")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| Value::String(c.to_string()))
                .collect();
            m.insert(
                "interception".into(),
                json!({"mode": mode, "service_cidrs": cidrs}),
            );
        }
    }
    (Value::Object(m), rows_of)
}

/// The form field an error path (relative to the purpose, `mesh.ports[1].number`) is about.
fn field_of(path: &str, rows_of: &BTreeMap<(&'static str, usize), usize>) -> String {
    let Some(rest) = path.strip_prefix("mesh.") else {
        return if path == "mesh" {
            "mesh".into()
        } else {
            path.into()
        };
    };
    for table in ["ports", "egress"] {
        if let Some(tail) = rest.strip_prefix(&format!("{table}["))
            && let Some((idx, after)) = tail.split_once(']')
            && let Ok(i) = idx.parse::<usize>()
        {
            let row = rows_of.get(&(table, i)).copied().unwrap_or(i);
            return format!("{table}[{row}]{after}");
        }
    }
    if rest.starts_with("probe") {
        return if rest.ends_with(".path") {
            "probe_path".into()
        } else if rest.ends_with(".port") {
            "probe_port".into()
        } else {
            "probe_kind".into()
        };
    }
    if rest.starts_with("interception.service_cidrs") {
        return "service_cidrs".into();
    }
    if rest.starts_with("interception") {
        return "interception".into();
    }
    rest.to_string()
}

/// The fields the form shows errors at; others are listed above the form.
fn shown_at_a_field(name: &str, port_rows: usize, egress_rows: usize) -> bool {
    let fixed = [
        "display_name",
        "enabled",
        "service_account",
        "network",
        "probe_kind",
        "probe_path",
        "probe_port",
        "interception",
        "service_cidrs",
    ];
    if fixed.contains(&name) {
        return true;
    }
    let in_table = |table: &str, fields: &[&str], n: usize| {
        (0..n).any(|i| fields.iter().any(|f| name == format!("{table}[{i}].{f}")))
    };
    in_table(
        "ports",
        &["name", "number", "protocol", "target_port"],
        port_rows,
    ) || in_table("egress", &["host", "port", "protocol", "bind"], egress_rows)
}

fn detail(
    s: &Session,
    p: &Purpose,
    d: &Form,
    errors: &FieldErrors,
    notice: Option<&str>,
) -> Markup {
    let operate = s.may_operate();
    let port_rows = rows(d, "ports") + SPARE_ROWS;
    let egress_rows = rows(d, "egress") + SPARE_ROWS;
    let val = |k: &str| d.get(k).unwrap_or("").to_string();
    let input = |name: String, label: String, hidden_label: bool| {
        let err = errors.0.get(&name);
        html! {
            @if hidden_label { label.sr-only for={ "m-" (name) } { (label) } } @else { label for={ "m-" (name) } { (label) } }
            input id={ "m-" (name) } type="text" name=(name) value=(val(&name)) disabled[!operate]
                aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("err-{name}"))];
            (field_error(errors, &name))
        }
    };
    let protocol = |name: String, label: String| {
        let current = val(&name);
        html! {
            label.sr-only for={ "m-" (name) } { (label) }
            select id={ "m-" (name) } name=(name) disabled[!operate] {
                option value="" selected[current.is_empty()] { "—" }
                @for p in Protocol::ALL { option value=(p.as_str()) selected[current == p.as_str()] { (p.as_str()) } }
            }
            (field_error(errors, &name))
        }
    };
    let body = html! {
        p.crumbs { a href="/purposes" { "Purposes" } " / " }
        h1 { (p.name) }
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        p { (p.vps_count) " VPS have this purpose. " a href={ "/vps?purpose=" (p.name) } { "List them" } }
        @if !errors.is_empty() {
            div.error-message role="alert" {
                p { "Fix the fields marked below." }
                ul { @for (k, m) in &errors.0 { @if !shown_at_a_field(k, port_rows, egress_rows) { li { span.mono { (k) } ": " (m) } } } }
            }
        }
        form.edit.purpose method="post" action={ "/purposes/" (p.name) } {
            (layout::csrf(s))
            div.field { (input("display_name".into(), "Display name".into(), false)) }
            fieldset {
                legend { "Mesh" }
                div.field.check {
                    input #m-enabled type="checkbox" name="enabled" checked[d.get("enabled").is_some()] disabled[!operate];
                    label for="m-enabled" { "This purpose's VPS join the mesh" }
                    (field_error(errors, "enabled"))
                }
                div.field { (input("service_account".into(), "Service account (empty: the template's)".into(), false)) }
                div.field { (input("network".into(), "Istio network (empty: the template's)".into(), false)) }
            }
            fieldset {
                legend { "Ports served to the mesh" }
                table.form-table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Number" } th scope="col" { "Protocol" } th scope="col" { "Target port" } } }
                    tbody { @for i in 0..port_rows { tr {
                        td { (input(format!("ports[{i}].name"), format!("Port {} name", i + 1), true)) }
                        td { (input(format!("ports[{i}].number"), format!("Port {} number", i + 1), true)) }
                        td { (protocol(format!("ports[{i}].protocol"), format!("Port {} protocol", i + 1))) }
                        td { (input(format!("ports[{i}].target_port"), format!("Port {} target port", i + 1), true)) }
                    } } }
                }
                p.hint { "Leave a row empty to drop it." }
            }
            fieldset {
                legend { "Mesh services called (egress)" }
                table.form-table {
                    thead { tr { th scope="col" { "Host" } th scope="col" { "Port" } th scope="col" { "Protocol" } th scope="col" { "Bind address" } } }
                    tbody { @for i in 0..egress_rows { tr {
                        td { (input(format!("egress[{i}].host"), format!("Egress {} host", i + 1), true)) }
                        td { (input(format!("egress[{i}].port"), format!("Egress {} port", i + 1), true)) }
                        td { (protocol(format!("egress[{i}].protocol"), format!("Egress {} protocol", i + 1))) }
                        td { (input(format!("egress[{i}].bind"), format!("Egress {} bind address", i + 1), true)) }
                    } } }
                }
                p.hint { "Host: the service's full name (xboard.sigma.svc.cluster.local). Bind: a 127.x.y.z address, empty to let sigma choose." }
            }
            fieldset {
                legend { "Health check" }
                div.field {
                    label for="m-probe_kind" { "Kind" }
                    select #m-probe_kind name="probe_kind" disabled[!operate] {
                        @let k = val("probe_kind");
                        option value="" selected[k.is_empty()] { "none (the agent's own)" }
                        option value="http_get" selected[k == "http_get"] { "HTTP GET" }
                        option value="tcp_socket" selected[k == "tcp_socket"] { "TCP connect" }
                    }
                    (field_error(errors, "probe_kind"))
                }
                div.field { (input("probe_path".into(), "Path (HTTP GET)".into(), false)) }
                div.field { (input("probe_port".into(), "Port".into(), false)) }
            }
            fieldset {
                legend { "Traffic capture" }
                div.field {
                    label for="m-interception" { "Mode" }
                    select #m-interception name="interception" disabled[!operate] {
                        @let k = val("interception");
                        option value="none" selected[k.is_empty() || k == "none"] { "none (applications call the loopback listeners)" }
                        option value="iptables" selected[k == "iptables"] { "iptables (capture traffic to the service ranges)" }
                    }
                    (field_error(errors, "interception"))
                }
                div.field { (input("service_cidrs".into(), "Service CIDRs (iptables; separated by commas)".into(), false)) }
            }
            @if operate { button type="submit" { "Save purpose" } }
        }
    };
    layout::page(&p.name, Section::Purposes, s, body)
}

/// `GET /purposes/{name}`.
pub async fn show(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(name): Path<String>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> WebResult<Markup> {
    let p = web.store.get_purpose(&name).await?;
    let notice = match raw.as_deref() {
        Some("created=1") => Some("Purpose created."),
        Some("saved=1") => {
            Some("Saved. The mesh reconciler applies the change to every VPS of this purpose.")
        }
        _ => None,
    };
    Ok(detail(&s, &p, &draft_of(&p), &FieldErrors::new(), notice))
}

/// `POST /purposes/{name}`: saves the form; errors come back at their fields.
pub async fn update(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(name): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let p = web.store.get_purpose(&name).await?;
    let (mesh, rows_of) = mesh_json(&form);
    let patch = PurposePatch {
        display_name: Some(Some(
            form.get("display_name").unwrap_or("").trim().to_string(),
        )),
        mesh: Some(Some(mesh)),
    };
    let result = match patch.normalize() {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(patch) => {
            web.store
                .update_purpose(&s.principal.actor(), &p.name, &patch)
                .await
        }
    };
    let errors = match result {
        Ok(_) => return Ok(Redirect::to(&format!("/purposes/{}?saved=1", p.name)).into_response()),
        Err(sigma_store::Error::Invalid(fe)) => {
            let mut e = FieldErrors::new();
            for (k, m) in fe.0 {
                e.add(field_of(&k, &rows_of), m);
            }
            e
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        detail(&s, &p, &form, &errors, None),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_form_becomes_the_mesh_object_and_errors_find_their_row() {
        let f = form(&[
            ("enabled", "on"),
            ("ports[0].name", ""),
            ("ports[1].name", "xray"),
            ("ports[1].number", "eighty"),
            ("ports[1].protocol", "TCP"),
            ("probe_kind", "tcp_socket"),
            ("probe_port", "22"),
            ("interception", "iptables"),
            ("service_cidrs", "10.96.0.0/12, fd00::/108"),
        ]);
        let (m, rows_of) = mesh_json(&f);
        assert_eq!(
            m["ports"],
            json!([{"name": "xray", "number": "eighty", "protocol": "TCP"}])
        );
        assert_eq!(m["probe"], json!({"tcp_socket": {"port": 22}}));
        assert_eq!(
            m["interception"]["service_cidrs"],
            json!(["10.96.0.0/12", "fd00::/108"])
        );
        // The settings' own checks name `ports[0].number`; the form row is 1.
        let e = sigma_store::mesh::check_mesh_settings(&m).unwrap_err();
        let sigma_store::Error::Invalid(fe) = e else {
            panic!("{e:?}")
        };
        let fields: Vec<String> = fe.0.keys().map(|k| field_of(k, &rows_of)).collect();
        assert_eq!(fields, ["ports[1].number"], "{fe:?}");
        assert_eq!(
            field_of("mesh.probe.tcp_socket.port", &rows_of),
            "probe_port"
        );
        assert_eq!(field_of("display_name", &rows_of), "display_name");
    }

    #[test]
    fn stored_settings_fill_the_form() {
        let p = Purpose {
            name: "x".into(),
            display_name: "X".into(),
            mesh: json!({"enabled": true, "ports": [{"name": "a", "number": 80, "protocol": "HTTP"}],
                         "probe": {"http_get": {"path": "/h", "port": 8080}}}),
            vps_count: 0,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let d = draft_of(&p);
        assert_eq!(d.get("ports[0].number"), Some("80"));
        assert_eq!(d.get("probe_kind"), Some("http_get"));
        let (m, _) = mesh_json(&d);
        assert_eq!(m["ports"], p.mesh["ports"]);
        assert_eq!(m["probe"], p.mesh["probe"]);
        assert!(sigma_store::mesh::check_mesh_settings(&m).is_ok());
    }
}

//! A VPS's Envoy routes: the table on the VPS page, and the add, edit, disable/enable and
//! delete forms. Every change goes through the checks of the JSON API (`EnvoyRouteCreate::spec`
//! for a new route, `EnvoyRoutePatch::apply` inside the store's transaction for a change), so
//! the console accepts exactly what `POST /api/vps/{id}/envoy-routes` and
//! `PATCH /api/envoy-routes/{id}` accept, and names the same fields.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_store::sessions::Session;
use sigma_types::{
    ClusterType, EnvoyRoute, EnvoyRouteCreate, EnvoyRoutePatch, FieldErrors, ProxyProtocol,
    RouteListener, RoutePlan, RouteStatus, RouteTarget, RouteTargetInput, Upstream, Vps, VpsStatus,
};
use uuid::Uuid;

use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};
use crate::pages::field_error;

fn parse_uuid(id: &str, what: &str) -> WebResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| WebError::NotFound(format!("no {what} with id {id:?}")))
}

/// The route `rid` of VPS `id`; a route of another VPS is not found here.
async fn route_of(web: &Web, id: &str, rid: &str) -> WebResult<(Vps, EnvoyRoute)> {
    let v = web.store.get_vps(parse_uuid(id, "VPS")?).await?;
    let r = web.store.get_route(parse_uuid(rid, "route")?).await?;
    if r.vps_id != v.id {
        return Err(WebError::NotFound(format!(
            "VPS {} has no route with id {rid:?}",
            v.hostname
        )));
    }
    Ok((v, r))
}

/// The routes section of the VPS page.
pub fn section(s: &Session, v: &Vps, routes: &[EnvoyRoute], plan: Option<&RoutePlan>) -> Markup {
    let operate = s.may_operate() && v.status != VpsStatus::Deleted;
    // Where each active route runs today and whether its listener is live (disabled routes
    // run nowhere and are not in the plan).
    let planned = |id: Uuid| plan.and_then(|p| p.routes.iter().find(|r| r.route_id == id));
    html! {
        section.card #routes {
            h2 { "Routes" }
            @if routes.is_empty() {
                p.empty {
                    "No Envoy routes on this VPS. "
                    @if operate { "Add one to make its Envoy listen on a port and forward TCP to a backend." }
                }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Listen" } th scope="col" { "Backend" }
                        th scope="col" { "Type" } th scope="col" { "PROXY" } th scope="col" { "Status" }
                        th scope="col" { "Runs" } th scope="col" { "Listener" }
                        @if operate { th scope="col" { span.sr-only { "Actions" } } }
                    } }
                    tbody { @for r in routes { tr {
                        td { (r.name) }
                        td.num { (r.listen_port) }
                        td.mono { (r.upstream.to_string()) }
                        td { (r.upstream.kind_label()) }
                        td { (r.proxy_protocol.as_str()) }
                        td { span class={ "badge route-" (r.status.as_str()) } { (r.status.as_str()) } }
                        @match planned(r.id) {
                            Some(p) => {
                                td { span class={ "badge runs-" (p.runs.as_str()) } title=[p.issues.first().map(|i| i.message.as_str())] { (p.runs.as_str().replace('_', " ")) } }
                                @match &p.listener {
                                    Some(RouteListener::Live) => td { span.badge.live { "live" } },
                                    Some(RouteListener::NotLive { reason }) => td { span.badge.not-live { "not live" } " " span.hint { (reason) } },
                                    Some(RouteListener::Unknown { reason }) => td { span.hint { "unknown: " (reason) } },
                                    None => td { "—" },
                                }
                            }
                            None => { td { "—" } td { "—" } }
                        }
                        @if operate { td.actions {
                            a href={ "/vps/" (v.id) "/routes/" (r.id) } aria-label={ "Edit route " (r.name) } { "Edit" }
                            " "
                            form.inline method="post" action={ "/vps/" (v.id) "/routes/" (r.id) "/toggle" } {
                                (layout::csrf(s))
                                @let verb = if r.status == RouteStatus::Active { "Disable" } else { "Enable" };
                                button.secondary type="submit" aria-label={ (verb) " route " (r.name) } { (verb) }
                            }
                            " "
                            a.danger href={ "/vps/" (v.id) "/routes/" (r.id) "/delete" } aria-label={ "Delete route " (r.name) } { "Delete…" }
                        } }
                    } } }
                } }
            }
            @if operate {
                p { a.button href={ "/vps/" (v.id) "/routes/new" } { "Add route" } }
            }
        }
    }
}

/// The fields the route form shows its errors at; others are listed above the button.
const FORM_FIELDS: [&str; 12] = [
    "name",
    "listen_port",
    "backend_host",
    "backend_port",
    "target.vps",
    "target.purpose",
    "target.port",
    "target.countries",
    "cluster_type",
    "connect_timeout_ms",
    "proxy_protocol",
    "status",
];

fn route_form(s: &Session, v: &Vps, action: &str, d: &Form, errors: &FieldErrors) -> Markup {
    let text = |name: &str, label: &str, hint: &str| {
        let err = errors.0.get(name);
        html! {
            div.field {
                label for={ "r-" (name) } { (label) }
                input id={ "r-" (name) } type="text" name=(name) value=(d.get(name).unwrap_or(""))
                    aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| format!("err-{name}"))];
                @if !hint.is_empty() { span.hint { (hint) } }
                (field_error(errors, name))
            }
        }
    };
    let choice = |name: &str, label: &str, options: &[(&str, &str)]| {
        let current = d.get(name).unwrap_or("");
        html! {
            div.field {
                label for={ "r-" (name) } { (label) }
                select id={ "r-" (name) } name=(name) {
                    @for (value, text) in options { option value=(value) selected[current == *value] { (text) } }
                }
                (field_error(errors, name))
            }
        }
    };
    html! {
        @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
        form.edit.route method="post" action=(action) {
            (layout::csrf(s))
            (text("name", "Name", "lower-case letters, digits, '-', '_' and '.'"))
            (text("listen_port", "Listen port", "the port Envoy listens on, on this VPS"))
            fieldset {
                legend { "Forward to a backend outside the fleet…" }
                (text("backend_host", "Backend host", "IP address or DNS name"))
                (text("backend_port", "Backend port", ""))
            }
            fieldset {
                legend { "…or to a target in the fleet" }
                (text("target.vps", "Target VPS", "hostname or id of one VPS"))
                (text("target.purpose", "Target pool", "a purpose: its active VPS whose agents are heard from"))
                (text("target.port", "Target port name", "a port the target's purpose serves (mesh.ports)"))
                (text("target.countries", "Pool countries", "comma-separated ISO codes, e.g. DE,FI; empty for all"))
            }
            (choice("cluster_type", "Cluster type", &[("", "from the host (static for an IP, strict_dns for a name)"),
                ("static", "static"), ("strict_dns", "strict_dns"), ("logical_dns", "logical_dns")]))
            (text("connect_timeout_ms", "Connect timeout (ms)", "1-60000; empty for 5000"))
            (choice("proxy_protocol", "PROXY protocol", &[("none", "none"), ("v1", "v1"), ("v2", "v2")]))
            (choice("status", "Status", &[("active", "active (served)"), ("disabled", "disabled (kept, not served)")]))
            @for (k, m) in &errors.0 {
                @if !FORM_FIELDS.contains(&k.as_str()) {
                    p.field-error role="alert" { (k) ": " (m) }
                }
            }
            button type="submit" { "Save route" }
            " "
            a href={ "/vps/" (v.id) "#routes" } { "Cancel" }
        }
    }
}

fn form_page(
    s: &Session,
    v: &Vps,
    title: &str,
    action: &str,
    d: &Form,
    errors: &FieldErrors,
) -> Markup {
    let body = html! {
        p.crumbs { a href="/vps" { "VPS" } " / " a href={ "/vps/" (v.id) } { (v.hostname) } " / " }
        h1 { (title) }
        section.card { (route_form(s, v, action, d, errors)) }
    };
    layout::page(title, Section::Vps, s, body)
}

/// A whole number field; a malformed one is named.
fn number(f: &Form, name: &str, e: &mut FieldErrors) -> Option<i64> {
    let t = f.text(name)?;
    match t.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            e.add(name, "must be a whole number");
            None
        }
    }
}

/// The route a submitted form stands for, in the API's create shape. Field errors of the form
/// itself (not a number, an unknown choice) are collected in `e`.
fn create_of(f: &Form, e: &mut FieldErrors) -> EnvoyRouteCreate {
    let choice = |name: &str, e: &mut FieldErrors, parse: fn(&str) -> bool| match f.text(name) {
        Some(v) if !parse(&v) => {
            e.add(name, format!("{v:?} is not one of the offered values"));
            None
        }
        v => v,
    };
    let cluster_type = choice("cluster_type", e, |v| ClusterType::parse(v).is_some())
        .and_then(|v| ClusterType::parse(&v));
    let proxy_protocol = choice("proxy_protocol", e, |v| ProxyProtocol::parse(v).is_some())
        .and_then(|v| ProxyProtocol::parse(&v));
    let status = choice("status", e, |v| RouteStatus::parse(v).is_some())
        .and_then(|v| RouteStatus::parse(&v));
    let listen_port = number(f, "listen_port", e);
    let backend_port = number(f, "backend_port", e);
    let connect_timeout_ms = number(f, "connect_timeout_ms", e);
    let target = target_of(f);
    // With a target the backend fields are sent only when filled, so the API names the clash.
    let (backend_host, backend_port) = if target.is_some() {
        (f.text("backend_host"), backend_port)
    } else {
        (
            Some(f.get("backend_host").unwrap_or("").trim().to_string()),
            Some(backend_port.unwrap_or(0)),
        )
    };
    EnvoyRouteCreate {
        name: f.get("name").unwrap_or("").trim().to_string(),
        // A missing or malformed port is checked (and named) by the API's own rule.
        listen_port: listen_port.unwrap_or(0),
        backend_host,
        backend_port,
        target,
        cluster_type,
        connect_timeout_ms,
        proxy_protocol,
        status,
    }
}

/// The fleet target the form names, when any of its fields is filled.
fn target_of(f: &Form) -> Option<RouteTargetInput> {
    let vps = f.text("target.vps");
    let purpose = f.text("target.purpose");
    let port = f.text("target.port");
    let countries = f.text("target.countries").map(|c| {
        c.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
    });
    if vps.is_none() && purpose.is_none() && port.is_none() && countries.is_none() {
        return None;
    }
    Some(RouteTargetInput {
        vps,
        purpose,
        port: port.unwrap_or_default(),
        countries,
    })
}

/// A conflict from the store (a taken name or port) shown at the field it is about.
fn conflict_field(message: String) -> FieldErrors {
    let mut e = FieldErrors::new();
    let field = if message.contains("listen port") {
        "listen_port"
    } else if message.contains("named") {
        "name"
    } else {
        "route"
    };
    e.add(field, message);
    e
}

fn draft_of(r: &EnvoyRoute) -> Form {
    let upstream: Vec<(String, String)> = match &r.upstream {
        Upstream::Backend {
            backend_host,
            backend_port,
            cluster_type,
        } => vec![
            ("backend_host".into(), backend_host.clone()),
            ("backend_port".into(), backend_port.to_string()),
            ("cluster_type".into(), cluster_type.as_str().into()),
        ],
        Upstream::Target {
            target: RouteTarget::Vps { hostname, port, .. },
        } => vec![
            ("target.vps".into(), hostname.clone()),
            ("target.port".into(), port.clone()),
        ],
        Upstream::Target {
            target:
                RouteTarget::Pool {
                    purpose,
                    port,
                    countries,
                },
        } => vec![
            ("target.purpose".into(), purpose.clone()),
            ("target.port".into(), port.clone()),
            ("target.countries".into(), countries.join(",")),
        ],
    };
    let mut pairs = vec![
        ("name".into(), r.name.clone()),
        ("listen_port".into(), r.listen_port.to_string()),
    ];
    pairs.extend(upstream);
    pairs.extend([
        (
            "connect_timeout_ms".into(),
            r.connect_timeout_ms.to_string(),
        ),
        ("proxy_protocol".into(), r.proxy_protocol.as_str().into()),
        ("status".into(), r.status.as_str().into()),
    ]);
    Form::from_pairs(pairs)
}

/// `GET /vps/{id}/routes/new`.
pub async fn new_form(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    s.require_operator()?;
    let v = web.store.get_vps(parse_uuid(&id, "VPS")?).await?;
    let d = Form::from_pairs(vec![
        ("proxy_protocol".into(), "none".into()),
        ("status".into(), "active".into()),
    ]);
    Ok(form_page(
        &s,
        &v,
        &format!("New route on {}", v.hostname),
        &format!("/vps/{}/routes", v.id),
        &d,
        &FieldErrors::new(),
    ))
}

/// `POST /vps/{id}/routes`: adds a route; mistakes come back at their fields.
pub async fn create(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let v = web.store.get_vps(parse_uuid(&id, "VPS")?).await?;
    let mut e = FieldErrors::new();
    let c = create_of(&form, &mut e);
    let spec = c.spec("", &mut e);
    let errors = match spec {
        Some(spec) if e.is_empty() => {
            match web
                .store
                .create_route(&s.principal.actor(), v.id, &spec)
                .await
            {
                Ok(_) => {
                    return Ok(
                        Redirect::to(&format!("/vps/{}?route=added#routes", v.id)).into_response()
                    );
                }
                Err(sigma_store::Error::Invalid(fe)) => fe,
                Err(sigma_store::Error::Conflict(m)) => conflict_field(m),
                Err(other) => return Err(other.into()),
            }
        }
        _ => e,
    };
    let page = form_page(
        &s,
        &v,
        &format!("New route on {}", v.hostname),
        &format!("/vps/{}/routes", v.id),
        &form,
        &errors,
    );
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
}

/// `GET /vps/{id}/routes/{rid}`: the edit form.
pub async fn edit_form(
    State(web): State<Web>,
    Signed(s): Signed,
    Path((id, rid)): Path<(String, String)>,
) -> WebResult<Markup> {
    s.require_operator()?;
    let (v, r) = route_of(&web, &id, &rid).await?;
    Ok(form_page(
        &s,
        &v,
        &format!("Route {} on {}", r.name, v.hostname),
        &format!("/vps/{}/routes/{}", v.id, r.id),
        &draft_of(&r),
        &FieldErrors::new(),
    ))
}

/// The patch a submitted edit form stands for: every field set, as the API's PATCH would
/// carry them (an empty cluster type re-derives it from the host; an empty timeout is the
/// default).
fn patch_of(f: &Form, e: &mut FieldErrors) -> EnvoyRoutePatch {
    let c = create_of(f, e);
    EnvoyRoutePatch {
        name: Some(Some(c.name)),
        listen_port: Some(Some(c.listen_port)),
        backend_host: c.backend_host.map(Some),
        backend_port: c.backend_port.map(Some),
        target: c.target.map(Some),
        cluster_type: c.cluster_type.map(Some),
        connect_timeout_ms: Some(Some(
            c.connect_timeout_ms
                .unwrap_or(sigma_types::DEFAULT_CONNECT_TIMEOUT_MS),
        )),
        proxy_protocol: c.proxy_protocol.map(Some),
        status: c.status.map(Some),
    }
}

/// `POST /vps/{id}/routes/{rid}`: saves the edit form.
pub async fn update(
    State(web): State<Web>,
    Signed(s): Signed,
    Path((id, rid)): Path<(String, String)>,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let (v, r) = route_of(&web, &id, &rid).await?;
    let mut e = FieldErrors::new();
    let patch = patch_of(&form, &mut e);
    let errors = if e.is_empty() {
        match web
            .store
            .update_route(&s.principal.actor(), r.id, |old| patch.apply(old))
            .await
        {
            Ok(_) => {
                return Ok(
                    Redirect::to(&format!("/vps/{}?route=saved#routes", v.id)).into_response()
                );
            }
            Err(sigma_store::Error::Invalid(fe)) => fe,
            Err(sigma_store::Error::Conflict(m)) => conflict_field(m),
            Err(other) => return Err(other.into()),
        }
    } else {
        e
    };
    let page = form_page(
        &s,
        &v,
        &format!("Route {} on {}", r.name, v.hostname),
        &format!("/vps/{}/routes/{}", v.id, r.id),
        &form,
        &errors,
    );
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
}

/// `POST /vps/{id}/routes/{rid}/toggle`: disables an active route or enables a disabled one.
pub async fn toggle(
    State(web): State<Web>,
    Signed(s): Signed,
    Path((id, rid)): Path<(String, String)>,
    body: Bytes,
) -> WebResult<Response> {
    Form::parse(&body)?.csrf(&s)?;
    s.require_operator()?;
    let (v, r) = route_of(&web, &id, &rid).await?;
    let next = match r.status {
        RouteStatus::Active => RouteStatus::Disabled,
        RouteStatus::Disabled => RouteStatus::Active,
    };
    let patch = EnvoyRoutePatch {
        status: Some(Some(next)),
        ..EnvoyRoutePatch::default()
    };
    web.store
        .update_route(&s.principal.actor(), r.id, |old| patch.apply(old))
        .await?;
    Ok(Redirect::to(&format!("/vps/{}?route={}#routes", v.id, next.as_str())).into_response())
}

/// `GET /vps/{id}/routes/{rid}/delete`: asks for confirmation.
pub async fn delete_confirm(
    State(web): State<Web>,
    Signed(s): Signed,
    Path((id, rid)): Path<(String, String)>,
) -> WebResult<Markup> {
    s.require_operator()?;
    let (v, r) = route_of(&web, &id, &rid).await?;
    let body = html! {
        p.crumbs { a href="/vps" { "VPS" } " / " a href={ "/vps/" (v.id) } { (v.hostname) } " / " }
        h1 { "Delete route " (r.name) "?" }
        section.card {
            p { "Envoy on " (v.hostname) " stops listening on port " (r.listen_port) " and forwarding to "
                span.mono { (r.upstream.to_string()) } ". To keep the route but stop serving it, disable it instead." }
            form method="post" action={ "/vps/" (v.id) "/routes/" (r.id) "/delete" } {
                (layout::csrf(&s))
                button.danger type="submit" { "Delete route " (r.name) }
                " "
                a href={ "/vps/" (v.id) "#routes" } { "Cancel" }
            }
        }
    };
    Ok(layout::page("Delete route", Section::Vps, &s, body))
}

/// `POST /vps/{id}/routes/{rid}/delete`.
pub async fn delete(
    State(web): State<Web>,
    Signed(s): Signed,
    Path((id, rid)): Path<(String, String)>,
    body: Bytes,
) -> WebResult<Response> {
    Form::parse(&body)?.csrf(&s)?;
    s.require_operator()?;
    let (v, r) = route_of(&web, &id, &rid).await?;
    web.store.delete_route(&s.principal.actor(), r.id).await?;
    Ok(Redirect::to(&format!("/vps/{}?route=deleted#routes", v.id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_forms_are_checked_by_the_api_rules() {
        let f = Form::from_pairs(vec![
            ("name".into(), "Bad Name".into()),
            ("listen_port".into(), "eighty".into()),
            ("backend_host".into(), "backend.example.net".into()),
            ("backend_port".into(), "70000".into()),
            ("cluster_type".into(), "static".into()),
            ("proxy_protocol".into(), "v9".into()),
        ]);
        let mut e = FieldErrors::new();
        let c = create_of(&f, &mut e);
        let _ = c.spec("", &mut e);
        for field in [
            "name",
            "listen_port",
            "backend_port",
            "proxy_protocol",
            "backend_host",
        ] {
            assert!(e.0.contains_key(field), "{field}: {e:?}");
        }
        let f = Form::from_pairs(vec![
            ("name".into(), "web".into()),
            ("listen_port".into(), "8443".into()),
            ("backend_host".into(), "10.0.0.5".into()),
            ("backend_port".into(), "443".into()),
        ]);
        let mut e = FieldErrors::new();
        let spec = create_of(&f, &mut e).spec("", &mut e).expect("valid");
        assert!(e.is_empty(), "{e:?}");
        assert!(matches!(
            spec.upstream,
            sigma_types::UpstreamSpec::Backend {
                cluster_type: ClusterType::Static,
                ..
            }
        ));
        // A pool target from the form's target fields.
        let f = Form::from_pairs(vec![
            ("name".into(), "exit".into()),
            ("listen_port".into(), "1194".into()),
            ("backend_host".into(), "".into()),
            ("backend_port".into(), "".into()),
            ("target.purpose".into(), "vpn-exit".into()),
            ("target.port".into(), "vpn".into()),
            ("target.countries".into(), "de, fi".into()),
        ]);
        let mut e = FieldErrors::new();
        let spec = create_of(&f, &mut e).spec("", &mut e).expect("valid");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            spec.upstream,
            sigma_types::UpstreamSpec::Target(sigma_types::TargetSpec::Pool {
                purpose: "vpn-exit".into(),
                port: "vpn".into(),
                countries: vec!["DE".into(), "FI".into()],
            })
        );
        assert_eq!(spec.status, RouteStatus::Active);
        assert_eq!(
            conflict_field("listen port 8443 is used by another route of this VPS".into())
                .0
                .keys()
                .collect::<Vec<_>>(),
            ["listen_port"]
        );
    }
}

//! Enrollment: issue a token with presets and hand out the one-line install command; see the
//! tokens' uses and expiry; revoke one.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_store::sessions::Session;
use sigma_types::{EnrollmentTokenCreate, FieldErrors, Normalize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Web;
use crate::auth::{Form, Roles, Signed, own_origin};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};

/// Lifetimes offered for a new token.
const TTL_PRESETS: [(i64, &str); 4] = [
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "7 days"),
    (30 * 86_400, "30 days"),
];

/// The command that installs and enrolls an agent: the same shape `sigmactl enroll create`
/// prints (`crates/sigma-ctl/src/install.rs`), every value shell-quoted.
pub fn install_command(api_url: &str, token: &str) -> String {
    let api = api_url.trim_end_matches('/');
    let q = sigma_mesh::bundle::shell_quote;
    format!(
        "curl -fsSL {} | SIGMA_API_URL={} SIGMA_ENROLLMENT_TOKEN={} sh",
        q(&format!("{api}/install.sh")),
        q(api),
        q(token)
    )
}

fn field_error(e: &FieldErrors, name: &str) -> Markup {
    html! {
        @if let Some(m) = e.0.get(name) { span.field-error id={ "err-" (name) } role="alert" { (m) } }
    }
}

struct Created {
    command: String,
    prefix: String,
}

async fn render(
    web: &Web,
    s: &Session,
    draft: &Form,
    errors: &FieldErrors,
    created: Option<Created>,
) -> WebResult<Markup> {
    let operate = s.may_operate();
    let tokens = if operate {
        Some(web.store.list_enrollment_tokens(100, 0).await?)
    } else {
        None
    };
    let purposes = web.store.list_purposes(1000, 0).await?.items;
    let providers = web.store.list_providers(1000, 0).await?.items;
    let d = |k: &str| draft.get(k).unwrap_or("").to_string();
    let ttl = d("ttl_seconds");
    let now = OffsetDateTime::now_utc();
    let body = html! {
        h1 { "Enrollment" }
        @if !operate {
            p.notice { "Enrollment tokens are issued by operators and admins; your key is " (s.principal.role.as_str()) "." }
        }
        @if let Some(c) = &created {
            section.card.created #install {
                h2 { "Token " (c.prefix) " created" }
                p { "Run this on the VPS as root. The token is shown only now: copy it before you leave this page." }
                div.copy-row {
                    input #install-command type="text" readonly value=(c.command) aria-label="Install command";
                    button type="button" data-copy="install-command" { "Copy" }
                }
            }
        }
        @if operate {
            section.card {
                h2 { "New token" }
                @if !errors.is_empty() { p.error-message role="alert" { "Fix the fields marked below." } }
                form.edit method="post" action="/enrollment" {
                    (layout::csrf(s))
                    div.field {
                        label for="t-name" { "Name" }
                        input #t-name type="text" name="name" value=(d("name")) placeholder="enrollment";
                        (field_error(errors, "name"))
                    }
                    div.field {
                        label for="t-ttl" { "Valid for" }
                        select #t-ttl name="ttl_seconds" {
                            @for (secs, label) in TTL_PRESETS {
                                option value=(secs) selected[ttl == secs.to_string() || (ttl.is_empty() && secs == 86_400)] { (label) }
                            }
                        }
                        (field_error(errors, "ttl_seconds"))
                    }
                    div.field {
                        label for="t-uses" { "VPS that may enroll with it" }
                        input #t-uses type="number" name="max_uses" min="1" value=(if d("max_uses").is_empty() { "1".to_string() } else { d("max_uses") });
                        (field_error(errors, "max_uses"))
                    }
                    div.field {
                        label for="t-purpose" { "Purpose preset" }
                        select #t-purpose name="purpose" {
                            option value="" { "(none)" }
                            @for p in &purposes { option value=(p.name) selected[d("purpose") == p.name] { (p.name) " (" (p.display_name) ")" } }
                        }
                        (field_error(errors, "purpose"))
                    }
                    div.field {
                        label for="t-provider" { "Provider preset" }
                        select #t-provider name="provider" {
                            option value="" { "(none)" }
                            @for p in &providers { option value=(p.name) selected[d("provider") == p.name] { (p.name) } }
                        }
                        (field_error(errors, "provider"))
                    }
                    div.field {
                        label for="t-country" { "Country preset" }
                        input #t-country type="text" name="country" value=(d("country")) placeholder="DE" size="4";
                        (field_error(errors, "country"))
                    }
                    div.field {
                        label for="t-tags" { "Tags preset" }
                        input #t-tags type="text" name="tags" value=(d("tags")) placeholder="separated by commas";
                        (field_error(errors, "tags"))
                    }
                    button type="submit" { "Create token" }
                }
            }
        }
        @if let Some(tokens) = &tokens {
            section.card {
                h2 { "Tokens" }
                @if tokens.items.is_empty() {
                    p.empty { "No tokens yet." }
                } @else {
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "Prefix" } th scope="col" { "Name" } th scope="col" { "Presets" } th scope="col" { "Uses" } th scope="col" { "Expires" } th scope="col" { "State" } th scope="col" { span.sr-only { "Actions" } } } }
                        tbody { @for t in &tokens.items {
                            @let live = t.revoked_at.is_none() && t.expires_at > now && t.uses < t.max_uses;
                            tr {
                                td.mono { (t.prefix) }
                                td { (t.name) }
                                td {
                                    @if let Some(p) = &t.presets.purpose { span.tag { "purpose " (p) } " " }
                                    @if let Some(p) = &t.presets.provider { span.tag { "provider " (p) } " " }
                                    @if let Some(c) = &t.presets.country { span.tag { "country " (c) } " " }
                                    @for tag in &t.presets.tags { span.tag { (tag) } " " }
                                }
                                td.num { (t.uses) " / " (t.max_uses) }
                                td { (layout::time(t.expires_at)) }
                                td { @if t.revoked_at.is_some() { "revoked" } @else if t.expires_at <= now { "expired" } @else if t.uses >= t.max_uses { "used up" } @else { "live" } }
                                td { @if live {
                                    form method="post" action={ "/enrollment/" (t.id) "/revoke" } {
                                        (layout::csrf(s))
                                        button.danger type="submit" aria-label={ "Revoke " (t.prefix) } { "Revoke" }
                                    }
                                } }
                            }
                        } }
                    } }
                }
            }
        }
    };
    Ok(layout::page("Enrollment", Section::Enrollment, s, body))
}

/// `GET /enrollment`.
pub async fn page(State(web): State<Web>, Signed(s): Signed) -> WebResult<Markup> {
    render(
        &web,
        &s,
        &Form::from_pairs(Vec::new()),
        &FieldErrors::new(),
        None,
    )
    .await
}

/// The token a submitted form asks for, checked by the API's own rules.
fn token_request(f: &Form) -> Result<EnrollmentTokenCreate, FieldErrors> {
    let mut e = FieldErrors::new();
    let mut number = |k: &str, default: i64| match f.text(k) {
        None => default,
        Some(v) => v.parse::<i64>().unwrap_or_else(|_| {
            e.add(k, "must be a whole number");
            default
        }),
    };
    let c = EnrollmentTokenCreate {
        name: f.text("name"),
        ttl_seconds: number("ttl_seconds", 86_400),
        max_uses: number("max_uses", 1),
        purpose: f.text("purpose"),
        provider: f.text("provider"),
        country: f.text("country"),
        tags: f
            .get("tags")
            .unwrap_or("")
            .split([',', ' '])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        // Reinstall tokens bound to one VPS are issued from the VPS (`sigmactl vps reenroll`).
        vps_id: None,
    };
    let checked = c.normalize();
    match checked {
        Ok(c) if e.is_empty() => Ok(c),
        Ok(_) => Err(e),
        Err(fe) => {
            for (k, v) in fe.0 {
                e.add(k, v);
            }
            Err(e)
        }
    }
}

/// `POST /enrollment`: issues a token and shows its install command once.
pub async fn create(
    State(web): State<Web>,
    Signed(s): Signed,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let result = match token_request(&form) {
        Err(fe) => Err(sigma_store::Error::Invalid(fe)),
        Ok(c) => {
            web.store
                .create_enrollment_token(&s.principal.actor(), &c)
                .await
        }
    };
    match result {
        Ok(t) => {
            let api = match &web.settings.public_url {
                Some(u) => u.clone(),
                None => own_origin(web.settings.trust_forwarded_proto, &headers)
                    .ok_or_else(|| WebError::BadRequest("no usable Host header".into()))?,
            };
            let created = Created {
                command: install_command(&api, &t.token),
                prefix: t.enrollment_token.prefix,
            };
            let page = render(
                &web,
                &s,
                &Form::from_pairs(Vec::new()),
                &FieldErrors::new(),
                Some(created),
            )
            .await?;
            Ok((StatusCode::CREATED, page).into_response())
        }
        Err(sigma_store::Error::Invalid(fe)) => {
            let page = render(&web, &s, &form, &fe, None).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /enrollment/{id}/revoke`.
pub async fn revoke(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    Form::parse(&body)?.csrf(&s)?;
    s.require_operator()?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| WebError::NotFound(format!("no enrollment token with id {id:?}")))?;
    web.store
        .revoke_enrollment_token(&s.principal.actor(), id)
        .await?;
    Ok(Redirect::to("/enrollment").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_command_has_sigmactls_shape() {
        assert_eq!(
            install_command("http://127.0.0.1:3000/", "sge_abcd1234_x"),
            "curl -fsSL 'http://127.0.0.1:3000/install.sh' | SIGMA_API_URL='http://127.0.0.1:3000' \
             SIGMA_ENROLLMENT_TOKEN='sge_abcd1234_x' sh"
        );
        assert!(install_command("http://h", "t';rm -rf /").contains(r"'t'\'';rm -rf /'"));
    }

    #[test]
    fn token_forms_are_checked_by_the_api_rules() {
        let f = Form::from_pairs(vec![
            ("ttl_seconds".into(), "10".into()),
            ("max_uses".into(), "x".into()),
            ("country".into(), "Narnia".into()),
        ]);
        let e = token_request(&f).unwrap_err();
        assert!(e.0.contains_key("max_uses"), "{e:?}");
        let f = Form::from_pairs(vec![("country".into(), "de".into())]);
        assert_eq!(token_request(&f).unwrap().country.as_deref(), Some("DE"));
    }
}

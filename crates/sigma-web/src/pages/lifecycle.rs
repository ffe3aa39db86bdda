//! A VPS's lifecycle steps that need a confirmation: retire, delete and restore. Each is a GET
//! page that says what will happen and a POST that does it, through the store calls the JSON
//! API makes (`POST /api/vps/{id}/retire`, `DELETE /api/vps/{id}`, `POST /api/vps/{id}/restore`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sigma_types::{Vps, VpsStatus};
use uuid::Uuid;

use crate::Web;
use crate::auth::{Form, Roles, Signed};
use crate::error::{WebError, WebResult};
use crate::layout::{self, Section};

/// A lifecycle step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Retire (the agent stops what it manages).
    Retire,
    /// Soft-delete.
    Delete,
    /// Bring a deleted VPS back.
    Restore,
}

impl Step {
    fn path(self) -> &'static str {
        match self {
            Step::Retire => "retire",
            Step::Delete => "delete",
            Step::Restore => "restore",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Step::Retire => "Retire",
            Step::Delete => "Delete",
            Step::Restore => "Restore",
        }
    }

    /// Whether the step applies to a VPS in `status` (the page offers only these).
    pub fn applies(self, status: VpsStatus) -> bool {
        match self {
            Step::Retire => matches!(
                status,
                VpsStatus::Provisioning | VpsStatus::Active | VpsStatus::Retiring
            ),
            Step::Delete => status != VpsStatus::Deleted,
            Step::Restore => status == VpsStatus::Deleted,
        }
    }

    fn explain(self, v: &Vps) -> Markup {
        match self {
            Step::Retire => {
                html! { p { "Its agent stops the services it manages and the VPS leaves the mesh. A retired VPS can be brought back by setting its status to provisioning." } }
            }
            Step::Delete => {
                html! { p { "The VPS leaves the inventory and the mesh, its agent's heartbeats are refused until it is restored, and its hostname " span.mono { (v.hostname) } " becomes free. Its routes and history are kept: it can be restored from the VPS list (status: deleted)." } }
            }
            Step::Restore => {
                html! { p { "The VPS comes back with the status it had before it was deleted. This fails if another VPS has taken its hostname " span.mono { (v.hostname) } " since." } }
            }
        }
    }
}

/// The lifecycle buttons of a VPS page: each step that applies now, as a link to its
/// confirmation.
pub fn actions(v: &Vps) -> Markup {
    html! {
        p.actions {
            @for step in [Step::Retire, Step::Delete, Step::Restore] {
                @if step.applies(v.status) {
                    @let class = if step == Step::Restore { "button" } else { "button danger" };
                    a class=(class) href={ "/vps/" (v.id) "/" (step.path()) } { (step.verb()) "…" }
                    " "
                }
            }
        }
    }
}

fn parse_id(id: &str) -> WebResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| WebError::NotFound(format!("no VPS with id {id:?}")))
}

async fn confirm(
    web: Web,
    s: sigma_store::sessions::Session,
    id: String,
    step: Step,
) -> WebResult<Markup> {
    s.require_operator()?;
    let v = web.store.get_vps(parse_id(&id)?).await?;
    let body = html! {
        p.crumbs { a href="/vps" { "VPS" } " / " a href={ "/vps/" (v.id) } { (v.hostname) } " / " }
        h1 { (step.verb()) " " (v.hostname) "?" }
        section.card {
            @if step.applies(v.status) {
                (step.explain(&v))
                form method="post" action={ "/vps/" (v.id) "/" (step.path()) } {
                    (layout::csrf(&s))
                    @if step == Step::Retire {
                        div.field.check {
                            input #force type="checkbox" name="force";
                            label for="force" { "Mark it retired at once (its agent is gone and will not confirm)" }
                        }
                    }
                    @let class = if step == Step::Restore { "" } else { "danger" };
                    button class=(class) type="submit" { (step.verb()) " " (v.hostname) }
                    " "
                    a href={ "/vps/" (v.id) } { "Cancel" }
                }
            } @else {
                p { "A VPS that is " (v.status.as_str()) " cannot be " (step.path()) "d. " a href={ "/vps/" (v.id) } { "Back to the VPS" } }
            }
        }
    };
    Ok(layout::page(step.verb(), Section::Vps, &s, body))
}

async fn apply(
    web: Web,
    s: sigma_store::sessions::Session,
    id: String,
    body: Bytes,
    step: Step,
) -> WebResult<Response> {
    let form = Form::parse(&body)?;
    form.csrf(&s)?;
    s.require_operator()?;
    let id = parse_id(&id)?;
    let actor = s.principal.actor();
    match step {
        Step::Retire => {
            web.store
                .retire_vps(&actor, id, form.get("force").is_some())
                .await?
        }
        Step::Delete => web.store.delete_vps(&actor, id).await?,
        Step::Restore => web.store.restore_vps(&actor, id).await?,
    };
    Ok(Redirect::to(&format!("/vps/{id}?done={}", step.path())).into_response())
}

/// `GET /vps/{id}/retire`.
pub async fn retire_confirm(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    confirm(web, s, id, Step::Retire).await
}

/// `POST /vps/{id}/retire`.
pub async fn retire(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    apply(web, s, id, body, Step::Retire).await
}

/// `GET /vps/{id}/delete`.
pub async fn delete_confirm(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    confirm(web, s, id, Step::Delete).await
}

/// `POST /vps/{id}/delete`.
pub async fn delete(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    apply(web, s, id, body, Step::Delete).await
}

/// `GET /vps/{id}/restore`.
pub async fn restore_confirm(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    confirm(web, s, id, Step::Restore).await
}

/// `POST /vps/{id}/restore`.
pub async fn restore(
    State(web): State<Web>,
    Signed(s): Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    apply(web, s, id, body, Step::Restore).await
}

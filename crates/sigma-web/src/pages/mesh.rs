//! The mesh section of the VPS page: sigma-api's mesh report for the VPS (the WorkloadEntry
//! sigma wants against the one the cluster holds, as `GET /api/vps/{id}/mesh` returns it) and
//! the VPS's mesh chain judged link by link by `sigmactl mesh doctor`'s own rules
//! ([`sigma_ctl::doctor::evaluate`], a pure function; Prometheus links are left out, the console
//! does not query Prometheus; the route link comes from the VPS's route plan).

use maud::{Markup, html};
use sigma_ctl::doctor::{self, Inputs, MeshReport, Outcome};
use sigma_store::sessions::Session;
use sigma_types::{RoutePlan, Vps};
use time::OffsetDateTime;

use crate::Web;
use crate::layout;

fn json_block(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The mesh section of VPS `v`.
pub async fn section(web: &Web, s: &Session, v: &Vps, plan: Option<&RoutePlan>) -> Markup {
    let report = match &web.mesh {
        Some(m) => match m.report(&s.principal, v.id).await {
            Ok(r) => Ok(MeshReport::Reported(Box::new(r))),
            Err(e) => Err(e),
        },
        None => Ok(MeshReport::Unsupported),
    };
    // The doctor reads the purpose's mesh settings; a purpose that cannot be read is a link
    // it reports on, not a failed page.
    let purpose_mesh = web.store.get_purpose(&v.purpose).await.ok().map(|p| p.mesh);
    html! {
        section.card #mesh {
            h2 { "Mesh" }
            dl {
                dt { "State" }
                dd { span class={ "badge mesh-" (v.mesh.status.as_str()) } { (v.mesh.status.as_str()) } @if v.mesh_opt_out { " (kept out of the mesh)" } }
                @if let Some(m) = &v.mesh.message { dt { "Why" } dd { (m) } }
                @if let Some(t) = v.mesh.last_attempt_at { dt { "Last reconciled" } dd { (layout::time(t)) } }
            }
            @match &report {
                Err(e) => p.error-message role="alert" { "The mesh report could not be made: " (e) ". Reload the page; if it persists, check sigma-api's log." },
                Ok(r) => {
                    @let links = doctor::evaluate(&Inputs {
                        vps: v,
                        purpose_mesh: purpose_mesh.as_ref(),
                        report: r,
                        now: OffsetDateTime::now_utc(),
                        stale_after: doctor::DEFAULT_STALE_AFTER,
                        prometheus: None,
                        routes: plan,
                    });
                    @let (ok, warn, failed) = doctor::tally(&links);
                    h3 { "Mesh chain (" (ok) " ok, " (warn) " warning, " (failed) " failed)" }
                    div.table-wrap { table.doctor {
                        thead { tr { th scope="col" { "Link" } th scope="col" { "Result" } th scope="col" { "Found" } th scope="col" { "Fix" } } }
                        tbody { @for l in &links { tr {
                            td { (l.link.title()) }
                            td { span class={ "badge doctor-" (l.result.as_str()) } { (l.result.as_str()) } }
                            td { (l.reason) }
                            td { @if let Some(f) = &l.fix { span.mono { (f) } } @else if l.result == Outcome::Ok { "—" } }
                        } } }
                    } }
                    p.hint { "The same verdicts as " span.mono { "sigmactl mesh doctor " (v.hostname) } " (without its Prometheus links)." }
                    @if let MeshReport::Reported(rep) = r {
                        h3 { "WorkloadEntry: desired and in the cluster" }
                        dl {
                            dt { "Mesh mode" } dd { (rep.mode) }
                            dt { "Belongs in the mesh" } dd { @if rep.meshed { "yes" } @else { "no" } @if let Some(why) = &rep.reason { " — " (why) } }
                            @if let Some(s) = rep.in_sync { dt { "Cluster matches" } dd { @if s { "yes" } @else { strong.warn { "no: the reconciler has yet to apply sigma's version" } } } }
                            @if let Some(h) = &rep.health {
                                dt { "istiod health" }
                                dd { @if h.healthy { "healthy" } @else { strong.warn { "unhealthy" } } @if let Some(m) = &h.message { " — " (m) } }
                            }
                            @if let Some(e) = &rep.cluster_error { dt { "Cluster" } dd.warn { (e) } }
                        }
                        div.grid.pair {
                            div {
                                h4 { "Desired (sigma)" }
                                @match &rep.desired { Some(d) => pre.json { (json_block(d)) }, None => p.empty { "None: it does not belong in the mesh." } }
                            }
                            div {
                                h4 { "In the cluster" }
                                @match &rep.actual {
                                    Some(a) => pre.json { (json_block(a)) },
                                    None => p.empty { @if rep.mode == "kubernetes" { "None found." } @else { "Not read: sigma-api runs in mesh mode " (rep.mode) "." } },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

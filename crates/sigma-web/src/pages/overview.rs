//! Overview: the fleet at a glance, with links into filtered VPS lists and out to Kiali and
//! Grafana.

use axum::extract::State;
use maud::{Markup, html};

use super::query;
use crate::Web;
use crate::auth::Signed;
use crate::error::WebResult;
use crate::layout::{self, Section};

fn breakdown(title: &str, filter: &str, rows: &[(Option<String>, i64)]) -> Markup {
    html! {
        section.card {
            h2 { (title) }
            @if rows.is_empty() {
                p.empty { "No VPS yet." }
            } @else {
                table.counts {
                    tbody {
                        @for (name, n) in rows {
                            tr {
                                td {
                                    @match name {
                                        Some(v) => a href={ "/vps" (query(&[(filter, v)])) } { (v) },
                                        None => span.muted { "(not set)" },
                                    }
                                }
                                td.num { (n) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Unix milliseconds of a time.
fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A mesh attention count linking to the VPS it counts (the list's `attention` filter).
fn attention_row(filter: &str, label: &str, n: i64) -> Markup {
    html! {
        tr {
            td { a href={ "/vps" (query(&[("attention", filter)])) } { (label) } }
            td.num { @if n > 0 { strong.warn { (n) } } @else { (n) } }
        }
    }
}

/// `GET /`.
pub async fn page(State(web): State<Web>, Signed(s): Signed) -> WebResult<Markup> {
    let f = web.store.fleet_summary(web.settings.silent_after).await?;
    let now = time::OffsetDateTime::now_utc();
    let cert_before = now + web.settings.cert_warning;
    let token_before = now + web.settings.token_warning;
    let attention = web
        .store
        .mesh_attention(unix_ms(cert_before), unix_ms(token_before))
        .await?;
    let purposes: Vec<_> = f
        .by_purpose
        .iter()
        .map(|(p, n)| (Some(p.clone()), *n))
        .collect();
    let body = html! {
        h1 { "Overview" }
        @if f.total == 0 {
            section.card.notice {
                p { "The inventory is empty. " a href="/enrollment" { "Create an enrollment token" } " and run its install command on a VPS; it appears here when its agent registers." }
            }
        }
        div.grid {
            section.card {
                h2 { "Status" }
                p.big { (f.total) " VPS" }
                table.counts { tbody {
                    @for (st, n) in &f.by_status {
                        tr {
                            td { a href={ "/vps" (query(&[("status", st.as_str())])) } { span class={ "badge " (st.as_str()) } { (st.as_str()) } } }
                            td.num { (n) }
                        }
                    }
                } }
                p {
                    @if f.silent > 0 {
                        strong.warn { (f.silent) " active VPS silent" }
                    } @else {
                        "No active VPS silent"
                    }
                    " (no heartbeat for " (web.settings.silent_after.as_secs()) " s)."
                }
            }
            section.card {
                h2 { "Mesh" }
                table.counts { tbody {
                    @for (st, n) in &f.by_mesh {
                        tr { td { a href={ "/vps" (query(&[("mesh", st.as_str())])) } { span class={ "badge mesh-" (st.as_str()) } { (st.as_str()) } } } td.num { (n) } }
                    }
                } }
                h3 { "Active VPS needing attention" }
                table.counts #mesh-attention { tbody {
                    (attention_row("proxy", "Proxies not ready", attention.proxies_not_ready))
                    (attention_row("cert", &format!("Certificates expiring within {}", layout::span(web.settings.cert_warning)), attention.certs_expiring))
                    (attention_row("token", &format!("Tokens expiring within {}", layout::span(web.settings.token_warning)), attention.tokens_expiring))
                } }
                p.muted { "From what mesh-mode agents last reported; expired ones count too." }
                p.links {
                    @if let Some(k) = &web.settings.kiali_url { a href=(k) rel="noopener noreferrer" { "Kiali" } " " }
                    @if let Some(g) = &web.settings.grafana_url { a href=(g) rel="noopener noreferrer" { "Grafana" } }
                    @if web.settings.kiali_url.is_none() && web.settings.grafana_url.is_none() {
                        span.muted { "Links to Kiali and Grafana appear here when sigma-api is started with --kiali-url / --grafana-url." }
                    }
                }
            }
            (breakdown("Purpose", "purpose", &purposes))
            (breakdown("Country", "country", &f.by_country))
            (breakdown("Provider", "provider", &f.by_provider))
        }
    };
    Ok(layout::page("Overview", Section::Overview, &s, body))
}

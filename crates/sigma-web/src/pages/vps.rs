//! The VPS list: filters (the JSON API's, plus the mesh state, the mesh facts the overview
//! flags and contract expiry), search, sorting and server-side pages. The VPS page is in [`super::vps_detail`].

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use sigma_store::console::{ConsoleFilter, MeshAttention, VpsSort};
use sigma_types::{
    ContractFilter, FieldErrors, MeshSyncStatus, Normalize, Provider, Purpose, VpsQuery, VpsStatus,
};

use super::{field_error, query};
use crate::Web;
use crate::auth::Signed;
use crate::error::WebResult;
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
    attention: String,
    expires: String,
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
                attention: get("attention"),
                expires: get("expires"),
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

    /// The console's own filters, checked; `web` gives the overview's warning windows so that
    /// the list shows exactly what the overview counted.
    fn console(&self, web: &crate::WebSettings, e: &mut FieldErrors) -> ConsoleFilter {
        let now = time::OffsetDateTime::now_utc();
        let ms = |d: std::time::Duration| {
            i64::try_from((now + d).unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
        };
        let attention = match self.attention.as_str() {
            "" => None,
            "proxy" => Some(MeshAttention::ProxyNotReady),
            "cert" => Some(MeshAttention::CertExpiresBefore(ms(web.cert_warning))),
            "token" => Some(MeshAttention::TokenExpiresBefore(ms(web.token_warning))),
            _ => {
                e.add("attention", "must be proxy, cert or token");
                None
            }
        };
        let expires_within_days = match self.expires.as_str() {
            "" => None,
            d => match d.parse::<i64>() {
                Ok(d) if (0..=3650).contains(&d) => Some(d),
                _ => {
                    e.add("expires", "must be a number of days, 0-3650");
                    None
                }
            },
        };
        ConsoleFilter {
            mesh: self.mesh(e),
            attention,
            contract: ContractFilter {
                expires_within_days,
                ..ContractFilter::default()
            },
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
            ("attention", &self.attention),
            ("expires", &self.expires),
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

pub(super) fn select(
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

pub(super) async fn choices(web: &Web) -> WebResult<(Vec<Purpose>, Vec<Provider>)> {
    let purposes = web.store.list_purposes(1000, 0).await?.items;
    let providers = web.store.list_providers(1000, 0).await?.items;
    Ok((purposes, providers))
}

pub(super) fn purpose_options(p: &[Purpose]) -> Vec<(String, String)> {
    p.iter()
        .map(|p| (p.name.clone(), format!("{} ({})", p.name, p.display_name)))
        .collect()
}

pub(super) fn provider_options(p: &[Provider]) -> Vec<(String, String)> {
    p.iter().map(|p| (p.name.clone(), p.name.clone())).collect()
}

fn attention_options() -> Vec<(String, String)> {
    [
        ("proxy", "proxy not ready"),
        ("cert", "certificate expiring"),
        ("token", "token expiring"),
    ]
    .into_iter()
    .map(|(v, l)| (v.to_string(), l.to_string()))
    .collect()
}

/// Contract expiry presets; any 0-3650 typed into the URL works too.
fn expires_options(current: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("0", "expired (or today)"),
        ("7", "within 7 days"),
        ("30", "within 30 days"),
        ("90", "within 90 days"),
    ]
    .into_iter()
    .map(|(v, l)| (v.to_string(), l.to_string()))
    .collect();
    if !current.is_empty() && !v.iter().any(|(x, _)| x == current) {
        v.push((current.to_string(), format!("within {current} days")));
    }
    v
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

pub(super) fn status_options() -> Vec<(String, String)> {
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
    let console = f.console(&web.settings, &mut errors);
    let q = f.query(&mut errors);
    let (purposes, providers) = choices(&web).await?;
    let result = match &q {
        Some(q) if errors.is_empty() => Some(
            web.store
                .list_vps_console(q, &console, f.sort, f.desc)
                .await?,
        ),
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
            div.field { (select("attention", "Needs attention", &f.attention, Some("any"), &attention_options())) (field_error(&errors, "attention")) }
            div.field { (select("expires", "Contract expires", &f.expires, Some("any"), &expires_options(&f.expires))) (field_error(&errors, "expires")) }
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
                                    td.mono { @if let Some(d) = v.contract.expires_on { (d.to_string()) } }
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

        let (f, mut e) = Filters::parse(Some("attention=cert&expires=30&page=2"));
        let c = f.console(&crate::WebSettings::default(), &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert!(matches!(
            c.attention,
            Some(MeshAttention::CertExpiresBefore(_))
        ));
        assert_eq!(c.contract.expires_within_days, Some(30));
        let next = f.link(3);
        assert!(
            next.contains("attention=cert") && next.contains("expires=30"),
            "{next}"
        );
        let (f, mut e) = Filters::parse(Some("attention=all&expires=-1"));
        f.console(&crate::WebSettings::default(), &mut e);
        assert!(
            e.0.contains_key("attention") && e.0.contains_key("expires"),
            "{e:?}"
        );

        let (f, mut e) = Filters::parse(Some("mesh=sideways&sort=ip&dir=up"));
        assert_eq!(f.mesh(&mut e), None);
        assert!(
            e.0.contains_key("mesh") && e.0.contains_key("sort") && e.0.contains_key("dir"),
            "{e:?}"
        );
    }
}

//! Turning what operators type (hostnames, names, prefixes) into the ids the API takes.

use serde_json::Value;
use sigma_types::{ApiKey, EnrollmentToken, EnvoyRoute, List, Vps};
use uuid::Uuid;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::output;

/// Which VPS a hostname may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Among {
    /// VPS that are not deleted (hostnames are unique among them).
    Live,
    /// Deleted VPS (several may share a hostname).
    Deleted,
}

async fn by_hostname(c: &Client, hostname: &str, among: Among) -> Result<Vec<Vps>> {
    let mut q = vec![("hostname", hostname.to_string())];
    if among == Among::Deleted {
        q.push(("status", "deleted".to_string()));
    }
    let l: List<Vps> = c.get(&["api", "vps"], &q).await?.parse()?;
    Ok(l.items)
}

fn describe_deleted(v: &[Vps]) -> String {
    v.iter()
        .map(|v| {
            format!(
                "  {}  deleted {}",
                v.id,
                v.deleted_at.map(output::time).unwrap_or_else(|| "-".into())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The id of a VPS named by id or hostname (`GET /api/vps?hostname=`).
///
/// A hostname may itself read as a UUID (some providers name hosts by one): such an argument
/// is first looked up as a hostname, and taken as an id only when no VPS has that hostname,
/// so every VPS can be named by its hostname.
pub async fn vps(c: &Client, arg: &str, among: Among) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(arg) {
        if sigma_types::validate::hostname(arg).is_ok()
            && let [v] = by_hostname(c, arg, among).await?.as_slice()
        {
            return Ok(v.id);
        }
        return Ok(id);
    }
    let found = by_hostname(c, arg, among).await?;
    match (found.as_slice(), among) {
        ([v], _) => Ok(v.id),
        ([], Among::Live) => {
            let deleted = by_hostname(c, arg, Among::Deleted).await?;
            if deleted.is_empty() {
                Err(Error::NotFound(format!("no VPS has hostname {arg:?}")))
            } else {
                Err(Error::NotFound(format!(
                    "no VPS has hostname {arg:?}; deleted ones had it (`sigmactl vps restore ID` brings one back):\n{}",
                    describe_deleted(&deleted)
                )))
            }
        }
        ([], Among::Deleted) => Err(Error::NotFound(format!(
            "no deleted VPS has hostname {arg:?}"
        ))),
        (many, _) => Err(Error::Ambiguous(format!(
            "{} deleted VPS had hostname {arg:?}; name one by id:\n{}",
            many.len(),
            describe_deleted(many)
        ))),
    }
}

/// The id of a route: a route id, or a VPS and the route's name on it.
pub async fn route(c: &Client, target: &str, name: Option<&str>) -> Result<(Uuid, String)> {
    let Some(name) = name else {
        return Uuid::parse_str(target)
            .map(|id| (id, target.to_string()))
            .map_err(|_| {
                Error::Usage(format!(
                    "{target:?} is not a route id; name a route as ROUTE-ID, or as VPS NAME"
                ))
            });
    };
    let vps_id = vps(c, target, Among::Live).await?;
    let routes: Vec<EnvoyRoute> = c
        .get(&["api", "vps", &vps_id.to_string(), "envoy-routes"], &[])
        .await?
        .parse()?;
    routes
        .iter()
        .find(|r| r.name == name)
        .map(|r| (r.id, format!("{name} on {target}")))
        .ok_or_else(|| {
            let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
            Error::NotFound(format!(
                "{target} has no route named {name:?} (its routes: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
}

/// Something listed with an id and a prefix (API keys, enrollment tokens).
pub trait Prefixed {
    /// Its id.
    fn id(&self) -> Uuid;
    /// Its prefix.
    fn prefix(&self) -> &str;
}

impl Prefixed for ApiKey {
    fn id(&self) -> Uuid {
        self.id
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Prefixed for EnrollmentToken {
    fn id(&self) -> Uuid {
        self.id
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The id of a key or token named by id or prefix (searched in every page of `path`).
pub async fn by_prefix<T: Prefixed + serde::de::DeserializeOwned>(
    c: &Client,
    path: &[&str],
    arg: &str,
    what: &str,
) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(arg) {
        return Ok(id);
    }
    let all: List<Value> = c.get_all(path, &[]).await?.parse()?;
    let mut found = Vec::new();
    for v in all.items {
        let item: T = serde_json::from_value(v).map_err(|e| Error::Protocol {
            url: c.url(path, &[]).to_string(),
            status: 200,
            detail: format!("a listed {what} does not match the API: {e}"),
        })?;
        if item.prefix() == arg {
            found.push(item.id());
        }
    }
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(Error::NotFound(format!(
            "no {what} has id or prefix {arg:?}"
        ))),
        _ => Err(Error::Ambiguous(format!(
            "several {what}s have prefix {arg:?}; name one by id"
        ))),
    }
}

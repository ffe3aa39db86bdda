//! A small HTTP client for sigma-api: bearer auth, JSON in and out, errors turned into
//! [`Error`]s a person can act on.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sigma_types::{ErrorBody, List};

use crate::config::{ApiKey, Settings};
use crate::error::{ApiError, Error, Result};

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Page size used when fetching every page of a list.
pub const PAGE_SIZE: i64 = sigma_types::MAX_LIMIT;

/// A client of one sigma-api.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
}

/// A successful answer: its URL (for messages) and its JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The request URL.
    pub url: String,
    /// HTTP status.
    pub status: u16,
    /// The body as sent.
    pub body: Value,
}

impl Answer {
    /// The body as a typed value.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.body.clone()).map_err(|e| Error::Protocol {
            url: self.url.clone(),
            status: self.status,
            detail: format!("the body does not match the API: {e}"),
        })
    }
}

/// A reqwest error with its causes, for people (`connection refused`, `timed out`).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

impl Client {
    /// A client for the settings' URL and key (which must be present).
    pub fn new(settings: &Settings) -> Result<Client> {
        let key = settings.require_key()?.clone();
        let base = Url::parse(&settings.api_url).map_err(|e| {
            Error::Config(format!(
                "the API URL {:?} is invalid: {e}",
                settings.api_url
            ))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("sigmactl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot set up HTTP: {}", error_chain(&e))))?;
        Ok(Client { http, base, key })
    }

    /// sigma-api's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` (each percent-encoded) with `query` pairs.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Sends a request; returns the URL (for messages), the status and the body of a
    /// successful answer, or the error sigma-api gave.
    async fn exchange<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        accept: &str,
    ) -> Result<(String, u16, Vec<u8>)> {
        let url = self.url(segments, query);
        let shown = url.to_string();
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.key.secret())
            .header(reqwest::header::ACCEPT, accept);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| Error::Network {
            url: shown.clone(),
            cause: error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Network {
            url: shown.clone(),
            cause: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(Error::Api(ApiError {
                status: status.as_u16(),
                body: error_body(status, &bytes),
                key_source: self.key.source.clone(),
            }));
        }
        Ok((shown, status.as_u16(), bytes.to_vec()))
    }

    /// Sends a request and returns its answer, or the error sigma-api gave.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Answer> {
        let (shown, status, bytes) = self
            .exchange(method, segments, query, body, "application/json")
            .await?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
                url: shown.clone(),
                status,
                detail: format!("the body is not JSON: {e}"),
            })?
        };
        Ok(Answer {
            url: shown,
            status,
            body,
        })
    }

    /// `GET` of a text document (`application/yaml`, …): the URL and the body as UTF-8.
    pub async fn get_text(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        accept: &str,
    ) -> Result<(String, String)> {
        let (shown, status, bytes) = self
            .exchange::<()>(Method::GET, segments, query, None, accept)
            .await?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Protocol {
            url: shown.clone(),
            status,
            detail: format!("the body is not UTF-8 text: {e}"),
        })?;
        Ok((shown, text))
    }

    /// `POST` of a raw body (`text/csv`, a JSON file as read) whose answer is JSON.
    pub async fn post_bytes(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer> {
        let url = self.url(segments, query);
        let shown = url.to_string();
        let resp = self
            .http
            .post(url)
            .bearer_auth(self.key.secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Network {
                url: shown.clone(),
                cause: error_chain(&e),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Network {
            url: shown.clone(),
            cause: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(Error::Api(ApiError {
                status: status.as_u16(),
                body: error_body(status, &bytes),
                key_source: self.key.source.clone(),
            }));
        }
        let body = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            url: shown.clone(),
            status: status.as_u16(),
            detail: format!("the body is not JSON: {e}"),
        })?;
        Ok(Answer {
            url: shown,
            status: status.as_u16(),
            body,
        })
    }

    /// `GET`.
    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer> {
        self.send::<()>(Method::GET, segments, query, None).await
    }

    /// `POST` with a JSON body.
    pub async fn post<B: Serialize + ?Sized>(&self, segments: &[&str], body: &B) -> Result<Answer> {
        self.send(Method::POST, segments, &[], Some(body)).await
    }

    /// `POST` without a body.
    pub async fn post_empty(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer> {
        self.send::<()>(Method::POST, segments, query, None).await
    }

    /// `PATCH` with a JSON body.
    pub async fn patch<B: Serialize + ?Sized>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<Answer> {
        self.send(Method::PATCH, segments, &[], Some(body)).await
    }

    /// `PUT` with a JSON body.
    pub async fn put<B: Serialize + ?Sized>(&self, segments: &[&str], body: &B) -> Result<Answer> {
        self.send(Method::PUT, segments, &[], Some(body)).await
    }

    /// `DELETE`.
    pub async fn delete(&self, segments: &[&str]) -> Result<Answer> {
        self.send::<()>(Method::DELETE, segments, &[], None).await
    }

    /// Every page of a list endpoint, joined into one `{"items": [...], "total": n}`.
    pub async fn get_all(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer> {
        let mut items: Vec<Value> = Vec::new();
        let mut offset = 0i64;
        loop {
            let mut q = query.to_vec();
            q.push(("limit", PAGE_SIZE.to_string()));
            q.push(("offset", offset.to_string()));
            let a = self.get(segments, &q).await?;
            let page: List<Value> = a.parse()?;
            let n = page.items.len() as i64;
            items.extend(page.items);
            offset += n;
            if n == 0 || offset >= page.total {
                let total = page.total.max(items.len() as i64);
                return Ok(Answer {
                    url: a.url,
                    status: a.status,
                    body: serde_json::json!({"items": items, "total": total}),
                });
            }
        }
    }
}

fn error_body(status: StatusCode, bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        let message = if text.is_empty() || text.len() > 300 {
            status
                .canonical_reason()
                .unwrap_or("no explanation given")
                .to_string()
        } else {
            text.to_string()
        };
        ErrorBody {
            error: format!("http_{}", status.as_u16()),
            message,
            fields: Default::default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        let s = Settings {
            api_url: base.into(),
            api_url_source: "test".into(),
            api_key: Some(ApiKey::new("sgm_test", "test".into()).unwrap()),
            profile: "default".into(),
            config_path: None,
        };
        Client::new(&s).unwrap()
    }

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let c = client("http://127.0.0.1:3000");
        assert_eq!(
            c.url(&["api", "providers", "My Host/1"], &[]).as_str(),
            "http://127.0.0.1:3000/api/providers/My%20Host%2F1"
        );
        let c = client("https://example.net/sigma");
        assert_eq!(
            c.url(&["api", "vps"], &[("hostname", "a b&c".into())])
                .as_str(),
            "https://example.net/sigma/api/vps?hostname=a+b%26c"
        );
    }

    #[test]
    fn non_json_errors_get_a_body() {
        let b = error_body(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(b.message, "<html>oops</html>");
        let b = error_body(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(b.message, "Bad Gateway");
        let b = error_body(
            StatusCode::NOT_FOUND,
            br#"{"error":"not_found","message":"no VPS x","fields":{}}"#,
        );
        assert_eq!(b.error, "not_found");
    }
}

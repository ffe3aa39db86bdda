//! sigma-api client with bounded timeouts and errors the agent can act on.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sigma_types::mesh::IstioBootstrapBundle;
use sigma_types::{
    EnvoyConfig, ErrorBody, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
};

use crate::{Error, Result};

/// A sigma-api client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Client {
    /// A client for `base` (e.g. `https://sigma.example.net`).
    pub fn new(base: &str, timeout: Duration) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "--api-url {base:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .user_agent(concat!("sigma-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            timeout,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // A day at most: a broken header must not park an agent for good.
            .map(|s| Duration::from_secs(s.min(86_400)));
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| Error::Api {
                status: status.as_u16(),
                message: format!("unreadable answer: {e}"),
                retry_after: None,
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| {
                if b.fields.is_empty() {
                    b.message
                } else {
                    format!("{}: {:?}", b.message, b.fields)
                }
            })
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(match status.as_u16() {
            401 => Error::Unauthorized(message),
            403 => Error::Forbidden(message),
            409 => Error::Conflict(message),
            s => Error::Api {
                status: s,
                message,
                retry_after,
            },
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        body: &B,
    ) -> Result<T> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body);
        self.send(req, self.timeout).await
    }

    /// Registers (with an enrollment token on first contact, else with the agent key).
    pub async fn register(&self, secret: &str, req: &RegisterRequest) -> Result<RegisterResponse> {
        self.post("/api/agent/register", secret, req).await
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(&self, key: &str, req: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.post("/api/agent/heartbeat", key, req).await
    }

    /// The VPS's Envoy config; with `known` a long poll that answers when the version
    /// differs or after `wait`.
    pub async fn envoy_config(
        &self,
        key: &str,
        hostname: &str,
        known: Option<i64>,
        wait: Duration,
    ) -> Result<EnvoyConfig> {
        let mut q: Vec<(&str, String)> = vec![("hostname", hostname.to_string())];
        if let Some(k) = known {
            q.push(("known_version", k.to_string()));
            q.push(("wait_seconds", wait.as_secs().clamp(1, 60).to_string()));
        }
        let req = self
            .http
            .get(format!("{}/api/agent/envoy-config", self.base))
            .bearer_auth(key)
            .query(&q);
        let timeout = if known.is_some() {
            self.timeout + wait
        } else {
            self.timeout
        };
        self.send(req, timeout).await
    }
}

impl Client {
    /// The VPS's Istio bootstrap bundle (mesh mode). 409: the VPS is not active or its
    /// purpose is not in the mesh; 503: the cluster cannot provide a piece of it.
    pub async fn istio_bootstrap(&self, key: &str, hostname: &str) -> Result<IstioBootstrapBundle> {
        let req = self
            .http
            .get(format!("{}/api/agent/istio-bootstrap", self.base))
            .bearer_auth(key)
            .query(&[("hostname", hostname)]);
        self.send(req, self.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(Client::new("ftp://x", Duration::from_secs(1)).is_err());
        assert!(Client::new("http://127.0.0.1:3000/", Duration::from_secs(1)).is_ok());
    }
}

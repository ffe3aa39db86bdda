//! One HTTP/1.1 connection to sigma-api, used back to back (keep-alive), like an agent's.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

/// A keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Connects to `addr` (`host:port`).
    pub async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// `GET path` with a bearer key: status and body.
    pub async fn get(&mut self, path: &str, key: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send("GET", path, key, None).await
    }

    /// `POST path` with a bearer key and a JSON body: status and body.
    pub async fn post(
        &mut self,
        path: &str,
        key: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.send("POST", path, key, Some(body)).await
    }

    /// `PATCH path` with a bearer key and a JSON body: status and body.
    pub async fn patch(
        &mut self,
        path: &str,
        key: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.send("PATCH", path, key, Some(body)).await
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {key}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

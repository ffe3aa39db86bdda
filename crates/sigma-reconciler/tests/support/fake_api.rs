//! An in-memory stand-in for the parts of the Kubernetes API server the reconciler uses: list
//! (with pages), server-side apply and delete (with UID preconditions) of namespaced custom
//! resources. Test and benchmark support only; it answers like the API server does for these
//! calls (status codes, `Status` bodies, `continue` tokens), and records every call.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One call as the server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

impl Call {
    /// `GET`, `PATCH`, `DELETE`.
    pub fn verb(&self) -> &str {
        self.method.as_str()
    }
}

#[derive(Debug, Default)]
pub struct FakeState {
    /// (namespace, plural, name) → object.
    pub objects: BTreeMap<(String, String, String), Value>,
    pub calls: Vec<Call>,
    next_uid: u64,
    next_rv: u64,
    /// Requests still to fail with a transport error (the API server unreachable).
    pub fail_next: usize,
}

/// Shared fake server state.
#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<FakeState>>,
    /// Added to every call.
    pub latency: Duration,
}

const PREFIX: &str = "/apis/networking.istio.io/v1/namespaces/";

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "workloadgroups" => "WorkloadGroup",
        "workloadentries" => "WorkloadEntry",
        "serviceentries" => "ServiceEntry",
        "sidecars" => "Sidecar",
        "destinationrules" => "DestinationRule",
        _ => "Unknown",
    }
}

impl FakeApi {
    pub fn new(latency: Duration) -> Self {
        FakeApi {
            state: Arc::default(),
            latency,
        }
    }

    /// A kube client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { me.handle(req).await }
        });
        kube::Client::new(svc, "default")
    }

    /// Puts an object as if another tool (or an earlier sigma) had created it.
    pub fn insert(&self, namespace: &str, plural: &str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.next_uid += 1;
        s.next_rv += 1;
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        obj["metadata"]["uid"] = json!(format!("uid-{}", s.next_uid));
        obj["metadata"]["resourceVersion"] = json!(s.next_rv.to_string());
        obj["metadata"]["namespace"] = json!(namespace);
        s.objects
            .insert((namespace.to_string(), plural.to_string(), name), obj);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// Calls by verb: (GET, PATCH, DELETE).
    pub fn counts(&self) -> (usize, usize, usize) {
        let calls = self.calls();
        let n = |m: &str| calls.iter().filter(|c| c.verb() == m).count();
        (n("GET"), n("PATCH"), n("DELETE"))
    }

    pub fn object(&self, namespace: &str, plural: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(namespace.into(), plural.into(), name.into()))
            .cloned()
    }

    pub fn count(&self, plural: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .objects
            .keys()
            .filter(|(_, p, _)| p == plural)
            .count()
    }

    pub async fn handle(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        let call = Call {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body,
            at: tokio::time::Instant::now(),
        };
        let mut s = self.state.lock().unwrap();
        s.calls.push(call.clone());
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err("connection refused (fake API server down)".into());
        }
        Ok(Self::respond(&mut s, &call))
    }

    fn respond(s: &mut FakeState, call: &Call) -> Response<Body> {
        let Some(rest) = call.path.strip_prefix(PREFIX) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "unknown path");
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match (call.method.clone(), parts.as_slice()) {
            (Method::GET, [ns, plural]) => {
                let limit: usize = query_param(&call.query, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(usize::MAX);
                let start: usize = query_param(&call.query, "continue")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let all: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((n, p, _), _)| n == ns && p == plural)
                    .map(|(_, v)| v.clone())
                    .collect();
                let end = start.saturating_add(limit).min(all.len());
                let items = all[start.min(all.len())..end].to_vec();
                let cont = if end < all.len() {
                    end.to_string()
                } else {
                    String::new()
                };
                ok(&json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": format!("{}List", kind_of(plural)),
                    "metadata": {"resourceVersion": s.next_rv.to_string(), "continue": cont},
                    "items": items,
                }))
            }
            (Method::PATCH, [ns, plural, name]) => {
                if call.content_type != "application/apply-patch+yaml" {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "only server-side apply",
                    );
                }
                if query_param(&call.query, "fieldManager").is_none() {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "fieldManager is required for apply",
                    );
                }
                let key = (ns.to_string(), plural.to_string(), name.to_string());
                s.next_rv += 1;
                let rv = s.next_rv;
                let uid = match s.objects.get(&key) {
                    Some(old) => old["metadata"]["uid"].clone(),
                    None => {
                        s.next_uid += 1;
                        json!(format!("uid-{}", s.next_uid))
                    }
                };
                let mut obj = call.body.clone();
                obj["metadata"]["uid"] = uid;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                obj["metadata"]["generation"] = json!(1);
                obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                obj["metadata"]["managedFields"] = json!([{"manager": query_param(&call.query, "fieldManager"),
                    "operation": "Apply", "apiVersion": "networking.istio.io/v1"}]);
                // What Istio's controllers add; sigma must ignore it.
                obj["status"] = json!({"conditions": [{"type": "Reconciled", "status": "True"}]});
                s.objects.insert(key, obj.clone());
                ok(&obj)
            }
            (Method::DELETE, [ns, plural, name]) => {
                let key = (ns.to_string(), plural.to_string(), name.to_string());
                let Some(old) = s.objects.get(&key) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                if let Some(uid) = call.body["preconditions"]["uid"].as_str()
                    && old["metadata"]["uid"].as_str() != Some(uid)
                {
                    return status(StatusCode::CONFLICT, "Conflict", "UID precondition failed");
                }
                s.objects.remove(&key);
                ok(
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                )
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }

    /// Answers one request of a `tower_test` mock handle the way [`FakeApi::handle`] would.
    pub async fn answer(
        &self,
        req: Request<Body>,
        send: tower_test::mock::SendResponse<Response<Body>>,
    ) {
        match self.handle(req).await {
            Ok(r) => send.send_response(r),
            Err(e) => send.send_error(e),
        }
    }
}

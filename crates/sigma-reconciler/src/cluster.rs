//! The reconciler's calls to the Kubernetes API server: list, server-side apply and delete of
//! the five Istio kinds in the mesh namespace, each call rate-limited and bounded in time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use sigma_mesh::objects::{MANAGED_BY, MANAGED_BY_LABEL};
use sigma_mesh::{Kind, MeshObject, ObjectKey};

use crate::limiter::RateLimiter;
use crate::metrics::{CallCounters, Verb, VerbLabels};
use crate::{Error, Result};

/// The field manager of every server-side apply sigma makes.
pub const FIELD_MANAGER: &str = "sigma-api";

/// API group of the Istio networking kinds.
const GROUP: &str = "networking.istio.io";
/// Served version sigma writes.
const VERSION: &str = "v1";

/// How the reconciler talks to the API server.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Namespace of sigma's Istio objects (the mesh template's namespace).
    pub namespace: String,
    /// Average calls per second allowed.
    pub qps: f64,
    /// Calls allowed at once above the average.
    pub burst: u32,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// Objects per list page. 5,000 rather than client-go's usual 500: every page is a call the
    /// API server serves from its watch cache at a cost that grows with how far into the list
    /// it starts (its `apiserver_cache_list_fetched_objects_total`), and a full pass must stay
    /// within the default burst. A resync of 100,000 VPS (200,000 objects) made 403 list calls
    /// in 53 s with pages of 500 and 43 calls in 26-45 s with pages of 5,000 (`cargo bench -p
    /// sigma-e2e --bench mesh_scale`). A page of 5,000 is about 10 MB of JSON.
    pub page_size: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            namespace: "sigma".into(),
            qps: 50.0,
            burst: 100,
            timeout: Duration::from_secs(30),
            page_size: 5000,
        }
    }
}

/// Calls made, by verb (for metrics, logs and the benchmark).
pub type CallCounts = CallCounters<VerbLabels>;

/// What the cluster holds of the five kinds in the mesh namespace.
#[derive(Debug, Default)]
pub struct Actual {
    /// Every object that decodes, sigma's and others'.
    pub objects: Vec<MeshObject>,
    /// UID of every listed object, for delete preconditions.
    pub uids: HashMap<ObjectKey, String>,
    /// sigma's objects that do not decode (edited into a shape sigma does not model): they are
    /// re-applied when desired and deleted otherwise.
    pub undecodable_managed: Vec<ObjectKey>,
    /// Other tools' objects that do not decode: a desired object of the same key is a conflict.
    pub undecodable_foreign: HashSet<ObjectKey>,
    /// VPS id label of each listed WorkloadEntry and WorkloadGroup, to report a failed delete
    /// on its VPS.
    pub entry_owner: HashMap<ObjectKey, String>,
}

impl Actual {
    /// Forgets what it holds of `keys` (objects sigma wrote or re-read, recorded again after).
    pub fn forget(&mut self, keys: &HashSet<ObjectKey>) {
        if keys.is_empty() {
            return;
        }
        // Borrowed (kind, name) pairs: no key is built per held object.
        let names: HashSet<(Kind, &str, &str)> = keys
            .iter()
            .map(|k| (k.kind, k.namespace.as_str(), k.name.as_str()))
            .collect();
        self.objects.retain(|o| !names.contains(&o.sort_key()));
        for k in keys {
            self.uids.remove(k);
            self.entry_owner.remove(k);
            self.undecodable_foreign.remove(k);
        }
        self.undecodable_managed.retain(|k| !keys.contains(k));
    }

    /// Records an object sigma applied: the cluster holds it as desired (on every field sigma
    /// compares), under the UID the API server answered with.
    pub fn applied(&mut self, obj: MeshObject, uid: Option<String>) {
        let key = obj.key();
        if let Some(uid) = uid {
            self.uids.insert(key.clone(), uid);
        }
        if matches!(key.kind, Kind::WorkloadEntry | Kind::WorkloadGroup)
            && let Some(id) = obj.metadata().labels.get(sigma_mesh::objects::VPS_ID_LABEL)
        {
            self.entry_owner.insert(key, id.clone());
        }
        self.objects.push(obj);
    }
}

/// The API server, as the reconciler uses it.
pub struct Cluster {
    client: kube::Client,
    settings: ClusterSettings,
    limiter: RateLimiter,
    /// Calls made so far.
    pub calls: CallCounts,
}

fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Cluster {
    /// Wraps a client (a real one, or one over a test service).
    pub fn new(client: kube::Client, settings: ClusterSettings) -> Self {
        let limiter = RateLimiter::new(settings.qps, settings.burst);
        Cluster {
            client,
            settings,
            limiter,
            calls: CallCounts::default(),
        }
    }

    /// The namespace reconciled.
    pub fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.settings.namespace,
            &api_resource(kind),
        )
    }

    async fn call<T>(
        &self,
        verb: Verb,
        f: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        self.limiter.acquire().await;
        timed_call(self.settings.timeout, &self.calls, VerbLabels { verb }, f).await
    }

    /// Registers the call counters into `registry` (sigma-api: its `mesh` sub-registry).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.calls.register(
            registry,
            "of the mesh reconciler by verb (list, apply, delete)",
            Verb::ALL.map(|verb| VerbLabels { verb }),
        );
    }

    /// How many calls [`Cluster::list`] takes for a namespace holding `objects` objects.
    pub fn list_calls(&self, objects: usize) -> usize {
        objects / self.settings.page_size.max(1) as usize + Kind::ALL.len()
    }

    /// Lists every object of the five kinds in the namespace, page by page.
    ///
    /// Every object is listed, not only those with sigma's managed-by label: the diff must see
    /// another tool's object that holds a name sigma wants, so as to leave it alone instead of
    /// taking it over with a server-side apply. The namespace is sigma's own, so the extra
    /// objects are few.
    pub async fn list(&self) -> Result<Actual> {
        let mut actual = Actual::default();
        for kind in Kind::ALL {
            let api = self.api(kind);
            let mut token: Option<String> = None;
            loop {
                let mut lp = ListParams::default().limit(self.settings.page_size);
                if let Some(t) = token.take() {
                    lp = lp.continue_token(&t);
                }
                let page = self
                    .call(Verb::List, api.list(&lp))
                    .await?
                    .map_err(|e| Error::kube(format!("listing {}", kind.plural()), e))?;
                for obj in page.items {
                    self.take_listed(kind, obj, &mut actual);
                }
                match page.metadata.continue_ {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(actual)
    }

    /// The object of a kind and name in the namespace, through a list filtered to the name.
    ///
    /// Read with a list rather than a get: sigma's Role grants `list` on the Istio kinds and
    /// never `get` (k8s/base/rbac.yaml), and a list with a field selector costs the API server
    /// no more than a get. Counted and rate-limited as a list.
    pub async fn list_one(&self, kind: Kind, name: &str) -> Result<Option<DynamicObject>> {
        let api = self.api(kind);
        let lp = ListParams::default().fields(&format!("metadata.name={name}"));
        let page = self
            .call(Verb::List, api.list(&lp))
            .await?
            .map_err(|e| Error::kube(format!("reading {} {name}", kind.as_str()), e))?;
        // The selector is exact; the name check guards against a server that ignores it.
        Ok(page
            .items
            .into_iter()
            .find(|o| o.metadata.name.as_deref() == Some(name)))
    }

    /// Adds a listed object to `actual`.
    pub fn take_listed(&self, kind: Kind, obj: DynamicObject, actual: &mut Actual) {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey {
            kind,
            namespace: obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| self.settings.namespace.clone()),
            name: name.clone(),
        };
        let labels = obj.metadata.labels.clone().unwrap_or_default();
        let managed = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
        if let Some(uid) = &obj.metadata.uid {
            actual.uids.insert(key.clone(), uid.clone());
        }
        if matches!(kind, Kind::WorkloadEntry | Kind::WorkloadGroup)
            && let Some(id) = labels.get(sigma_mesh::objects::VPS_ID_LABEL)
        {
            actual.entry_owner.insert(key.clone(), id.clone());
        }
        let mut value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(_) => serde_json::Value::Null,
        };
        // A list's items carry no apiVersion/kind of their own on some servers.
        if let Some(m) = value.as_object_mut() {
            m.entry("apiVersion")
                .or_insert_with(|| format!("{GROUP}/{VERSION}").into());
            m.entry("kind").or_insert_with(|| kind.as_str().into());
        }
        match MeshObject::from_json(value) {
            Ok(o) => actual.objects.push(o),
            Err(e) if managed => {
                tracing::warn!(object = %key, error = %e, "sigma's object does not decode; it will be replaced");
                actual.undecodable_managed.push(key);
            }
            Err(_) => {
                actual.undecodable_foreign.insert(key);
            }
        }
    }

    /// One WorkloadEntry of the namespace as the cluster holds it (metadata, spec and the
    /// status istiod keeps), or `None` when there is none of that name.
    ///
    /// Read with a list filtered to the name (see [`Cluster::list_one`]), counted and
    /// rate-limited as a list, so a burst of diagnostic reads cannot take more than the
    /// reconciler's budget.
    pub async fn workload_entry(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let Some(obj) = self.list_one(Kind::WorkloadEntry, name).await? else {
            return Ok(None);
        };
        let mut value = serde_json::to_value(&obj).map_err(|e| Error::Encoding {
            what: format!("WorkloadEntry {name}"),
            reason: e.to_string(),
        })?;
        if let Some(m) = value.as_object_mut() {
            m.entry("apiVersion")
                .or_insert_with(|| format!("{GROUP}/{VERSION}").into());
            m.entry("kind")
                .or_insert_with(|| Kind::WorkloadEntry.as_str().into());
        }
        Ok(Some(value))
    }

    /// Server-side applies one object with field manager [`FIELD_MANAGER`], forcing
    /// conflicts.
    ///
    /// Forcing is deliberate: only objects sigma manages reach this call (a name held by
    /// another tool's object is reported as a conflict before, and never applied), and the
    /// database is their source of truth. Without force a field someone changed by hand
    /// (`kubectl edit` takes over the field) would fail every later apply with a conflict and the
    /// object would never converge; Kubernetes recommends that controllers force for the
    /// objects they own.
    ///
    /// Returns the UID of the object the API server answered with.
    pub async fn apply(&self, obj: &MeshObject) -> Result<Option<String>> {
        let api = self.api(obj.kind());
        let body = serde_json::to_value(obj).map_err(|e| Error::Encoding {
            what: format!("{} {}", obj.kind().as_str(), obj.name()),
            reason: e.to_string(),
        })?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let answer = self
            .call(
                Verb::Apply,
                api.patch(obj.name(), &pp, &Patch::Apply(&body)),
            )
            .await?
            .map_err(|e| {
                Error::kube(
                    format!("applying {} {}", obj.kind().as_str(), obj.name()),
                    e,
                )
            })?;
        Ok(answer.metadata.uid)
    }

    /// Deletes one object, only if it is still the one listed (same UID). Already gone counts
    /// as done.
    pub async fn delete(&self, key: &ObjectKey, uid: Option<&str>) -> Result<()> {
        let api = self.api(key.kind);
        let mut dp = DeleteParams::default();
        if let Some(uid) = uid {
            dp.preconditions = Some(kube::api::Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        match self.call(Verb::Delete, api.delete(&key.name, &dp)).await? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(
                format!("deleting {} {}", key.kind.as_str(), key.name),
                e,
            )),
        }
    }
}

/// One Kubernetes API call, counted in `counters` under `labels`, and as failed when it
/// fails or outlasts `timeout`. The outer error is the timeout; the inner result is the API
/// server's answer.
pub(crate) async fn timed_call<L, T>(
    timeout: Duration,
    counters: &CallCounters<L>,
    labels: L,
    f: impl Future<Output = kube::Result<T>>,
) -> Result<kube::Result<T>>
where
    L: Clone
        + std::hash::Hash
        + Eq
        + prometheus_client::encoding::EncodeLabelSet
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    counters.started(&labels);
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => {
            if r.is_err() {
                counters.failed(&labels);
            }
            Ok(r)
        }
        Err(_) => {
            counters.failed(&labels);
            Err(Error::Timeout(timeout))
        }
    }
}

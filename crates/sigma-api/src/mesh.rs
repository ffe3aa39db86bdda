//! The mesh runtime of one replica: what the `--mesh` mode starts, as the handlers use it.
//!
//! The mode and what it runs are one value ([`MeshRuntime`]), so a replica in kubernetes mode
//! always has its cluster client, reconciler counters and bundle issuer, and the others have
//! none: handlers ask this module (is there a bundle issuer? what does a VPS's diagnosis say?)
//! instead of matching options that could disagree.

use std::sync::Arc;

use axum::http::StatusCode;
use prometheus_client::registry::Registry;
use sigma_mesh::MeshTemplate;
use sigma_reconciler::{BundleIssuer, Cluster};
use sigma_store::Store;
use sigma_types::mesh::VpsMeshReport;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{self, Config, EnvoyMetricsVia, MeshMode};
use crate::error::{ApiError, ApiResult};

/// The mesh as the handlers see it: the template every object is generated from (in every
/// mode: `off` and `export` still serve manifests and diagnosis), where Prometheus scrapes
/// Envoy, and what the mode runs.
pub struct MeshState {
    /// The template every object is generated from.
    pub template: MeshTemplate,
    /// Where Prometheus scrapes Envoy on mesh VPS.
    pub envoy_metrics: EnvoyMetricsVia,
    /// What this replica runs for the mesh.
    pub runtime: MeshRuntime,
}

/// What a mesh mode runs.
pub enum MeshRuntime {
    /// `--mesh off`: nothing.
    Off,
    /// `--mesh export`: nothing either; manifests are served for GitOps.
    Export,
    /// `--mesh kubernetes`: the reconciler and bundle issuance against the cluster.
    Kubernetes(KubernetesMesh),
}

/// What kubernetes mode runs.
pub struct KubernetesMesh {
    /// The reconciler's API server access (its calls, and diagnostic reads).
    pub cluster: Arc<Cluster>,
    /// The reconciler's counters.
    pub reconciler: sigma_reconciler::Stats,
    /// Istio bootstrap bundle issuance.
    pub bundles: Arc<BundleIssuer>,
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState {
            template: MeshTemplate::default(),
            envoy_metrics: EnvoyMetricsVia::Direct,
            runtime: MeshRuntime::Off,
        }
    }
}

impl MeshState {
    /// The mode this replica runs in.
    pub fn mode(&self) -> MeshMode {
        match self.runtime {
            MeshRuntime::Off => MeshMode::Off,
            MeshRuntime::Export => MeshMode::Export,
            MeshRuntime::Kubernetes(_) => MeshMode::Kubernetes,
        }
    }

    /// Registers what the runtime counts: the reconciler's passes and calls under `mesh_`, the
    /// bundle issuer's calls under `bootstrap_`. Nothing in `off` and `export` modes.
    pub fn register_metrics(&self, registry: &mut Registry) {
        if let MeshRuntime::Kubernetes(k) = &self.runtime {
            let mesh = registry.sub_registry_with_prefix("mesh");
            k.reconciler.register(mesh);
            k.cluster.register(mesh);
            k.bundles
                .register(registry.sub_registry_with_prefix("bootstrap"));
        }
    }

    /// The bundle issuer; a 409 naming the mode outside kubernetes mode.
    pub fn bundles(&self) -> ApiResult<&BundleIssuer> {
        match &self.runtime {
            MeshRuntime::Kubernetes(k) => Ok(&k.bundles),
            MeshRuntime::Off | MeshRuntime::Export => Err(ApiError::new(
                StatusCode::CONFLICT,
                "mesh_mode",
                format!(
                    "sigma-api runs with --mesh {}; Istio bootstrap bundles are built from the cluster and need --mesh kubernetes",
                    self.mode().as_str()
                ),
            )),
        }
    }

    /// One VPS's place in the mesh ([`sigma_reconciler::inspect::diagnose`]); in kubernetes
    /// mode with the entry the cluster holds.
    pub async fn diagnose(&self, store: &Store, id: Uuid) -> ApiResult<VpsMeshReport> {
        let subject = store.mesh_subject(id).await?;
        let cluster = match &self.runtime {
            MeshRuntime::Kubernetes(k) => Some(k.cluster.as_ref()),
            MeshRuntime::Off | MeshRuntime::Export => None,
        };
        sigma_reconciler::inspect::diagnose(&self.template, &subject, self.mode().as_str(), cluster)
            .await
            .map_err(|e| ApiError::internal(&e))
    }

    /// Starts kubernetes mode: the bundle issuer, the reconciler and, unless disabled, the
    /// leader election that decides whether this replica runs it. Both tasks stop on
    /// `shutdown`.
    pub fn start_kubernetes(
        cfg: &Config,
        store: &Store,
        client: kube::Client,
        template: MeshTemplate,
        bundle_settings: sigma_reconciler::BundleSettings,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> MeshState {
        use tracing::Instrument;
        tracing::info!(
            istiod = %bundle_settings.control_plane.istiod_address(),
            mesh_config = %bundle_settings.control_plane.mesh_config_map(),
            eastwest = ?bundle_settings.eastwest_address,
            token_ttl = ?bundle_settings.token_ttl,
            "Istio bootstrap bundles"
        );
        let bundles = Arc::new(BundleIssuer::new(client.clone(), bundle_settings));
        let cluster = Arc::new(Cluster::new(
            client.clone(),
            sigma_reconciler::ClusterSettings {
                namespace: template.namespace.clone(),
                qps: f64::from(cfg.mesh_api_qps),
                burst: cfg.mesh_api_burst,
                timeout: cfg.kube_timeout,
                ..sigma_reconciler::ClusterSettings::default()
            },
        ));
        let leadership = match cfg.mesh_leader_election {
            config::LeaderElection::Lease => sigma_reconciler::Leadership::Lease {
                client,
                settings: sigma_reconciler::LeaseSettings::new(
                    &cfg.mesh_lease_name,
                    &template.namespace,
                ),
            },
            config::LeaderElection::None => sigma_reconciler::Leadership::Always,
        };
        let (leader, hold) = leadership.start(shutdown.clone());
        if let Some(hold) = hold {
            tracker.spawn(hold.instrument(tracing::info_span!("mesh_leader_election")));
        }
        let reconciler = sigma_reconciler::Reconciler::new(
            store.clone(),
            cluster.clone(),
            sigma_reconciler::ReconcilerSettings {
                template: template.clone(),
                resync: cfg.mesh_resync_interval,
                ..sigma_reconciler::ReconcilerSettings::default()
            },
        );
        let stats = reconciler.stats.clone();
        tracker.spawn(
            reconciler
                .run(leader, shutdown.clone())
                .instrument(tracing::info_span!("mesh_reconciler")),
        );
        MeshState {
            template,
            envoy_metrics: cfg.prometheus_envoy_metrics,
            runtime: MeshRuntime::Kubernetes(KubernetesMesh {
                cluster,
                reconciler: stats,
                bundles,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::http::{Request, Response};
    use kube::client::Body;

    /// A client whose every call fails as an unreachable API server would.
    fn unreachable_client() -> kube::Client {
        kube::Client::new(
            tower::service_fn(|_: Request<Body>| async {
                Err::<Response<Body>, _>(std::io::Error::other("no API server in this test"))
            }),
            "default",
        )
    }

    fn kubernetes() -> MeshState {
        let client = unreachable_client();
        MeshState {
            template: MeshTemplate::default(),
            envoy_metrics: EnvoyMetricsVia::Direct,
            runtime: MeshRuntime::Kubernetes(KubernetesMesh {
                cluster: Arc::new(Cluster::new(client.clone(), Default::default())),
                reconciler: sigma_reconciler::Stats::default(),
                bundles: Arc::new(BundleIssuer::new(client, Default::default())),
            }),
        }
    }

    /// Kubernetes mode's metrics after one (failed) API server call of the reconciler's
    /// cluster client and one of the bundle issuer.
    async fn kubernetes_metrics() -> Metrics {
        let mesh = kubernetes();
        let mut metrics = Metrics::default();
        mesh.register_metrics(metrics.registry_mut());
        let MeshRuntime::Kubernetes(k) = &mesh.runtime else {
            unreachable!()
        };
        k.cluster.list().await.unwrap_err();
        k.bundles.token("sigma-vm").await.unwrap_err();
        metrics
    }

    #[tokio::test]
    async fn subsystems_register_their_counters_as_counters() {
        let text = kubernetes_metrics().await.encode();
        for want in [
            "# TYPE sigma_api_mesh_passes counter\n",
            "sigma_api_mesh_passes_total{result=\"failed\"} 0\n",
            "# TYPE sigma_api_mesh_pass_failures counter\n",
            "# TYPE sigma_api_mesh_kube_calls counter\n",
            "sigma_api_mesh_kube_calls_total{verb=\"list\"} 1\n",
            "sigma_api_mesh_kube_call_failures_total{verb=\"list\"} 1\n",
            "# TYPE sigma_api_mesh_leader gauge\n",
            "# TYPE sigma_api_bootstrap_kube_calls counter\n",
            "sigma_api_bootstrap_kube_calls_total{call=\"token_request\"} 1\n",
            "sigma_api_bootstrap_kube_call_failures_total{call=\"token_request\"} 1\n",
            "sigma_api_bootstrap_kube_calls_total{call=\"service\"} 0\n",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    /// Every family sigma-api can export (kubernetes mode registers the most) is in
    /// `metrics.txt`, which docs/check reads: the real names, sub-registry prefixes included.
    #[tokio::test]
    async fn every_metric_is_in_metrics_txt() {
        // A family is encoded once it has a sample: one each.
        let mut metrics = kubernetes_metrics().await;
        let labels = crate::metrics::RequestLabels {
            method: "GET".into(),
            route: "/api/vps".into(),
            status: 200,
        };
        metrics.requests.get_or_create(&labels).observe(0.001);
        let ok = crate::metrics::ResultLabels { result: "ok" };
        for f in [
            &metrics.heartbeats,
            &metrics.registrations,
            &metrics.bootstrap_issued,
        ] {
            f.get_or_create(&ok).inc();
        }
        metrics.bootstrap_duration.get_or_create(&ok).observe(0.001);
        metrics.inventory.sample_for_test();
        let debug = format!("{:?}", metrics.registry_mut());
        sigma_testkit::metrics::assert_listed(
            &[(metrics.encode(), debug)],
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics.txt"),
            "The metric families sigma-api exports (--mesh kubernetes registers them all), as `name type`.\n\
             Kept in step by `cargo test -p sigma-api --lib every_metric_is_in_metrics_txt`\n\
             (SIGMA_UPDATE_METRICS=1 rewrites it); docs/check checks the docs against it.",
        );
    }

    #[test]
    fn off_and_export_run_nothing_and_refuse_bundles() {
        for (runtime, mode) in [(MeshRuntime::Off, "off"), (MeshRuntime::Export, "export")] {
            let mesh = MeshState {
                runtime,
                ..MeshState::default()
            };
            assert_eq!(mesh.mode().as_str(), mode);
            let e = mesh.bundles().err().unwrap();
            assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "mesh_mode"));
            assert!(
                e.message.contains(&format!("--mesh {mode};")),
                "{}",
                e.message
            );
            let mut metrics = Metrics::default();
            mesh.register_metrics(metrics.registry_mut());
            assert!(!metrics.encode().contains("sigma_api_mesh_passes"));
        }
    }
}

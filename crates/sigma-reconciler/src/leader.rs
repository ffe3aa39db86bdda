//! Which replica reconciles: a Kubernetes Lease held by one replica at a time.

use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Settings of the Lease.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease (the mesh namespace, where sigma-api may already write).
    pub namespace: String,
    /// This replica's identity (unique among replicas).
    pub identity: String,
    /// How long a lock is valid after its last renewal: a replica that dies is replaced after
    /// at most this long.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews.
    pub grace_seconds: u64,
}

impl LeaseSettings {
    /// Lease `name` in `namespace`, an identity made of the host name and a random suffix,
    /// held 10 s and renewed 3 s before it expires.
    pub fn new(name: &str, namespace: &str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sigma-api".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        LeaseSettings {
            name: name.into(),
            namespace: namespace.into(),
            identity: format!("{host}-{}", &suffix[..8]),
            duration_seconds: 10,
            grace_seconds: 3,
        }
    }
}

/// How a replica learns whether it leads.
pub enum Leadership {
    /// Always leading: a single replica (the only safe choice without a Lease).
    Always,
    /// Leading while holding a Kubernetes Lease.
    Lease {
        /// The client.
        client: kube::Client,
        /// The Lease.
        settings: LeaseSettings,
    },
}

impl Leadership {
    /// Starts following leadership; the receiver is `true` while this replica leads. For a
    /// Lease, the returned future must be spawned: it holds and renews the Lease until
    /// `shutdown`, then releases it so another replica takes over at once.
    pub fn start(
        self,
        shutdown: CancellationToken,
    ) -> (
        watch::Receiver<bool>,
        Option<impl Future<Output = ()> + Send + 'static>,
    ) {
        match self {
            Leadership::Always => {
                let (tx, rx) = watch::channel(true);
                // The sender must outlive the reconciler: a closed channel means "stop".
                let keep = async move {
                    shutdown.cancelled().await;
                    drop(tx);
                };
                (rx, Some(futures_util::future::Either::Left(keep)))
            }
            Leadership::Lease { client, settings } => {
                let (tx, rx) = watch::channel(false);
                let fut = hold_lease(client, settings, tx, shutdown);
                (rx, Some(futures_util::future::Either::Right(fut)))
            }
        }
    }
}

async fn build(
    client: &kube::Client,
    s: &LeaseSettings,
) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration_seconds)
        .with_grace(s.grace_seconds)
        .with_field_manager(format!("sigma-api-lease-{}", s.identity))
        .build()
        .await
}

/// Holds the Lease while it can. Any error of the Lease API makes this replica step down at
/// once (it cannot prove it still holds the lock), and the manager is rebuilt from the Lease as
/// stored, so a replica that still holds it after a blip leads again right away.
async fn hold_lease(
    client: kube::Client,
    s: LeaseSettings,
    tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    let max = Duration::from_secs(s.duration_seconds.max(2) / 2);
    loop {
        let manager = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = build(&client, &s) => m,
        };
        match manager {
            Ok(manager) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tx.send_replace(false);
                        if let Err(e) = manager.release().await {
                            tracing::warn!(error = %e, "releasing the mesh lease failed");
                        }
                        return;
                    }
                    r = manager.changed() => match r {
                        Ok(leading) => {
                            delay = Duration::from_millis(500);
                            tracing::info!(lease = %s.name, identity = %s.identity, leading, "mesh lease changed");
                            tx.send_replace(leading);
                        }
                        Err(e) => {
                            tx.send_replace(false);
                            tracing::warn!(error = %e, "mesh lease: Kubernetes API error; stepping down");
                            break;
                        }
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mesh lease unavailable");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max);
    }
}

//! A real Prometheus (Debian package) configured with `http_sd_configs` against sigma-api.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Proc;

/// A running Prometheus on loopback.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The process.
    pub proc: Proc,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus discovering targets from `sd_url` (sigma-api's
    /// `/api/prometheus/targets`) with the bearer key `key`, refreshing discovery every second
    /// and scraping every second so a test sees changes quickly.
    pub async fn start(dir: &Path, sd_url: &str, key: &str) -> Prometheus {
        let port = sigma_testkit::free_port();
        let key_file = dir.join("prometheus-sd.key");
        std::fs::write(&key_file, key).expect("write key");
        let config = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 900ms",
            "  evaluation_interval: 1s",
            "scrape_configs:",
            "- job_name: sigma",
            "  http_sd_configs:",
            &format!("  - url: {sd_url}"),
            "    refresh_interval: 1s",
            "    authorization:",
            // Explicit: Debian's Prometheus 2.42 sends the bare credentials in http_sd
            // requests without it (no `Bearer` prefix), as the shipped samples note.
            "      type: Bearer",
            &format!("      credentials_file: {}", key_file.display()),
            "  relabel_configs:",
            "  - source_labels: [sigma_target_kind]",
            "    target_label: job",
            "",
        ]
        .join("\n");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_file)
            .output()
            .expect("run promtool");
        assert!(
            check.status.success(),
            "promtool check config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", cmd, dir);
        let p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            proc,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = p.http.get(format!("{}/-/ready", p.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                p.proc.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// The active targets (`/api/v1/targets`, `data.activeTargets`).
    pub async fn active_targets(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/targets?state=active", self.url))
            .send()
            .await
            .expect("targets")
            .json()
            .await
            .expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (up to 90 s) until Prometheus has the per-VPS upstream connection and byte
    /// series of Envoy cluster `cluster` (`envoy_cluster_upstream_cx_total`,
    /// `_rx_bytes_total`, `_tx_bytes_total`, job `envoy`) above zero for VPS `hostname`;
    /// returns each series found, with its labels.
    pub async fn upstream_series(&self, cluster: &str, hostname: &str) -> Vec<Value> {
        let mut found = Vec::new();
        for metric in [
            "envoy_cluster_upstream_cx_total",
            "envoy_cluster_upstream_cx_rx_bytes_total",
            "envoy_cluster_upstream_cx_tx_bytes_total",
        ] {
            let q = format!(r#"{metric}{{job="envoy",cluster_name="{cluster}"}}"#);
            found.push(
                crate::wait_for(
                    &format!("{metric} of {hostname} in Prometheus"),
                    std::time::Duration::from_secs(90),
                    || async {
                        self.query(&q).await.into_iter().find(|s| {
                            s["metric"]["hostname"] == hostname
                                && s["value"][1]
                                    .as_str()
                                    .and_then(|v| v.parse::<f64>().ok())
                                    .is_some_and(|v| v > 0.0)
                        })
                    },
                )
                .await,
            );
        }
        found
    }

    /// The result vector of an instant query.
    pub async fn query(&self, q: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!(
                "{}/api/v1/query?{}",
                self.url,
                serde_urlencoded::to_string([("query", q)]).expect("encode query")
            ))
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("query JSON");
        assert_eq!(v["status"], "success", "query {q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

//! The real control plane of `scripts/e2e/control-plane`: etcd, kube-apiserver and istiod,
//! started for one test and stopped on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A running control plane.
pub struct ControlPlane {
    /// Its directory (PKI, logs, `env`).
    pub dir: PathBuf,
    /// The `env` file the script wrote.
    pub env: BTreeMap<String, String>,
    /// An admin (`system:masters`) client.
    pub admin: kube::Client,
}

fn script(args: &[&str], envs: &[(&str, &str)]) {
    // Its progress lines go to the test's stderr, so a failed start explains itself.
    let status = Command::new(repo_root().join("scripts/e2e/control-plane"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .expect("run scripts/e2e/control-plane");
    assert!(status.success(), "control-plane {} failed", args.join(" "));
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(cfg).expect("client")
}

impl ControlPlane {
    /// Starts it in `dir` with the script's settings in `envs` (`E2E_ISTIOD=0` for the API
    /// server alone, `E2E_ISTIOD_BIND` for where VPS reach istiod, …).
    pub async fn up(dir: &Path, envs: &[(&str, &str)]) -> ControlPlane {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.to_str().unwrap();
        script(&["up", d], envs);
        let text = std::fs::read_to_string(dir.join("env")).expect("control plane env");
        let env: BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let admin = client_from(Path::new(&env["KUBECONFIG"])).await;
        ControlPlane {
            dir: dir.to_path_buf(),
            env,
            admin,
        }
    }

    /// A value of the `env` file.
    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in the control plane env"))
    }

    /// Creates the objects of a YAML file (as the script's `apply`).
    pub fn apply(&self, file: &Path) {
        script(
            &["apply", self.dir.to_str().unwrap(), file.to_str().unwrap()],
            &[],
        );
    }

    /// A kubeconfig that authenticates as service account `ns/name` with a fresh token, so a
    /// process runs with exactly the rights RBAC gives that account.
    pub async fn service_account_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let sa: Api<DynamicObject> = Api::namespaced_with(
            self.admin.clone(),
            ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ServiceAccount")),
        );
        let _ = sa
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": ns}
                }))
                .unwrap(),
            )
            .await;
        let req = http::Request::post(format!(
            "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"
        ))
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 86400}
            }))
            .unwrap(),
        )
        .unwrap();
        let tr: Value = self.admin.request(req).await.expect("TokenRequest");
        let token = tr["status"]["token"].as_str().expect("token");
        let path = self.dir.join(format!("kubeconfig-{ns}-{name}"));
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {name}\ncurrent-context: e2e\n",
            self.var("KUBE_API_URL"),
            self.var("KUBE_CA_CERT"),
        );
        std::fs::write(&path, kc).unwrap();
        path
    }

    /// An API for an Istio kind in a namespace.
    pub fn istio(&self, kind: &str, ns: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", kind));
        Api::namespaced_with(self.admin.clone(), ns, &ar)
    }

    /// The WorkloadEntries in the mesh namespace `sigma`. A failed read is an error, never an
    /// empty list: "no WorkloadEntry" must mean the API server said so.
    pub async fn workload_entries(&self) -> Result<Vec<Value>, kube::Error> {
        let list = self
            .istio("WorkloadEntry", "sigma")
            .list(&kube::api::ListParams::default())
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("a WorkloadEntry as JSON"))
            .collect())
    }

    /// The WorkloadEntry of a VPS (by its `sigma.io/vps-id` label); `Ok(None)` only when the
    /// API server listed the namespace and it has none.
    pub async fn workload_entry_of(&self, vps_id: &str) -> Result<Option<Value>, kube::Error> {
        Ok(self
            .workload_entries()
            .await?
            .into_iter()
            .find(|e| e["metadata"]["labels"]["sigma.io/vps-id"] == vps_id))
    }

    /// An API for an Istio security kind (`AuthorizationPolicy`, `PeerAuthentication`) in a
    /// namespace.
    pub fn istio_security(&self, kind: &str, ns: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("security.istio.io", "v1", kind));
        Api::namespaced_with(self.admin.clone(), ns, &ar)
    }

    /// An API for a core kind in a namespace.
    pub fn core(&self, kind: &str, ns: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", kind));
        Api::namespaced_with(self.admin.clone(), ns, &ar)
    }

    /// Server-side applies an object as the test (field manager `sigma-e2e`).
    pub async fn apply_object(&self, api: &Api<DynamicObject>, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(
            &name,
            &PatchParams::apply("sigma-e2e").force(),
            &Patch::Apply(obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    /// Stops the process of a component (`kube-apiserver`, `istiod`, `etcd`) and returns how to
    /// start it again exactly as before (its command line, environment and working directory).
    pub fn stop_component(&self, name: &str) -> Restart {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pids").join(name))
            .unwrap_or_else(|e| panic!("pid of {name}: {e}"))
            .trim()
            .parse()
            .unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(proc_dir.join("cmdline")).expect("cmdline"));
        let environ = split(std::fs::read(proc_dir.join("environ")).expect("environ"));
        let cwd = std::fs::read_link(proc_dir.join("cwd")).expect("cwd");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        // A component this harness restarted is its child: once dead it stays a zombie (its
        // handle was released), which counts as stopped.
        let alive = || {
            std::fs::read_to_string(proc_dir.join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut killed = false;
        while alive() {
            if Instant::now() > deadline && !killed {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Restart {
            name: name.into(),
            argv,
            environ,
            cwd,
            pid_file: self.dir.join("pids").join(name),
            log: self.dir.join("logs").join(format!("{name}.log")),
        }
    }
}

/// How to start a stopped component again.
pub struct Restart {
    name: String,
    argv: Vec<String>,
    environ: Vec<String>,
    cwd: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Restart {
    /// Starts it again, detached like the script starts it, and records its new PID where
    /// `control-plane down` looks for it.
    pub fn start(self) {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.environ.iter().filter_map(|kv| kv.split_once('=')))
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {}: {e}", self.name));
        std::fs::write(&self.pid_file, child.id().to_string()).unwrap();
        // The control plane's `down` stops it by PID; the handle itself is not needed.
        std::mem::forget(child);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::env::var_os("SIGMA_E2E_KEEP").is_none() {
            let _ = Command::new(repo_root().join("scripts/e2e/control-plane"))
                .args(["down", self.dir.to_str().unwrap()])
                .output();
        }
    }
}

//! Where the bundle's files go under `--root`, written atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory) with the right mode and owner, and how
//! they are removed again on retire.
//!
//! The layout is the one Istio's VM onboarding uses, so pilot-agent's built-in relative
//! defaults (`./etc/certs/root-cert.pem`, `./var/run/secrets/tokens/istio-token`,
//! `./etc/istio/config/mesh`, …) find everything when it runs with `--root` as its working
//! directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use sigma_types::mesh::IstioBootstrapBundle;

use super::hosts;

/// Owner (uid, gid) given to the files pilot-agent reads and the directories it writes.
pub type Owner = Option<(u32, u32)>;

/// Paths under the install root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The install root (`/` in production).
    pub root: PathBuf,
}

/// Directories pilot-agent writes its runtime files into (Envoy bootstrap, sockets); removed
/// with their contents on retire, but only when the agent created them.
const RUNTIME_DIRS: &[&str] = &[
    "etc/istio/proxy",
    "var/run/secrets/workload-spiffe-uds",
    "var/run/secrets/credential-uds",
    "var/lib/istio/data",
];

/// Files pilot-agent keeps in its certificate directory.
const CERT_FILES: &[&str] = &["key.pem", "cert-chain.pem", "root-cert.pem"];

impl Layout {
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    /// `/etc/certs/root-cert.pem`.
    pub fn root_cert(&self) -> PathBuf {
        self.at("etc/certs/root-cert.pem")
    }
    /// `/var/run/secrets/tokens/istio-token`.
    pub fn token(&self) -> PathBuf {
        self.at("var/run/secrets/tokens/istio-token")
    }
    /// `/var/lib/istio/envoy/cluster.env`.
    pub fn cluster_env(&self) -> PathBuf {
        self.at("var/lib/istio/envoy/cluster.env")
    }
    /// `/etc/istio/config/mesh`.
    pub fn mesh_config(&self) -> PathBuf {
        self.at("etc/istio/config/mesh")
    }
    /// `/etc/hosts`.
    pub fn hosts(&self) -> PathBuf {
        self.at("etc/hosts")
    }
    /// `/var/lib/istio/envoy/envoy_bootstrap_tmpl.json` (from the sidecar archive).
    pub fn bootstrap_template(&self) -> PathBuf {
        self.at("var/lib/istio/envoy/envoy_bootstrap_tmpl.json")
    }
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temporary path next to `path`, for an atomic replace.
pub fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    Ok(dir.join(format!(
        ".{name}.sigma-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `data` atomically, with `mode` and `owner` set before it becomes
/// visible.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, owner: Owner) -> io::Result<()> {
    let tmp = temp_beside(path)?;
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors below the root, noting each one created.
fn ensure_dir(layout: &Layout, dir: &Path, created: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while d != layout.root && !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.into_iter().rev() {
        match fs::create_dir(&m) {
            Ok(()) => {
                fs::set_permissions(&m, fs::Permissions::from_mode(0o755))?;
                if !created.contains(&m) {
                    created.push(m);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn chown_dir(dir: &Path, mode: Option<u32>, owner: Owner) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    if let Some(m) = mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

/// A file operation of the installation that failed, naming its path.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading, writing, creating or removing `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The hosts file is not text.
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 {
        /// The hosts file.
        path: PathBuf,
    },
    /// Several steps of an uninstall failed (each was tried).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<InstallError>),
}

fn ctx(path: &Path) -> impl Fn(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes every file of the bundle, the certificate directories and the hosts block; returns
/// the directories it created (merged into `created`).
pub fn install(
    layout: &Layout,
    bundle: &IstioBootstrapBundle,
    cert_dirs: &[PathBuf],
    hosts_entries: &[String],
    owner: Owner,
    created: &mut Vec<PathBuf>,
) -> Result<(), InstallError> {
    let f = &bundle.files;
    let files: [(PathBuf, &str, u32); 4] = [
        (layout.root_cert(), &f.root_cert_pem, 0o644),
        (layout.token(), &f.istio_token, 0o600),
        (layout.cluster_env(), &f.cluster_env, 0o644),
        (layout.mesh_config(), &f.mesh_yaml, 0o644),
    ];
    for (path, _, _) in &files {
        if let Some(dir) = path.parent() {
            ensure_dir(layout, dir, created).map_err(ctx(dir))?;
        }
    }
    // pilot-agent writes Envoy's bootstrap and its xDS socket here.
    let proxy_dir = layout.at("etc/istio/proxy");
    ensure_dir(layout, &proxy_dir, created).map_err(ctx(&proxy_dir))?;
    for d in cert_dirs {
        ensure_dir(layout, d, created).map_err(ctx(d))?;
        // It will hold the workload's private key.
        chown_dir(d, Some(0o700), owner).map_err(ctx(d))?;
    }
    // The directories Istio's VM guide hands to istio-proxy: pilot-agent writes below them.
    for rel in [
        "etc/certs",
        "etc/istio/proxy",
        "etc/istio/config",
        "var/lib/istio",
        "var/lib/istio/envoy",
        "var/run/secrets",
        "var/run/secrets/tokens",
    ] {
        let d = layout.at(rel);
        if d.is_dir() {
            chown_dir(&d, None, owner).map_err(ctx(&d))?;
        }
    }
    for (path, body, mode) in &files {
        write_atomic(path, body.as_bytes(), *mode, owner).map_err(ctx(path))?;
    }
    // With PROV_CERT set, pilot-agent verifies istiod against `<PROV_CERT>/root-cert.pem`, not
    // /etc/certs (it exits with "missing a root certificate" otherwise), so the mesh root goes
    // into every certificate directory too.
    for d in cert_dirs {
        let p = d.join("root-cert.pem");
        write_atomic(&p, f.root_cert_pem.as_bytes(), 0o644, owner).map_err(ctx(&p))?;
    }
    write_hosts(layout, hosts_entries)
}

/// Rewrites only the token (a refresh with an unchanged bundle version).
pub fn install_token(layout: &Layout, token: &str, owner: Owner) -> Result<(), InstallError> {
    let p = layout.token();
    write_atomic(&p, token.as_bytes(), 0o600, owner).map_err(ctx(&p))
}

/// Puts `entries` in the hosts block (removes the block when empty), keeping the file's mode,
/// owner and every other line; does not touch the file when nothing changes.
pub fn write_hosts(layout: &Layout, entries: &[String]) -> Result<(), InstallError> {
    let link = layout.hosts();
    // Write through a symlink, not over it.
    let path = fs::canonicalize(&link).unwrap_or(link);
    let (existing, meta) = match fs::read(&path) {
        Ok(b) => (
            String::from_utf8(b).map_err(|_| InstallError::NotUtf8 { path: path.clone() })?,
            fs::metadata(&path).ok(),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if entries.is_empty() {
                return Ok(());
            }
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(ctx(dir))?;
            }
            (String::new(), None)
        }
        Err(e) => return Err(ctx(&path)(e)),
    };
    let updated = hosts::with_block(&existing, entries);
    if updated == existing {
        return Ok(());
    }
    let mode = meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let owner = meta
        .as_ref()
        .filter(|_| super::privs::is_root())
        .map(|m| (m.uid(), m.gid()));
    match write_atomic(&path, updated.as_bytes(), mode, owner) {
        Ok(()) => Ok(()),
        // A bind-mounted /etc/hosts (containers) cannot be replaced, only rewritten.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => {
            tracing::warn!(path = %path.display(), "cannot replace the hosts file atomically (bind mount?); rewriting it in place");
            fs::write(&path, updated.as_bytes()).map_err(ctx(&path))
        }
        Err(e) => Err(ctx(&path)(e)),
    }
}

fn remove_file(p: &Path) -> Result<(), InstallError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx(p)(e)),
    }
}

/// Removes what [`install`] wrote and pilot-agent produced: the bundle's files, the workload
/// certificate, the hosts block, the runtime directories and every directory the agent
/// created (only when empty). Files of the proxy installation (binaries, bootstrap template)
/// stay.
pub fn uninstall(
    layout: &Layout,
    cert_dirs: &[PathBuf],
    created: &[PathBuf],
) -> Result<(), InstallError> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), InstallError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    for p in [
        layout.root_cert(),
        layout.token(),
        layout.cluster_env(),
        layout.mesh_config(),
    ] {
        note(remove_file(&p));
    }
    for d in cert_dirs {
        for f in CERT_FILES {
            note(remove_file(&d.join(f)));
        }
    }
    note(write_hosts(layout, &[]));
    for rel in RUNTIME_DIRS {
        let d = layout.at(rel);
        if created.contains(&d) && d.exists() {
            note(fs::remove_dir_all(&d).map_err(ctx(&d)));
        }
    }
    let mut dirs: Vec<&PathBuf> = created.iter().collect();
    // Deepest first, so parents are empty by the time they come up.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Something else lives there now: not ours to remove.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                tracing::info!(dir = %d.display(), "kept: not empty");
            }
            Err(e) => note(Err(ctx(d)(e))),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(InstallError::Several(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_types::mesh::{HOSTS_BEGIN, HOSTS_END, InterceptionMode, IstioBootstrapFiles};

    fn bundle() -> IstioBootstrapBundle {
        IstioBootstrapBundle {
            vps_id: uuid::Uuid::nil(),
            hostname: "n1.example.net".into(),
            workload_entry: "vps-n1-example-net".into(),
            files: IstioBootstrapFiles {
                root_cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                    .into(),
                istio_token: "tok".into(),
                mesh_yaml: "defaultConfig: {}\n".into(),
                cluster_env: "PROV_CERT='/var/lib/istio/certs'\n".into(),
                hosts: "203.0.113.9 istiod.istio-system.svc\n".into(),
            },
            token_expires_at: time::OffsetDateTime::now_utc(),
            root_cert_sha256: "a".repeat(64),
            bundle_version: "v1".into(),
            interception: InterceptionMode::None,
            egress: vec![],
            istio_proxy: None,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn installs_twice_identically_and_uninstalls_cleanly() {
        let root = std::env::temp_dir().join(format!("sigma-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("etc")).unwrap();
        let hosts_before = "127.0.0.1 localhost\n10.1.1.1 db # keep me";
        fs::write(root.join("etc/hosts"), hosts_before).unwrap();
        fs::set_permissions(root.join("etc/hosts"), fs::Permissions::from_mode(0o640)).unwrap();
        let l = Layout { root: root.clone() };
        let b = bundle();
        let cert_dirs = vec![root.join("var/lib/istio/certs")];
        let entries = hosts::check_entries(&b.files.hosts).unwrap();
        let mut created = Vec::new();
        install(&l, &b, &cert_dirs, &entries, None, &mut created).unwrap();
        let hosts_once = fs::read_to_string(l.hosts()).unwrap();
        assert!(hosts_once.starts_with("127.0.0.1 localhost\n10.1.1.1 db # keep me\n"));
        assert!(hosts_once.contains(&format!(
            "{HOSTS_BEGIN}\n203.0.113.9 istiod.istio-system.svc\n{HOSTS_END}\n"
        )));
        assert_eq!(mode(&l.hosts()), 0o640, "hosts mode kept");
        assert_eq!(mode(&l.token()), 0o600);
        assert_eq!(mode(&l.root_cert()), 0o644);
        assert_eq!(mode(&cert_dirs[0]), 0o700);
        assert_eq!(
            fs::read_to_string(cert_dirs[0].join("root-cert.pem")).unwrap(),
            b.files.root_cert_pem,
            "PROV_CERT holds the root pilot-agent verifies istiod with"
        );
        assert_eq!(fs::read_to_string(l.token()).unwrap(), "tok");
        let mtime = fs::metadata(l.hosts()).unwrap().modified().unwrap();

        install(&l, &b, &cert_dirs, &entries, None, &mut created).unwrap();
        assert_eq!(fs::read_to_string(l.hosts()).unwrap(), hosts_once);
        assert_eq!(
            fs::metadata(l.hosts()).unwrap().modified().unwrap(),
            mtime,
            "unchanged hosts not rewritten"
        );
        install_token(&l, "tok2", None).unwrap();
        assert_eq!(fs::read_to_string(l.token()).unwrap(), "tok2");
        assert_eq!(mode(&l.token()), 0o600);
        // No temporary files left behind.
        for d in [l.token().parent().unwrap(), &root.join("etc")] {
            for e in fs::read_dir(d).unwrap() {
                let n = e.unwrap().file_name();
                assert!(!n.to_string_lossy().contains(".sigma-"), "{n:?}");
            }
        }

        // pilot-agent's own files.
        fs::write(cert_dirs[0].join("key.pem"), "k").unwrap();
        fs::write(root.join("etc/istio/proxy/envoy-rev.json"), "{}").unwrap();
        uninstall(&l, &cert_dirs, &created).unwrap();
        assert_eq!(
            fs::read_to_string(l.hosts()).unwrap(),
            "127.0.0.1 localhost\n10.1.1.1 db # keep me\n"
        );
        assert_eq!(mode(&l.hosts()), 0o640);
        for gone in ["etc/certs", "etc/istio", "var"] {
            assert!(!root.join(gone).exists(), "{gone} left");
        }
        assert!(root.join("etc/hosts").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}

//! Installing pilot-agent and Envoy from Istio's sidecar archive (`istio-sidecar.tar.gz`) when
//! the VPS lacks them: downloaded from the URL the bundle names, checked against its SHA-256
//! before anything is unpacked, and installed atomically.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::install::temp_beside;

/// Largest archive accepted (Istio's sidecar archive is well below 100 MiB).
const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
/// Longest silence while downloading.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the archive's parts go.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `usr/local/bin/pilot-agent` goes here (`--istio-agent-path`).
    pub agent: PathBuf,
    /// `usr/local/bin/envoy` goes here (`--istio-envoy-path`).
    pub envoy: PathBuf,
    /// `var/lib/istio/envoy/envoy_bootstrap_tmpl.json` goes here (under `--root`), when the
    /// archive has it.
    pub template: PathBuf,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why Istio's sidecar archive could not be downloaded or unpacked. Each names the URL,
/// path or archive entry concerned; the system's or HTTP client's error is the source.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The request failed (connection, TLS, a broken body).
    #[error("downloading {url}: {source}")]
    Request {
        /// The archive's URL.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("downloading {url}: HTTP {status}")]
    Status {
        /// The archive's URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server sent nothing for [`CHUNK_TIMEOUT`].
    #[error("downloading {url}: no data for {CHUNK_TIMEOUT:?}")]
    Stalled {
        /// The archive's URL.
        url: String,
    },
    /// The agent stopped meanwhile.
    #[error("stopped while downloading")]
    Stopped,
    /// The archive is larger than [`MAX_ARCHIVE_BYTES`].
    #[error("{url} is larger than {MAX_ARCHIVE_BYTES} bytes")]
    TooLarge {
        /// The archive's URL.
        url: String,
    },
    /// The archive's digest is not the one the bundle states.
    #[error(
        "sha256 mismatch for {url}: the bundle says {expected}, the download is {got}; refusing it"
    )]
    Digest {
        /// The archive's URL.
        url: String,
        /// What the bundle says.
        expected: String,
        /// What was downloaded.
        got: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The file is not gzip.
    #[error("the proxy archive is not a .tar.gz (only Istio's istio-sidecar.tar.gz is supported)")]
    NotGzip,
    /// The tar stream is broken.
    #[error("reading the proxy archive: {0}")]
    Read(#[source] io::Error),
    /// An entry's path cannot be read.
    #[error("archive entry: {0}")]
    EntryPath(#[source] io::Error),
    /// A wanted entry is a link, a directory or the like.
    #[error("{name} in the proxy archive is not a regular file")]
    NotAFile {
        /// The entry.
        name: String,
    },
    /// A wanted entry appears twice.
    #[error("{name} appears twice in the proxy archive")]
    Twice {
        /// The entry.
        name: String,
    },
    /// An entry could not be written to its target.
    #[error("unpacking {name} to {}: {source}", target.display())]
    Unpack {
        /// The entry.
        name: String,
        /// Where it goes.
        target: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A binary is missing from the archive.
    #[error("the proxy archive has no {0}")]
    Missing(&'static str),
    /// A staged file could not be moved into place.
    #[error("installing {}: {source}", dest.display())]
    Install {
        /// Where it goes.
        dest: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Downloads `url` into `dest`, refusing it (and deleting what was written) unless its SHA-256
/// is `sha256`.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    sha256: &str,
    dest: &Path,
    stop: &CancellationToken,
) -> Result<(), ArchiveError> {
    let result = async {
        let mut resp = http
            .get(url)
            .send()
            .await
            .map_err(|source| ArchiveError::Request {
                url: url.into(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(ArchiveError::Status {
                url: url.into(),
                status: resp.status().as_u16(),
            });
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)
            .await
            .map_err(io_at(dest))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return Err(ArchiveError::Stopped),
                c = tokio::time::timeout(CHUNK_TIMEOUT, resp.chunk()) => c,
            };
            let chunk = match chunk {
                Err(_) => return Err(ArchiveError::Stalled { url: url.into() }),
                Ok(Err(source)) => {
                    return Err(ArchiveError::Request {
                        url: url.into(),
                        source,
                    });
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            total += chunk.len() as u64;
            if total > MAX_ARCHIVE_BYTES {
                return Err(ArchiveError::TooLarge { url: url.into() });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_at(dest))?;
        }
        file.sync_all().await.map_err(io_at(dest))?;
        let got = hex(&hasher.finalize());
        if got != sha256 {
            return Err(ArchiveError::Digest {
                url: url.into(),
                expected: sha256.into(),
                got,
            });
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

/// The archive path of an entry without leading `./` or `/`.
fn normalised(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

fn extract_to(entry: &mut impl Read, target: &Path, mode: u32) -> io::Result<PathBuf> {
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = temp_beside(target)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let r = (|| {
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        io::copy(entry, &mut f)?;
        f.flush()?;
        f.sync_all()
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Unpacks pilot-agent, Envoy and (when present) the bootstrap template from a `.tar.gz`; puts
/// nothing in place unless both binaries are there.
pub fn unpack(archive: &Path, t: &Targets) -> Result<(), ArchiveError> {
    let mut f = fs::File::open(archive).map_err(io_at(archive))?;
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic).map_err(io_at(archive))?;
    if magic != [0x1f, 0x8b] {
        return Err(ArchiveError::NotGzip);
    }
    let f = fs::File::open(archive).map_err(io_at(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        let entries = tar.entries().map_err(ArchiveError::Read)?;
        for entry in entries {
            let mut entry = entry.map_err(ArchiveError::Read)?;
            let name = normalised(&entry.path().map_err(ArchiveError::EntryPath)?);
            let (target, mode) = match name.as_str() {
                "usr/local/bin/pilot-agent" => (&t.agent, 0o755),
                "usr/local/bin/envoy" => (&t.envoy, 0o755),
                "var/lib/istio/envoy/envoy_bootstrap_tmpl.json" => (&t.template, 0o644),
                _ => continue,
            };
            if !entry.header().entry_type().is_file() {
                return Err(ArchiveError::NotAFile { name });
            }
            if staged.iter().any(|(_, dest)| dest == target) {
                return Err(ArchiveError::Twice { name });
            }
            let tmp =
                extract_to(&mut entry, target, mode).map_err(|source| ArchiveError::Unpack {
                    name: name.clone(),
                    target: target.clone(),
                    source,
                })?;
            staged.push((tmp, target.clone()));
        }
        for (what, p) in [
            ("usr/local/bin/pilot-agent", &t.agent),
            ("usr/local/bin/envoy", &t.envoy),
        ] {
            if !staged.iter().any(|(_, d)| d == p) {
                return Err(ArchiveError::Missing(what));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    if !staged.iter().any(|(_, d)| d == &t.template) {
        tracing::warn!(
            "the proxy archive has no var/lib/istio/envoy/envoy_bootstrap_tmpl.json; pilot-agent needs one there"
        );
    }
    for (tmp, dest) in &staged {
        fs::rename(tmp, dest).map_err(|source| ArchiveError::Install {
            dest: dest.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpacks_the_binaries_and_refuses_incomplete_archives() {
        let dir = std::env::temp_dir().join(format!("sigma-archive-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t = Targets {
            agent: dir.join("bin/pilot-agent"),
            envoy: dir.join("bin/envoy"),
            template: dir.join("root/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
        };
        let a = dir.join("a.tar.gz");
        fs::write(
            &a,
            targz(&[("./usr/local/bin/envoy", b"E"), ("./etc/x", b"x")]),
        )
        .unwrap();
        assert!(
            unpack(&a, &t)
                .unwrap_err()
                .to_string()
                .contains("pilot-agent")
        );
        assert!(
            !t.envoy.exists(),
            "nothing installed from an incomplete archive"
        );
        fs::write(
            &a,
            targz(&[
                ("./usr/local/bin/pilot-agent", b"P"),
                ("usr/local/bin/envoy", b"E"),
                ("./var/lib/istio/envoy/envoy_bootstrap_tmpl.json", b"{}"),
            ]),
        )
        .unwrap();
        unpack(&a, &t).unwrap();
        assert_eq!(fs::read(&t.agent).unwrap(), b"P");
        assert_eq!(
            fs::metadata(&t.agent).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read(&t.template).unwrap(), b"{}");
        fs::write(&a, b"PK\x03\x04 a zip").unwrap();
        assert!(unpack(&a, &t).unwrap_err().to_string().contains(".tar.gz"));
        fs::remove_dir_all(&dir).unwrap();
    }
}

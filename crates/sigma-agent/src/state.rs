//! The agent's persistent state: the agent key sigma-api issued at enrollment.
//!
//! The key is written atomically (temporary file, fsync, rename) with mode 0600, so a crash or a
//! full disk during the write never leaves the agent without a key it had.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

const KEY_FILE: &str = "agent.key";

impl StateDir {
    /// Opens (and creates, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::State(format!("{}: {e}", dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Path of the key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The stored agent key, if any. A key file readable by others is refused: the key must
    /// be treated as leaked.
    pub fn load_key(&self) -> Result<Option<String>> {
        let path = self.key_path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::State(format!("{}: {e}", path.display()))),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::State(format!(
                "{} is readable by others (mode {:o}); run chmod 600 on it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let key = std::fs::read_to_string(&path)
            .map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
        let key = key.trim().to_string();
        if key.is_empty() {
            return Ok(None);
        }
        Ok(Some(key))
    }

    /// Stores the agent key atomically with mode 0600.
    pub fn store_key(&self, key: &str) -> Result<()> {
        let path = self.key_path();
        let err = |e: std::io::Error| Error::State(format!("writing {}: {e}", path.display()));
        let mut f = atomic_write_file::OpenOptions::new()
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        f.write_all(key.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.commit().map_err(err)?;
        Ok(())
    }
}

impl StateDir {
    fn private_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads a private file of the state directory, if it exists.
    pub fn load_private(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.private_path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::State(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes a private file (mode 0600) of the state directory atomically.
    pub fn store_private(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.private_path(name);
        let err = |e: std::io::Error| Error::State(format!("writing {}: {e}", path.display()));
        let mut f = atomic_write_file::OpenOptions::new()
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.commit().map_err(err)?;
        Ok(())
    }

    /// Removes a private file of the state directory (absent is fine).
    pub fn remove_private(&self, name: &str) -> Result<()> {
        let path = self.private_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::State(format!("{}: {e}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("sigma-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(s.load_key().unwrap(), None);
        s.store_key("sgm_12345678_secret").unwrap();
        assert_eq!(
            s.load_key().unwrap().as_deref(),
            Some("sgm_12345678_secret")
        );
        let mode = std::fs::metadata(s.key_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        s.store_key("sgm_12345678_other").unwrap();
        assert_eq!(s.load_key().unwrap().as_deref(), Some("sgm_12345678_other"));
        std::fs::set_permissions(s.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(s.load_key().unwrap_err().to_string().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

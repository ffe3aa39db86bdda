//! Where sigmactl finds sigma-api and its key: flags, then the environment, then a profile of
//! the config file, then built-in defaults.
//!
//! The config file is TOML at `$XDG_CONFIG_HOME/sigma/config.toml` (or
//! `~/.config/sigma/config.toml`; `--config`/`SIGMA_CONFIG` name another one), with one table
//! per sigma installation:
//!
//! ```toml
//! [profiles.default]
//! api_url = "http://127.0.0.1:3000"
//! api_key_file = "~/.config/sigma/local.key"
//!
//! [profiles.prod]
//! api_url = "https://sigma.example.net"
//! api_key = "sgm_…"          # the file must then be chmod 600
//! ```
//!
//! The profile is `--profile`, else `SIGMA_PROFILE`, else `default`. A config file that holds
//! an `api_key` and can be read by group or others is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// sigma-api's URL when nothing else names one (sigma-api's own default listen address).
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:3000";
/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// Environment variable naming sigma-api's URL.
pub const ENV_API_URL: &str = "SIGMA_API_URL";
/// Environment variable holding the API key.
pub const ENV_API_KEY: &str = "SIGMA_API_KEY";
/// Environment variable naming a file that holds the API key.
pub const ENV_API_KEY_FILE: &str = "SIGMA_API_KEY_FILE";
/// Environment variable naming the profile.
pub const ENV_PROFILE: &str = "SIGMA_PROFILE";
/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "SIGMA_CONFIG";

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One sigma installation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// sigma-api's URL.
    #[serde(default)]
    pub api_url: Option<String>,
    /// The API key itself (the file must then be readable by its owner only).
    #[serde(default)]
    pub api_key: Option<String>,
    /// A file holding the API key (`~/` is the home directory; a relative path is relative to
    /// the config file's directory).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

impl ConfigFile {
    /// Parses the file's text.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile> {
        toml::from_str(text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.to_string().trim_end())))
    }

    /// Whether any profile holds a key itself.
    pub fn holds_key(&self) -> bool {
        self.profiles.values().any(|p| p.api_key.is_some())
    }
}

/// What the command line says about configuration (the global flags).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--api-url`.
    pub api_url: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--api-key-file`.
    pub api_key_file: Option<PathBuf>,
}

/// An API key and where it came from. Its `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    secret: String,
    /// Where it came from, for messages (`SIGMA_API_KEY`, `file /run/key`, …).
    pub source: String,
}

impl ApiKey {
    /// Checks a key read from `source`.
    pub fn new(raw: &str, source: String) -> Result<ApiKey> {
        let secret = raw.trim();
        if secret.is_empty() {
            return Err(Error::Config(format!("the API key from {source} is empty")));
        }
        if secret.len() > 512 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(format!(
                "the API key from {source} is not a key (visible ASCII characters, at most 512)"
            )));
        }
        Ok(ApiKey {
            secret: secret.to_string(),
            source,
        })
    }

    /// The secret, for the `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("secret", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// The resolved settings of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// sigma-api's base URL, without a trailing slash.
    pub api_url: String,
    /// Where the URL came from.
    pub api_url_source: String,
    /// The key, if any source had one.
    pub api_key: Option<ApiKey>,
    /// The profile in use.
    pub profile: String,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
}

impl Settings {
    /// The key, or an error that says where one may be put.
    pub fn require_key(&self) -> Result<&ApiKey> {
        self.api_key.as_ref().ok_or_else(|| {
            let file = self
                .config_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.config/sigma/config.toml".into());
            Error::Config(format!(
                "no API key: set {ENV_API_KEY} or {ENV_API_KEY_FILE}, pass --api-key-file, \
                 or add api_key_file (or api_key) to [profiles.{}] in {file}",
                self.profile
            ))
        })
    }
}

/// The environment as resolution sees it (a function, so tests need not change the process's).
pub trait Env {
    /// A variable's value; empty counts as unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    }
}

/// The default config file path: `$XDG_CONFIG_HOME/sigma/config.toml`, else
/// `$HOME/.config/sigma/config.toml`.
pub fn default_config_path(env: &dyn Env) -> Option<PathBuf> {
    if let Some(x) = env.var("XDG_CONFIG_HOME").map(PathBuf::from)
        && x.is_absolute()
    {
        return Some(x.join("sigma").join("config.toml"));
    }
    env.var("HOME").map(|h| {
        PathBuf::from(h)
            .join(".config")
            .join("sigma")
            .join("config.toml")
    })
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses a config file that holds a key and that group or others may access.
#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{p} holds an API key but group or others may read it (mode {mode:04o}); \
             refusing to use it. Run: chmod 600 {p}",
            p = path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<()> {
    Ok(())
}

/// Reads and checks a config file.
pub fn load_config(path: &Path) -> Result<ConfigFile> {
    let cfg = ConfigFile::parse(&read_file(path)?, path)?;
    if cfg.holds_key() {
        check_permissions(path)?;
    }
    Ok(cfg)
}

fn expand_path(p: &Path, base: Option<&Path>, env: &dyn Env) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = env.var("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

fn key_from_file(path: &Path, source: String) -> Result<ApiKey> {
    ApiKey::new(&read_file(path)?, source)
}

fn check_url(url: &str, source: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::Config(format!("the API URL {url:?} from {source} is invalid: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::Config(format!(
            "the API URL {url:?} from {source} must be http://HOST[:PORT] or https://HOST[:PORT]"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Config(format!(
            "the API URL {url:?} from {source} may not have a query or fragment"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Resolves the settings of a run: flags beat the environment, which beats the profile, which
/// beats the defaults.
pub fn resolve(flags: &Flags, env: &dyn Env) -> Result<Settings> {
    // The config file: named (must exist) or the default one (may be absent).
    let (config_path, named) = match (flags.config.clone(), env.var(ENV_CONFIG)) {
        (Some(p), _) => (Some(p), true),
        (None, Some(p)) => (Some(PathBuf::from(p)), true),
        (None, None) => (default_config_path(env), false),
    };
    let config = match &config_path {
        Some(p) if named || p.exists() => Some(load_config(p)?),
        _ => None,
    };
    let config_path = config.as_ref().and(config_path);

    // The profile: named (must exist in the file) or `default` (may be absent).
    let (profile_name, profile_source) = match (&flags.profile, env.var(ENV_PROFILE)) {
        (Some(p), _) => (p.clone(), Some("--profile")),
        (None, Some(p)) => (p, Some(ENV_PROFILE)),
        (None, None) => (DEFAULT_PROFILE.to_string(), None),
    };
    let profile = match (&config, profile_source) {
        (Some(c), src) => match c.profiles.get(&profile_name) {
            Some(p) => p.clone(),
            None if src.is_none() => Profile::default(),
            None => {
                let known: Vec<&str> = c.profiles.keys().map(String::as_str).collect();
                return Err(Error::Config(format!(
                    "profile {profile_name:?} (from {}) is not in {}; profiles there: {}",
                    src.unwrap_or_default(),
                    config_path.as_deref().unwrap_or(Path::new("")).display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        },
        (None, Some(src)) => {
            return Err(Error::Config(format!(
                "profile {profile_name:?} (from {src}) needs a config file, but there is none at {}",
                default_config_path(env)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/sigma/config.toml".into())
            )));
        }
        (None, None) => Profile::default(),
    };
    let in_profile = |field: &str| {
        format!(
            "{field} of profile {profile_name:?} in {}",
            config_path.as_deref().unwrap_or(Path::new("")).display()
        )
    };

    let (api_url, api_url_source) = if let Some(u) = &flags.api_url {
        (u.clone(), "--api-url".to_string())
    } else if let Some(u) = env.var(ENV_API_URL) {
        (u, ENV_API_URL.to_string())
    } else if let Some(u) = &profile.api_url {
        (u.clone(), in_profile("api_url"))
    } else {
        (DEFAULT_API_URL.to_string(), "the default".to_string())
    };
    let api_url = check_url(&api_url, &api_url_source)?;

    let env_key = env.var(ENV_API_KEY);
    let env_key_file = env.var(ENV_API_KEY_FILE);
    let config_dir = config_path.as_deref().and_then(Path::parent);
    let api_key = if let Some(f) = &flags.api_key_file {
        Some(key_from_file(f, format!("--api-key-file {}", f.display()))?)
    } else if env_key.is_some() && env_key_file.is_some() {
        return Err(Error::Config(format!(
            "both {ENV_API_KEY} and {ENV_API_KEY_FILE} are set; unset one"
        )));
    } else if let Some(k) = env_key {
        Some(ApiKey::new(&k, ENV_API_KEY.to_string())?)
    } else if let Some(f) = env_key_file {
        Some(key_from_file(
            Path::new(&f),
            format!("{ENV_API_KEY_FILE} ({f})"),
        )?)
    } else {
        match (&profile.api_key, &profile.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(format!(
                    "profile {profile_name:?} sets both api_key and api_key_file; keep one"
                )));
            }
            (Some(k), None) => Some(ApiKey::new(k, in_profile("api_key"))?),
            (None, Some(f)) => {
                let path = expand_path(f, config_dir, env);
                Some(key_from_file(
                    &path,
                    format!("{} ({})", in_profile("api_key_file"), path.display()),
                )?)
            }
            (None, None) => None,
        }
    };

    Ok(Settings {
        api_url,
        api_url_source,
        api_key,
        profile: profile_name,
        config_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "sigmactl-config-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }

        fn s(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const KEY_A: &str = "sgm_aaaaaaaa_first-key-0123456789abcdef0123";
    const KEY_B: &str = "sgm_bbbbbbbb_second-key-0123456789abcdef012";

    fn env<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn defaults_without_anything() {
        let s = resolve(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.profile, DEFAULT_PROFILE);
        assert!(s.api_key.is_none());
        assert!(s.config_path.is_none());
        let e = s.require_key().unwrap_err().to_string();
        assert!(
            e.contains(ENV_API_KEY) && e.contains("[profiles.default]"),
            "{e}"
        );
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let d = Dir::new("precedence");
        d.write(
            "x/sigma/config.toml",
            &format!(
                "[profiles.default]\napi_url = \"http://file.example:1\"\napi_key = \"{KEY_A}\"\n"
            ),
            0o600,
        );
        let xdg = format!("{}/x", d.s());
        // File only.
        let s = resolve(&Flags::default(), &env(&[("XDG_CONFIG_HOME", &xdg)])).unwrap();
        assert_eq!(s.api_url, "http://file.example:1");
        assert_eq!(s.api_key.as_ref().unwrap().secret(), KEY_A);
        assert!(
            s.api_key
                .as_ref()
                .unwrap()
                .source
                .contains("api_key of profile")
        );
        // Env beats file.
        let e = env(&[
            ("XDG_CONFIG_HOME", &xdg),
            (ENV_API_URL, "http://env.example:2/"),
            (ENV_API_KEY, KEY_B),
        ]);
        let s = resolve(&Flags::default(), &e).unwrap();
        assert_eq!(s.api_url, "http://env.example:2", "trailing slash dropped");
        assert_eq!(s.api_key.as_ref().unwrap().secret(), KEY_B);
        // Flags beat env.
        let keyfile = d.write("flag.key", &format!("{KEY_A}\n"), 0o600);
        let flags = Flags {
            api_url: Some("https://flag.example".into()),
            api_key_file: Some(keyfile),
            ..Flags::default()
        };
        let s = resolve(&flags, &e).unwrap();
        assert_eq!(s.api_url, "https://flag.example");
        assert_eq!(s.api_url_source, "--api-url");
        assert_eq!(
            s.api_key.as_ref().unwrap().secret(),
            KEY_A,
            "newline trimmed"
        );
        assert!(
            !format!("{s:?}").contains(KEY_A),
            "Debug never shows the key"
        );
    }

    #[test]
    fn profiles_are_chosen_by_flag_then_env() {
        let d = Dir::new("profiles");
        let cfg = d.write(
            "c.toml",
            "[profiles.default]\napi_url = \"http://default.example\"\n\
             [profiles.prod]\napi_url = \"https://prod.example\"\napi_key_file = \"prod.key\"\n\
             [profiles.lab]\napi_url = \"http://lab.example\"\n",
            0o644,
        );
        d.write("prod.key", KEY_B, 0o600);
        let c = cfg.display().to_string();
        let s = resolve(&Flags::default(), &env(&[(ENV_CONFIG, &c)])).unwrap();
        assert_eq!(s.api_url, "http://default.example");
        let s = resolve(
            &Flags::default(),
            &env(&[(ENV_CONFIG, &c), (ENV_PROFILE, "lab")]),
        )
        .unwrap();
        assert_eq!(s.api_url, "http://lab.example");
        let flags = Flags {
            profile: Some("prod".into()),
            ..Flags::default()
        };
        let s = resolve(&flags, &env(&[(ENV_CONFIG, &c), (ENV_PROFILE, "lab")])).unwrap();
        assert_eq!(s.profile, "prod");
        assert_eq!(s.api_url, "https://prod.example");
        assert_eq!(
            s.api_key.unwrap().secret(),
            KEY_B,
            "relative key file is next to the config file"
        );
        let flags = Flags {
            profile: Some("nope".into()),
            ..Flags::default()
        };
        let e = resolve(&flags, &env(&[(ENV_CONFIG, &c)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("default, lab, prod"),
            "{e}"
        );
    }

    #[test]
    fn a_named_profile_or_config_must_exist() {
        let d = Dir::new("missing");
        let flags = Flags {
            profile: Some("prod".into()),
            ..Flags::default()
        };
        let e = resolve(&flags, &env(&[("HOME", &d.s())])).unwrap_err();
        assert!(e.to_string().contains("needs a config file"), "{e}");
        let flags = Flags {
            config: Some(d.0.join("absent.toml")),
            ..Flags::default()
        };
        assert!(matches!(
            resolve(&flags, &env(&[])).unwrap_err(),
            Error::Io { .. }
        ));
    }

    #[test]
    fn a_readable_file_with_a_key_is_refused() {
        let d = Dir::new("perms");
        let p = d.write(
            "home/.config/sigma/config.toml",
            &format!("[profiles.default]\napi_key = \"{KEY_A}\"\n"),
            0o640,
        );
        let home = format!("{}/home", d.s());
        let e = resolve(&Flags::default(), &env(&[("HOME", &home)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600") && e.contains("0640"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = resolve(&Flags::default(), &env(&[("HOME", &home)])).unwrap();
        assert_eq!(s.api_key.unwrap().secret(), KEY_A);
        assert_eq!(s.config_path.as_deref(), Some(p.as_path()));
    }

    #[test]
    fn bad_values_are_named() {
        let e = resolve(&Flags::default(), &env(&[(ENV_API_URL, "ftp://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(ENV_API_URL), "{e}");
        let e = resolve(
            &Flags::default(),
            &env(&[(ENV_API_KEY, KEY_A), (ENV_API_KEY_FILE, "/k")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unset one"), "{e}");
        let d = Dir::new("bad");
        let c = d.write("c.toml", "[profiles.default]\napi_ur = \"x\"\n", 0o600);
        let e = resolve(
            &Flags {
                config: Some(c),
                ..Flags::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("api_ur"), "{e}");
        let e = ApiKey::new("a b", "x".into()).unwrap_err().to_string();
        assert!(e.contains("not a key"), "{e}");
    }

    #[test]
    fn xdg_config_home_wins_over_home() {
        let e = env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            default_config_path(&e).unwrap(),
            Path::new("/xdg/sigma/config.toml")
        );
        let e = env(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/u")]);
        assert_eq!(
            default_config_path(&e).unwrap(),
            Path::new("/home/u/.config/sigma/config.toml")
        );
    }
}

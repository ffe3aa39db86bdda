//! `cluster.env`: the shell-quoted `KEY='value'` lines Istio's `istio-start.sh` sources, and the
//! environment pilot-agent is started with.
//!
//! The agent does not run a shell, so it parses the file itself. It accepts what istioctl and
//! sigma-api write (single quotes, `'\''` for an embedded quote, double quotes, plain words,
//! `export`, comments) and refuses anything that a shell would expand (`$`, back-quotes), so the
//! values pilot-agent sees are exactly the ones a shell would give it.

use std::collections::BTreeMap;
use std::net::AddrParseError;
use std::path::{Component, Path, PathBuf};

/// Why `cluster.env`, or a variable the agent reads from it, is refused. The message names the
/// line or the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A line that is neither a comment nor an assignment.
    #[error("cluster.env line {line}: not KEY=value")]
    NotAssignment {
        /// 1-based line number.
        line: usize,
    },
    /// A variable name a shell would not accept.
    #[error("cluster.env line {line}: bad variable name {key:?}")]
    BadName {
        /// 1-based line number.
        line: usize,
        /// The name.
        key: String,
    },
    /// A value the agent cannot read as a shell would.
    #[error("cluster.env line {line} ({key}): {source}")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// The variable.
        key: String,
        /// Why.
        source: ValueError,
    },
    /// A certificate directory (`PROV_CERT`, `OUTPUT_CERTS`) that cannot be placed under the
    /// install root.
    #[error("cluster.env {key}: {source}")]
    CertDir {
        /// The variable.
        key: &'static str,
        /// Why.
        source: PathError,
    },
    /// iptables mode without `ISTIO_SERVICE_CIDR`.
    #[error("ISTIO_SERVICE_CIDR is empty: iptables mode needs the CIDRs to capture")]
    NoServiceCidr,
    /// `ISTIO_SERVICE_CIDR='*'`.
    #[error("ISTIO_SERVICE_CIDR '*' would capture all traffic; sigma captures listed CIDRs only")]
    CaptureAll,
    /// An `ISTIO_SERVICE_CIDR` entry whose address does not parse.
    #[error("ISTIO_SERVICE_CIDR entry {entry:?} is not a CIDR")]
    NotCidr {
        /// The entry.
        entry: String,
        /// Why its address does not parse.
        source: AddrParseError,
    },
    /// An `ISTIO_SERVICE_CIDR` entry whose prefix length is not one of its address family.
    #[error("ISTIO_SERVICE_CIDR entry {0:?} has a bad prefix length")]
    BadPrefixLength(String),
}

/// Why one shell word of `cluster.env` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// `'…` without its closing quote.
    #[error("unterminated single quote")]
    UnterminatedSingleQuote,
    /// `"…` without its closing quote.
    #[error("unterminated double quote")]
    UnterminatedDoubleQuote,
    /// `$` or a back-quote, which a shell would expand.
    #[error("shell expansion ($ or `) is not supported")]
    Expansion,
    /// A backslash at the end of the line.
    #[error("trailing backslash")]
    TrailingBackslash,
    /// Unquoted white space followed by more than a comment.
    #[error("more than one word (quote the value)")]
    MoreThanOneWord,
    /// `;`, `&`, `|`, `<`, `>`, `(` or `)`.
    #[error("shell operator {0:?} is not supported")]
    Operator(char),
}

/// Why a path of the bundle cannot be placed under the install root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// It contains `..` (it could point outside the root).
    #[error("{0:?} must not contain '..'")]
    ParentDir(String),
    /// It names the root itself.
    #[error("{0:?} names no directory")]
    NoDirectory(String),
}

/// Parsed `cluster.env`, in file order (later assignments win, as in a shell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterEnv {
    vars: BTreeMap<String, String>,
}

fn valid_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Parses one shell word: quoted and unquoted segments, concatenated.
fn parse_value(raw: &str) -> Result<String, ValueError> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(x) => out.push(x),
                    None => return Err(ValueError::UnterminatedSingleQuote),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(x @ ('"' | '\\' | '$' | '`')) => out.push(x),
                        Some('\n') => {}
                        Some(x) => {
                            out.push('\\');
                            out.push(x);
                        }
                        None => return Err(ValueError::UnterminatedDoubleQuote),
                    },
                    Some('$' | '`') => return Err(ValueError::Expansion),
                    Some(x) => out.push(x),
                    None => return Err(ValueError::UnterminatedDoubleQuote),
                }
            },
            '\\' => match chars.next() {
                Some(x) => out.push(x),
                None => return Err(ValueError::TrailingBackslash),
            },
            '$' | '`' => return Err(ValueError::Expansion),
            c if c.is_whitespace() => {
                // Only a comment may follow the value.
                let rest: String = chars.collect();
                let rest = rest.trim_start();
                if rest.is_empty() || rest.starts_with('#') {
                    return Ok(out);
                }
                return Err(ValueError::MoreThanOneWord);
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' => return Err(ValueError::Operator(c)),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl ClusterEnv {
    /// Parses the file's text; names the line of the first error.
    pub fn parse(text: &str) -> Result<ClusterEnv, EnvError> {
        let mut vars = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let Some((key, raw)) = line.split_once('=') else {
                return Err(EnvError::NotAssignment { line: i + 1 });
            };
            if !valid_key(key) {
                return Err(EnvError::BadName {
                    line: i + 1,
                    key: key.to_string(),
                });
            }
            let value = parse_value(raw).map_err(|source| EnvError::BadValue {
                line: i + 1,
                key: key.to_string(),
                source,
            })?;
            vars.insert(key.to_string(), value);
        }
        Ok(ClusterEnv { vars })
    }

    /// A variable's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Every variable.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The directories pilot-agent reads and writes its workload certificate in
    /// (`PROV_CERT`, `OUTPUT_CERTS`), under `root`; `istio-start.sh`'s `./etc/certs` when unset.
    pub fn cert_dirs(&self, root: &Path) -> Result<Vec<PathBuf>, EnvError> {
        let mut dirs = Vec::new();
        for key in ["PROV_CERT", "OUTPUT_CERTS"] {
            let v = match self.get(key) {
                Some(v) if !v.is_empty() => v,
                _ => "./etc/certs",
            };
            let d = under_root(root, v).map_err(|source| EnvError::CertDir { key, source })?;
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        Ok(dirs)
    }

    /// The outbound CIDRs iptables mode captures (`ISTIO_SERVICE_CIDR`), checked: never `*`,
    /// every entry an address range.
    pub fn service_cidrs(&self) -> Result<Vec<String>, EnvError> {
        let raw = self.get("ISTIO_SERVICE_CIDR").unwrap_or("").trim();
        if raw.is_empty() {
            return Err(EnvError::NoServiceCidr);
        }
        let mut out = Vec::new();
        for c in raw.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if c == "*" {
                return Err(EnvError::CaptureAll);
            }
            let (ip, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: std::net::IpAddr = ip.parse().map_err(|source| EnvError::NotCidr {
                entry: c.to_string(),
                source,
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max => {}
                _ if len.is_empty() => {}
                _ => {
                    return Err(EnvError::BadPrefixLength(c.to_string()));
                }
            }
            out.push(c.to_string());
        }
        Ok(out)
    }
}

/// `path` (absolute, or relative to `/` as pilot-agent's `./…` defaults are) placed under
/// `root`; `..` is refused so a bundle cannot point outside it.
pub fn under_root(root: &Path, path: &str) -> Result<PathBuf, PathError> {
    let mut out = root.to_path_buf();
    let mut any = false;
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push(n);
                any = true;
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(PathError::ParentDir(path.to_string()));
            }
        }
    }
    if !any {
        return Err(PathError::NoDirectory(path.to_string()));
    }
    Ok(out)
}

/// The `discoveryAddress` of the mesh config's `defaultConfig`, read without a YAML parser:
/// the first `discoveryAddress:` key, unquoted.
pub fn discovery_address(mesh_yaml: &str) -> Option<String> {
    mesh_yaml.lines().find_map(|l| {
        let v = l.trim().strip_prefix("discoveryAddress:")?.trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_istioctl_and_sigma_write() {
        let text = "CANONICAL_REVISION='latest'\n\
            ISTIO_INBOUND_PORTS=''\n\
            ISTIO_METAJSON_LABELS='{\"app\":\"xrayr\",\"service.istio.io/canonical-name\":\"xrayr\"}'\n\
            # comment\n\
            \n\
            export POD_NAMESPACE=sigma\n\
            QUOTED='it'\\''s'\n\
            DOUBLE=\"a \\\"b\\\"\"\n\
            PROV_CERT='/var/lib/istio/certs' # trailing comment\n";
        let e = ClusterEnv::parse(text).unwrap();
        assert_eq!(e.get("CANONICAL_REVISION"), Some("latest"));
        assert_eq!(e.get("ISTIO_INBOUND_PORTS"), Some(""));
        assert_eq!(
            e.get("ISTIO_METAJSON_LABELS"),
            Some("{\"app\":\"xrayr\",\"service.istio.io/canonical-name\":\"xrayr\"}")
        );
        assert_eq!(e.get("POD_NAMESPACE"), Some("sigma"));
        assert_eq!(e.get("QUOTED"), Some("it's"));
        assert_eq!(e.get("DOUBLE"), Some("a \"b\""));
        assert_eq!(e.get("PROV_CERT"), Some("/var/lib/istio/certs"));
    }

    #[test]
    fn refuses_what_a_shell_would_expand_or_misread() {
        for bad in [
            "A=$HOME\n",
            "A=\"x$(id)\"\n",
            "A=`id`\n",
            "A='open\n",
            "A=two words\n",
            "1A=x\n",
            "just words\n",
            "A=x;rm\n",
        ] {
            let e = ClusterEnv::parse(bad).unwrap_err();
            assert!(e.to_string().contains("line 1"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn reasons_are_typed_and_keep_their_messages() {
        use std::error::Error as _;
        let e = ClusterEnv::parse("# x\nA='open\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster.env line 2 (A): unterminated single quote"
        );
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("unterminated single quote")
        );
        assert_eq!(
            ClusterEnv::parse("A=x;rm\n").unwrap_err(),
            EnvError::BadValue {
                line: 1,
                key: "A".into(),
                source: ValueError::Operator(';'),
            }
        );
        let e = ClusterEnv::parse("ISTIO_SERVICE_CIDR='nope/8'\n")
            .unwrap()
            .service_cidrs()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ISTIO_SERVICE_CIDR entry \"nope/8\" is not a CIDR"
        );
        assert!(matches!(e, EnvError::NotCidr { .. }) && e.source().is_some());
        let e = ClusterEnv::parse("OUTPUT_CERTS=/\n")
            .unwrap()
            .cert_dirs(Path::new("/r"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster.env OUTPUT_CERTS: \"/\" names no directory"
        );
    }

    #[test]
    fn cert_dirs_default_and_stay_under_root() {
        let root = Path::new("/tmp/r");
        let e = ClusterEnv::parse("").unwrap();
        assert_eq!(
            e.cert_dirs(root).unwrap(),
            vec![PathBuf::from("/tmp/r/etc/certs")]
        );
        let e = ClusterEnv::parse(
            "PROV_CERT='/var/lib/istio/certs'\nOUTPUT_CERTS='/var/lib/istio/certs'\n",
        )
        .unwrap();
        assert_eq!(
            e.cert_dirs(root).unwrap(),
            vec![PathBuf::from("/tmp/r/var/lib/istio/certs")]
        );
        let e = ClusterEnv::parse("PROV_CERT='/etc/../../x'\n").unwrap();
        assert!(e.cert_dirs(root).unwrap_err().to_string().contains(".."));
    }

    #[test]
    fn service_cidrs_are_checked() {
        let ok = ClusterEnv::parse("ISTIO_SERVICE_CIDR='10.96.0.0/12,fd00::/108'\n").unwrap();
        assert_eq!(
            ok.service_cidrs().unwrap(),
            vec!["10.96.0.0/12", "fd00::/108"]
        );
        for bad in ["'*'", "'10.0.0.0/33'", "'nope'", "''"] {
            let e = ClusterEnv::parse(&format!("ISTIO_SERVICE_CIDR={bad}\n")).unwrap();
            assert!(e.service_cidrs().is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_discovery_address() {
        let y = "defaultConfig:\n  discoveryAddress: istiod-canary.istio-system.svc:15012\n  proxyMetadata: {}\n";
        assert_eq!(
            discovery_address(y).as_deref(),
            Some("istiod-canary.istio-system.svc:15012")
        );
        assert_eq!(discovery_address("defaultConfig: {}\n"), None);
    }
}

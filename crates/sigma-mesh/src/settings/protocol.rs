//! Istio's port protocols as sigma accepts them, and the decoding of port numbers every port
//! field of the mesh settings shares (a range or a string is refused with a reason).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An Istio port protocol. Istio only knows this fixed list; sigma accepts exactly these
/// spellings so that what is stored is what Istio will be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `TCP`
    Tcp,
    /// `UDP`
    Udp,
    /// `GRPC`
    Grpc,
    /// `GRPC-Web`
    GrpcWeb,
    /// `HTTP`
    Http,
    /// `HTTP_PROXY`
    HttpProxy,
    /// `HTTP2`
    Http2,
    /// `HTTPS`
    Https,
    /// `TLS`
    Tls,
    /// `Mongo`
    Mongo,
    /// `Redis`
    Redis,
    /// `MySQL`
    MySql,
}

impl Protocol {
    /// Every protocol Istio accepts.
    pub const ALL: [Protocol; 12] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Grpc,
        Protocol::GrpcWeb,
        Protocol::Http,
        Protocol::HttpProxy,
        Protocol::Http2,
        Protocol::Https,
        Protocol::Tls,
        Protocol::Mongo,
        Protocol::Redis,
        Protocol::MySql,
    ];

    /// Istio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Http => "HTTP",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Http2 => "HTTP2",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::MySql => "MySQL",
        }
    }

    /// A lower-case token for generated port names (`grpc-web`, `http-proxy`).
    pub fn name_token(self) -> String {
        self.as_str().to_ascii_lowercase().replace('_', "-")
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = Protocol::ALL.iter().find(|p| p.as_str() == s) {
            return Ok(*p);
        }
        let list = Protocol::ALL.map(Protocol::as_str).join(", ");
        if let Some(p) = Protocol::ALL
            .iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
        {
            return Err(format!(
                "unknown protocol {s:?}: protocol names are case-sensitive, did you mean {:?}?",
                p.as_str()
            ));
        }
        Err(format!("unknown protocol {s:?}: Istio accepts only {list}"))
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Port numbers

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = u16;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number (1-65535)")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u16, E> {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| E::custom(format!("{n} is not a port (1-65535)")))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u16, E> {
        match u64::try_from(n) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!("{n} is not a port (1-65535)"))),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u16, E> {
        Err(E::custom(format!("{n} is not a port (1-65535)")))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<u16, E> {
        // Ranges are what operators most often try; Istio has no way to express them.
        if s.contains(['-', ':']) {
            return Err(E::custom(format!(
                "{s:?} looks like a port range; Istio has no port ranges, list each port"
            )));
        }
        Err(E::custom(format!(
            "{s:?} is a string; write the port as a number (1-65535)"
        )))
    }
}

pub(super) fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    d.deserialize_any(PortVisitor)
}

pub(super) fn de_opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number (1-65535) or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<u16>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u16>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u16>, D::Error> {
            de_port(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

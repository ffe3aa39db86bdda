//! Just enough DER to read when pilot-agent's workload certificate expires, without an X.509
//! library: the agent only needs the first certificate's `notAfter`. PEM and the bundle's
//! root-certificate fingerprint are sigma-types' (`sigma_types::cert`), shared with the issuer.

use sigma_types::cert::pem_certificates;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// Why a certificate's expiry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A DER element longer than what is left.
    #[error("truncated DER")]
    Truncated,
    /// A DER length in a form this reader does not take (indefinite, or over 4 bytes).
    #[error("unsupported DER length")]
    UnsupportedLength,
    /// A time with something other than digits where digits belong.
    #[error("non-digit in DER time")]
    NonDigit,
    /// A time that is neither UTCTime nor GeneralizedTime of the usual length.
    #[error("unsupported certificate time format")]
    TimeFormat,
    /// A time not ending in `Z`.
    #[error("certificate time is not in UTC")]
    NotUtc,
    /// A time that is no date and time of day (month 13, …).
    #[error("invalid certificate time")]
    InvalidTime(#[source] time::error::ComponentRange),
    /// The outer structure is not that of a certificate.
    #[error("not a DER certificate")]
    NotCertificate,
    /// No validity where the certificate should have it.
    #[error("certificate validity not found")]
    NoValidity,
    /// The PEM text cannot be read (sigma-types' reason).
    #[error("{0}")]
    Pem(String),
    /// The PEM text holds no certificate.
    #[error("no PEM certificate")]
    NoCertificate,
}

/// One DER element: (tag, content, rest).
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let (&tag, rest) = input.split_first().ok_or(CertError::Truncated)?;
    let (&len0, mut rest) = rest.split_first().ok_or(CertError::Truncated)?;
    let len = if len0 & 0x80 == 0 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(CertError::UnsupportedLength);
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | usize::from(b);
        }
        rest = &rest[n..];
        l
    };
    if rest.len() < len {
        return Err(CertError::Truncated);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn digits(s: &[u8]) -> Result<u32, CertError> {
    s.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(CertError::NonDigit)
        }
    })
}

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, v: &[u8]) -> Result<OffsetDateTime, CertError> {
    let (year, rest) = match (tag, v.len()) {
        (0x17, 13) => {
            // RFC 5280: two-digit years 50–99 are 19xx, 00–49 are 20xx.
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        (0x18, 15) => (digits(&v[..4])?, &v[4..]),
        _ => return Err(CertError::TimeFormat),
    };
    if rest[10] != b'Z' {
        return Err(CertError::NotUtc);
    }
    let bad = CertError::InvalidTime;
    let month = Month::try_from(digits(&rest[0..2])? as u8).map_err(bad)?;
    let date =
        Date::from_calendar_date(year as i32, month, digits(&rest[2..4])? as u8).map_err(bad)?;
    let time = Time::from_hms(
        digits(&rest[4..6])? as u8,
        digits(&rest[6..8])? as u8,
        digits(&rest[8..10])? as u8,
    )
    .map_err(bad)?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

/// `notAfter` of a DER X.509 certificate.
pub fn not_after(der: &[u8]) -> Result<OffsetDateTime, CertError> {
    let (tag, cert, _) = der_element(der)?;
    if tag != 0x30 {
        return Err(CertError::NotCertificate);
    }
    let (tag, tbs, _) = der_element(cert)?;
    if tag != 0x30 {
        return Err(CertError::NotCertificate);
    }
    let mut rest = tbs;
    // [0] version is optional; then serial, signature algorithm, issuer, validity.
    let (tag, _, r) = der_element(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != 0x30 {
        return Err(CertError::NoValidity);
    }
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, v, _) = der_element(after_not_before)?;
    der_time(tag, v)
}

/// `notAfter` of the first (leaf) certificate of a PEM chain.
pub fn chain_not_after(pem: &str) -> Result<OffsetDateTime, CertError> {
    let certs = pem_certificates(pem).map_err(CertError::Pem)?;
    not_after(certs.first().ok_or(CertError::NoCertificate)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ISRG Root X2, a public CA certificate: notAfter 2040-09-17T16:00:00Z.
    const ISRG_X2: &str = "-----BEGIN CERTIFICATE-----
MIICGzCCAaGgAwIBAgIQQdKd0XLq7qeAwSxs6S+HUjAKBggqhkjOPQQDAzBPMQsw
CQYDVQQGEwJVUzEpMCcGA1UEChMgSW50ZXJuZXQgU2VjdXJpdHkgUmVzZWFyY2gg
R3JvdXAxFTATBgNVBAMTDElTUkcgUm9vdCBYMjAeFw0yMDA5MDQwMDAwMDBaFw00
MDA5MTcxNjAwMDBaME8xCzAJBgNVBAYTAlVTMSkwJwYDVQQKEyBJbnRlcm5ldCBT
ZWN1cml0eSBSZXNlYXJjaCBHcm91cDEVMBMGA1UEAxMMSVNSRyBSb290IFgyMHYw
EAYHKoZIzj0CAQYFK4EEACIDYgAEzZvVn4CDCuwJSvMWSj5cz3es3mcFDR0HttwW
+1qLFNvicWDEukWVEYmO6gbf9yoWHKS5xcUy4APgHoIYOIvXRdgKam7mAHf7AlF9
ItgKbppbd9/w+kHsOdx1ymgHDB/qo0IwQDAOBgNVHQ8BAf8EBAMCAQYwDwYDVR0T
AQH/BAUwAwEB/zAdBgNVHQ4EFgQUfEKWrt5LSDv6kviejM9ti6lyN5UwCgYIKoZI
zj0EAwMDaAAwZQIwe3lORlCEwkSHRhtFcP9Ymd70/aTSVaYgLXTWNLxBo1BfASdW
tL4ndQavEi51mI38AjEAi/V3bNTIZargCyzuFJ0nN6T5U6VR5CmD1/iQMVtCnwr1
/q4AaOeMSQ+2b1tbFfLn
-----END CERTIFICATE-----
";

    #[test]
    fn reads_a_real_certificate() {
        let t = chain_not_after(&format!("{ISRG_X2}{ISRG_X2}")).unwrap();
        assert_eq!(t, time::macros::datetime!(2040-09-17 16:00:00 UTC));
    }

    #[test]
    fn refuses_garbage() {
        assert!(chain_not_after("no pem here").is_err());
        assert!(
            chain_not_after("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----").is_err()
        );
        assert!(
            chain_not_after("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----")
                .is_err()
        );
        assert!(not_after(&[0x30, 0x03, 0x30, 0x01]).is_err());
        assert!(chain_not_after("-----BEGIN CERTIFICATE-----\nAAAA").is_err());
    }

    #[test]
    fn reasons_are_typed_and_keep_their_messages() {
        use std::error::Error as _;
        assert_eq!(not_after(&[0x30]).unwrap_err(), CertError::Truncated);
        assert_eq!(not_after(&[0x30]).unwrap_err().to_string(), "truncated DER");
        let e = der_time(0x17, b"491331235959Z").unwrap_err();
        assert_eq!(e.to_string(), "invalid certificate time");
        assert!(matches!(e, CertError::InvalidTime(_)) && e.source().is_some());
        assert_eq!(
            chain_not_after("").unwrap_err().to_string(),
            "no PEM certificate"
        );
    }

    #[test]
    fn two_digit_years_follow_rfc_5280() {
        assert_eq!(der_time(0x17, b"491231235959Z").unwrap().year(), 2049);
        assert_eq!(der_time(0x17, b"500101000000Z").unwrap().year(), 1950);
        assert!(der_time(0x17, b"491331235959Z").is_err());
        assert!(der_time(0x18, b"20401231235959+").is_err());
    }
}

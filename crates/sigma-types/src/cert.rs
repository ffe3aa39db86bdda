//! The one rule for a bundle's root-certificate fingerprint, shared by the side that issues a
//! bundle (sigma-mesh) and the side that installs it (the agent): the lower-case hex SHA-256
//! of the DER of the first `CERTIFICATE` block of `root-cert.pem`.
//!
//! Just enough PEM and base64 for that, without an X.509 library: only the DER bytes are
//! needed (the agent reads a certificate's `notAfter` from them on its own).

use sha2::{Digest, Sha256};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The DER bodies of the `CERTIFICATE` blocks of a PEM text, in order (none when the text
/// holds no block). Each must be valid base64 of a DER `SEQUENCE`.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after
            .find(END)
            .ok_or("a PEM certificate block has no END line")?;
        let der = base64_decode(&after[..end])
            .map_err(|e| format!("a PEM certificate block is not valid base64: {e}"))?;
        if der.first() != Some(&0x30) {
            return Err("a PEM certificate block is not DER (no SEQUENCE)".into());
        }
        out.push(der);
        rest = &after[end + END.len()..];
    }
    Ok(out)
}

/// The DER of the first `CERTIFICATE` block of a PEM bundle.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>, String> {
    pem_certificates(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| "holds no PEM certificate".into())
}

/// Lower-case hex SHA-256 of the DER of the first certificate in `pem`: what
/// [`IstioBootstrapBundle::root_cert_sha256`](crate::mesh::IstioBootstrapBundle) states.
pub fn root_cert_sha256(pem: &str) -> Result<String, String> {
    Ok(hex(&Sha256::digest(first_certificate_der(pem)?)))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Standard base64 (RFC 4648, `=` padding optional), whitespace ignored.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return Err("data after '=' padding".into());
        }
        let v = sextet(c).ok_or_else(|| format!("invalid character {:?}", c as char))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be the zero fill of a final partial group (2 or 4 bits); 6 leftover
    // bits mean a group of one character, which encodes no byte.
    if bits >= 6 || acc != 0 || padding > 2 {
        return Err("truncated or badly padded".into());
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// ISRG Root X2, a public CA certificate.
    pub(crate) const ISRG_X2: &str = "-----BEGIN CERTIFICATE-----
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
    pub(crate) const ISRG_X2_SHA256: &str =
        "69729b8e15a86efc177a57afb7171dfc64add28c2fca8cf1507e34453ccb1470";

    #[test]
    fn base64_round_trips_known_vectors() {
        for (enc, dec) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9v\nYmFy\r\n", "foobar"),
            ("Zm9vYg", "foob"),
        ] {
            assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc:?}");
        }
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in ["Zm9v!", "Z", "Zm9=v", "Zh==", "Zm9vY==="] {
            assert!(base64_decode(bad).is_err(), "{bad:?} must fail");
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0, 0xab, 0x10, 0xff]), "00ab10ff");
    }

    #[test]
    fn the_fingerprint_is_of_the_first_certificates_der() {
        assert_eq!(root_cert_sha256(ISRG_X2).unwrap(), ISRG_X2_SHA256);
        let two = format!("{ISRG_X2}{ISRG_X2}");
        assert_eq!(root_cert_sha256(&two).unwrap(), ISRG_X2_SHA256);
        assert_eq!(pem_certificates(&two).unwrap().len(), 2);
        assert_eq!(pem_certificates("no pem").unwrap().len(), 0);
        for bad in [
            "",
            "not a certificate",
            "-----BEGIN CERTIFICATE-----\nMII!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        ] {
            assert!(root_cert_sha256(bad).is_err(), "{bad:?} must fail");
        }
    }
}

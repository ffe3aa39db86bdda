//! Key and token secrets: generation, hashing, and the non-secret prefix that identifies them.
//!
//! A secret looks like `sgm_1a2b3c4d_<48 hex>` (API keys) or `sge_…` (enrollment tokens). The
//! part up to the second `_` is the prefix: stored in clear and indexed, it finds the row; the
//! SHA-256 of the whole secret is then compared in constant time. Secrets are 192 random bits,
//! so a fast hash is enough: there is nothing to brute-force that a slow hash would protect.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Prefix of API keys.
pub const API_KEY_KIND: &str = "sgm";
/// Prefix of enrollment tokens.
pub const ENROLLMENT_KIND: &str = "sge";

/// A freshly generated secret with its stored parts.
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// The secret, shown once.
    pub plaintext: String,
    /// Its identifying prefix.
    pub prefix: String,
    /// Hex SHA-256 of the plaintext.
    pub hash: String,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

/// A new random secret of `kind` (`sgm` or `sge`).
pub fn generate(kind: &str) -> Result<NewSecret> {
    let plaintext = format!("{kind}_{}_{}", random_hex(4)?, random_hex(24)?);
    Ok(NewSecret {
        prefix: prefix_of(&plaintext),
        hash: hash(&plaintext),
        plaintext,
    })
}

/// Hex SHA-256 of a secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The identifying prefix of a secret. Secrets that do not have sigma's shape (an admin key an
/// operator chose) get `ext_` and eight hex digits of their hash, which reveals nothing usable.
pub fn prefix_of(secret: &str) -> String {
    let mut parts = secret.splitn(3, '_');
    if let (Some(kind), Some(id), Some(rest)) = (parts.next(), parts.next(), parts.next())
        && (kind == API_KEY_KIND || kind == ENROLLMENT_KIND)
        && id.len() == 8
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && rest.len() >= 32
    {
        return format!("{kind}_{id}");
    }
    format!("ext_{}", &hash(secret)[..8])
}

/// Constant-time comparison of a secret with a stored hash.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    let computed = hash(secret);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Checks an operator-chosen secret (`SIGMA_ADMIN_KEY`): long enough to be unguessable, and
/// only visible ASCII so it survives headers and shells.
pub fn check_chosen(secret: &str) -> Result<(), String> {
    if secret.len() < 32 {
        return Err("must be at least 32 characters".into());
    }
    if secret.len() > 256 {
        return Err("must be at most 256 characters".into());
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_their_prefix_and_hash() {
        let s = generate(API_KEY_KIND).unwrap();
        assert!(s.plaintext.starts_with("sgm_"));
        assert_eq!(s.plaintext.len(), 4 + 8 + 1 + 48);
        assert_eq!(prefix_of(&s.plaintext), s.prefix);
        assert!(matches(&s.plaintext, &s.hash));
        assert!(!matches("sgm_00000000_x", &s.hash));
        assert_ne!(generate(API_KEY_KIND).unwrap().plaintext, s.plaintext);
    }

    #[test]
    fn foreign_secrets_get_a_derived_prefix() {
        let p = prefix_of("my-own-admin-key-that-is-long-enough-1234");
        assert!(p.starts_with("ext_") && p.len() == 12);
        assert!(prefix_of("sgm_zzzzzzzz_0123456789abcdef0123456789abcdef").starts_with("ext_"));
        assert!(check_chosen("short").is_err());
        assert!(check_chosen(&"a b".repeat(20)).is_err());
        assert!(check_chosen(&"x".repeat(40)).is_ok());
    }
}

//! Random identifiers and secrets, and keyed hashes of secrets (HMAC-SHA256 with the store's
//! pepper), all from aws-lc-rs: tokens and API keys are stored only as MACs, so a copy of the
//! store does not hold usable credentials.

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Lowercase RFC 4648 base32 alphabet: 256 is a multiple of 32, so masking a random byte to 5
/// bits is unbiased.
const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `n` random lowercase base32 characters (5 bits of entropy each).
pub fn random_b32(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| B32[(b & 31) as usize] as char).collect()
}

/// `n` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("the OS random source works");
    bytes
}

/// A generated organization id: `org_` + 12 base32 characters (SPEC §2).
pub fn new_org_id() -> String {
    format!("org_{}", random_b32(12))
}

/// A MAC of a secret, as stored.
pub type Mac = [u8; 32];

/// The store's secret key for hashing credentials (HMAC-SHA256).
#[derive(Clone)]
pub struct Pepper(hmac::Key);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(..)")
    }
}

impl Pepper {
    /// A pepper from its stored bytes.
    pub fn new(key: &[u8]) -> Pepper {
        Pepper(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The MAC of `data` under domain `domain` (so a token MAC never matches an API key MAC).
    pub fn mac(&self, domain: &str, data: &[u8]) -> Mac {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `data` has MAC `expected`, compared in constant time.
    pub fn verify(&self, domain: &str, data: &[u8], expected: &Mac) -> bool {
        let got = self.mac(domain, data);
        aws_lc_rs::constant_time::verify_slices_are_equal(&got, expected).is_ok()
    }
}

/// Lowercase hex of bytes (store keys).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_macs() {
        let id = new_org_id();
        assert!(id.starts_with("org_") && id.len() == 16 && crate::identity::valid_org_id(&id));
        assert_ne!(random_b32(20), random_b32(20));
        let p = Pepper::new(b"k");
        let m = p.mac("token", b"secret");
        assert!(p.verify("token", b"secret", &m));
        assert!(!p.verify("token", b"secreT", &m));
        assert!(!p.verify("api_key", b"secret", &m), "domains are separated");
        assert_eq!(hex(&[0, 255]), "00ff");
    }
}

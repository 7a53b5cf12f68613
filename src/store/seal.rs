//! Encryption at rest (docs/durability.md, "Encryption at rest"): values in the stores sealed
//! with AES-256-GCM-SIV (aws-lc-rs `RandomizedNonceKey`: a fresh random 96-bit nonce per value;
//! GCM-SIV stays safe if two values ever draw the same nonce, so a key needs no write counter).
//!
//! A sealed value is `0xC5, id length, key id, nonce (12), ciphertext, tag (16)`. The key id
//! says which key opens it, so keys rotate by adding a new one: new writes use the newest key,
//! older values open with the key they name. The additional data is the keyspace name and the
//! row key, so a value moved to another row does not open.
//!
//! A plain value (it never starts with 0xC5) where a configured key would have sealed it is
//! refused: anyone able to write the data directory could otherwise plant a policy or a
//! password hash. The first start with a new key seals the plain values it covers (a reseal
//! pass over every store); `encryption.accept_plain = true` is the explicit switch for reading
//! such values anyway, and `coremq data export` always reads them.
//!
//! A key may belong to one org: that org's values are sealed with it, and listing its id in
//! `destroyed_keys` after deleting the key file drops whatever it sealed at the next start
//! (crypto-shredding). A value whose key is neither configured nor destroyed stops the start.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM_SIV, NONCE_LEN};

use crate::config::{EncryptionConfig, KeyMaterial};

/// First byte of a sealed value (plain values start with a format version or `{`).
pub const SEALED: u8 = 0xC5;
const TAG_LEN: usize = 16;

/// Why a stored value does not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed with a key listed in `destroyed_keys`: the value is gone by design.
    Destroyed(String),
    /// Sealed with a key id that is not configured.
    UnknownKey(String),
    /// The key with that id does not open it: a different key under the same id, or corrupt
    /// data.
    WrongKey(String),
    /// Not a well-formed sealed value.
    Corrupt,
    /// Stored plain where key `id` would have sealed it.
    Plain(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Destroyed(id) => write!(f, "sealed with destroyed key '{id}'"),
            OpenError::UnknownKey(id) => write!(
                f,
                "sealed with encryption key '{id}', which is not configured (add it to \
                 [[encryption.key]], or list it in encryption.destroyed_keys to drop its data)"
            ),
            OpenError::WrongKey(id) => write!(
                f,
                "does not open with encryption key '{id}': the configured key is not the one \
                 this data was sealed with, or the data is corrupt"
            ),
            OpenError::Corrupt => f.write_str("corrupt sealed value"),
            OpenError::Plain(id) => write!(
                f,
                "stored unencrypted where encryption key '{id}' would have sealed it; refused (set \
                 encryption.accept_plain = true to read such values, or move the data through \
                 coremq data export / import)"
            ),
        }
    }
}

struct Key {
    aead: RandomizedNonceKey,
}

/// The configured keys: which seals new values (per org, else the global one), and which open
/// stored ones.
#[derive(Default)]
pub struct Sealer {
    keys: HashMap<String, Key>,
    global: Option<String>,
    per_org: HashMap<String, String>,
    destroyed: HashSet<String>,
    accept_plain: bool,
    /// A key is used for the first time: stores seal the plain values it covers when opened.
    reseal: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Sealer").field("keys", &ids).field("global", &self.global).finish()
    }
}

/// Reads a key: 64 hex digits (32 bytes), surrounding whitespace ignored.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("expected 64 hex digits (32 bytes), got {} characters", t.len()));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A new random key, as 64 hex digits (`coremq data keygen`).
pub fn generate_key_hex() -> String {
    crate::auth::secret::random_bytes::<32>().iter().map(|b| format!("{b:02x}")).collect()
}

impl Sealer {
    /// No encryption: values are written plain, and a sealed value found is an error.
    pub fn plain() -> Sealer {
        Sealer::default()
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Loads the keys the config names (files, environment variables). Errors name the key.
    pub fn load(cfg: &EncryptionConfig) -> Result<Sealer, String> {
        let mut s = Sealer {
            destroyed: cfg.destroyed_keys.iter().cloned().collect(),
            accept_plain: cfg.accept_plain,
            ..Sealer::default()
        };
        for (i, k) in cfg.keys.iter().enumerate() {
            let what = format!("encryption.key[{i}] (id \"{}\")", k.id);
            let text = match &k.material {
                KeyMaterial::File(p) => {
                    check_key_file_mode(p).map_err(|e| format!("{what}: {e}"))?;
                    std::fs::read_to_string(p)
                        .map_err(|e| format!("{what}: cannot read {}: {e}", p.display()))?
                }
                KeyMaterial::Env(name) => std::env::var(name)
                    .map_err(|_| format!("{what}: environment variable {name} is not set"))?,
            };
            let bytes = parse_key(&text).map_err(|e| format!("{what}: {e}"))?;
            let aead = RandomizedNonceKey::new(&AES_256_GCM_SIV, &bytes)
                .map_err(|_| format!("{what}: key rejected by AES-256-GCM-SIV"))?;
            s.keys.insert(k.id.clone(), Key { aead });
            // The last key listed for an org (or for everyone) seals new values.
            match &k.org {
                Some(org) => {
                    s.per_org.insert(org.clone(), k.id.clone());
                }
                None => s.global = Some(k.id.clone()),
            }
        }
        Ok(s)
    }

    fn key_for(&self, org: Option<&str>) -> Option<(&str, &Key)> {
        let id = org.and_then(|o| self.per_org.get(o)).or(self.global.as_ref())?;
        Some((id.as_str(), self.keys.get(id)?))
    }

    /// Seals `plain` for a row of `org` (`None`: not an org's row) with additional data `aad`;
    /// without a key for it, returns `plain` as it is.
    pub fn seal(&self, org: Option<&str>, aad: &[u8], plain: Vec<u8>) -> Vec<u8> {
        match self.key_for(org) {
            Some((id, key)) => seal_with(id, key, aad, &plain),
            None => plain,
        }
    }

    /// The key id a sealed value names (`None` for a plain value).
    pub fn key_id(v: &[u8]) -> Option<&str> {
        if v.first() != Some(&SEALED) {
            return None;
        }
        let n = *v.get(1)? as usize;
        std::str::from_utf8(v.get(2..2 + n)?).ok()
    }

    /// Whether `v` was sealed with a key listed in `destroyed_keys`.
    pub fn is_destroyed(&self, v: &[u8]) -> bool {
        Sealer::key_id(v).is_some_and(|id| self.destroyed.contains(id))
    }

    /// This sealer reads plain values wherever they are (`coremq data export`).
    pub fn accepting_plain(mut self) -> Sealer {
        self.accept_plain = true;
        self
    }

    /// Whether `v` is stored plain.
    pub fn is_plain(v: &[u8]) -> bool {
        v.first() != Some(&SEALED)
    }

    /// Whether a value of `org`'s row (`None`: not an org's) would be sealed.
    pub fn seals(&self, org: Option<&str>) -> bool {
        self.key_for(org).is_some()
    }

    /// Asks the stores to seal the plain values a key now covers, when they are opened.
    pub fn request_reseal(&self) {
        self.reseal.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the stores must seal plain values when opened ([`Sealer::request_reseal`]).
    pub fn reseal_requested(&self) -> bool {
        self.reseal.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens a stored value of `org`'s row (`None`: not an org's). A plain value is returned as
    /// it is where no key would have sealed it (or `accept_plain` is set), else refused.
    pub fn open<'a>(&self, org: Option<&str>, aad: &[u8], v: &'a [u8]) -> Result<Cow<'a, [u8]>, OpenError> {
        if Sealer::is_plain(v) {
            return match self.key_for(org) {
                Some((id, _)) if !self.accept_plain => Err(OpenError::Plain(id.to_string())),
                _ => Ok(Cow::Borrowed(v)),
            };
        }
        let id = Sealer::key_id(v).ok_or(OpenError::Corrupt)?;
        if self.destroyed.contains(id) {
            return Err(OpenError::Destroyed(id.to_string()));
        }
        let key = self.keys.get(id).ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let head = 2 + id.len() + NONCE_LEN;
        if v.len() < head + TAG_LEN {
            return Err(OpenError::Corrupt);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&v[head - NONCE_LEN..head]).map_err(|_| OpenError::Corrupt)?;
        let mut buf = v[head..].to_vec();
        let n = key
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| OpenError::WrongKey(id.to_string()))?
            .len();
        buf.truncate(n);
        Ok(Cow::Owned(buf))
    }

    /// Checks every configured key against the check values in `data_dir/keys.check` (a
    /// known plaintext sealed by each key the first time it was used), so a wrong key is
    /// named at start before any store is read; adds check values for new keys.
    /// Returns whether a key was used for the first time.
    pub fn verify(&self, data_dir: &Path) -> Result<bool, String> {
        if !self.enabled() {
            return Ok(false);
        }
        let path = data_dir.join("keys.check");
        let mut checks: std::collections::BTreeMap<String, String> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: corrupt: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let mut added = false;
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        for id in ids {
            let aad = format!("keys.check/{id}");
            match checks.get(id) {
                Some(hex) => {
                    let v =
                        hex_decode(hex).ok_or_else(|| format!("{}: corrupt entry {id}", path.display()))?;
                    match self.open(None, aad.as_bytes(), &v) {
                        Ok(p) if &p[..] == CHECK_TEXT => {}
                        _ => {
                            return Err(format!(
                                "encryption key '{id}' is not the key this data directory was \
                                 written with ({} holds a check value it does not open)",
                                path.display()
                            ))
                        }
                    }
                }
                None => {
                    let out = seal_with(id, &self.keys[id], aad.as_bytes(), CHECK_TEXT);
                    checks.insert(id.clone(), out.iter().map(|b| format!("{b:02x}")).collect());
                    added = true;
                }
            }
        }
        if added {
            std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
            let tmp = path.with_extension("check.tmp");
            let body = serde_json::to_vec_pretty(&checks).expect("serializes");
            std::fs::write(&tmp, body)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
        Ok(added)
    }
}

const CHECK_TEXT: &[u8] = b"coremq key check v1";

/// `0xC5, id length, id, nonce, ciphertext, tag`: `plain` sealed with `key` (id `id`).
fn seal_with(id: &str, key: &Key, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let head = 2 + id.len() + NONCE_LEN;
    let mut out = Vec::with_capacity(head + plain.len() + TAG_LEN);
    out.push(SEALED);
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    out.resize(head, 0);
    out.extend_from_slice(plain);
    let (nonce, tag) = key
        .aead
        .seal_in_place_separate_tag(Aad::from(aad), &mut out[head..])
        .expect("AES-256-GCM-SIV seals any value under 64 GiB");
    out[head - NONCE_LEN..head].copy_from_slice(nonce.as_ref());
    out.extend_from_slice(tag.as_ref());
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A key file readable by group or others is refused: the key is the data.
fn check_key_file_mode(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if m.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            p.display(),
            m.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    /// A sealer from (id, org, key byte) triples, keys written to 0600 files.
    fn sealer(keys: &[(&str, Option<&str>, u8)], destroyed: &[&str]) -> Sealer {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EncryptionConfig::default();
        for (i, (id, org, byte)) in keys.iter().enumerate() {
            let p = dir.path().join(format!("k{i}"));
            std::fs::write(&p, format!("{byte:02x}").repeat(32)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            cfg.keys.push(KeyConfig {
                id: id.to_string(),
                org: org.map(str::to_string),
                material: KeyMaterial::File(p),
            });
        }
        cfg.destroyed_keys = destroyed.iter().map(|s| s.to_string()).collect();
        Sealer::load(&cfg).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_its_row() {
        let s = sealer(&[("a", None, 0x11)], &[]);
        let v = s.seal(None, b"queue/k1", b"payload".to_vec());
        assert_eq!(Sealer::key_id(&v), Some("a"));
        assert!(!v.windows(7).any(|w| w == b"payload"), "the plaintext is not in the sealed value");
        assert_eq!(&s.open(None, b"queue/k1", &v).unwrap()[..], b"payload");
        assert_eq!(s.open(None, b"queue/k2", &v).unwrap_err(), OpenError::WrongKey("a".into()), "moved row");
        let other = sealer(&[("a", None, 0x22)], &[]);
        assert_eq!(other.open(None, b"queue/k1", &v).unwrap_err(), OpenError::WrongKey("a".into()));
        assert_eq!(
            Sealer::plain().open(None, b"queue/k1", &v).unwrap_err(),
            OpenError::UnknownKey("a".into())
        );
        for cut in 1..v.len() {
            assert!(s.open(None, b"queue/k1", &v[..cut]).is_err(), "cut at {cut}");
        }
        // A plain value where a key would have sealed it is refused (it could be planted),
        // unless the operator accepts plain values; where no key would seal it, it reads.
        assert_eq!(s.open(None, b"queue/k1", b"\x01plain").unwrap_err(), OpenError::Plain("a".into()));
        assert_eq!(s.open(Some("acme"), b"queue/k1", b"{}").unwrap_err(), OpenError::Plain("a".into()));
        let lenient = sealer(&[("a", None, 0x11)], &[]).accepting_plain();
        assert_eq!(&lenient.open(None, b"queue/k1", b"\x01plain").unwrap()[..], b"\x01plain");
        let org_only = sealer(&[("k", Some("acme"), 0x11)], &[]);
        assert_eq!(&org_only.open(Some("other"), b"r", b"{}").unwrap()[..], b"{}");
        assert_eq!(&org_only.open(None, b"r", b"{}").unwrap()[..], b"{}");
        assert_eq!(org_only.open(Some("acme"), b"r", b"{}").unwrap_err(), OpenError::Plain("k".into()));
    }

    #[test]
    fn keys_rotate_and_org_keys_seal_their_org_and_can_be_destroyed() {
        let old = sealer(&[("a", None, 0x11)], &[]);
        let v_old = old.seal(None, b"r", b"x".to_vec());
        let s = sealer(&[("a", None, 0x11), ("b", None, 0x22), ("acme", Some("acme"), 0x33)], &[]);
        assert_eq!(Sealer::key_id(&s.seal(None, b"r", b"x".to_vec())), Some("b"), "newest global key");
        assert_eq!(Sealer::key_id(&s.seal(Some("other"), b"r", b"x".to_vec())), Some("b"));
        let v_acme = s.seal(Some("acme"), b"r", b"x".to_vec());
        assert_eq!(Sealer::key_id(&v_acme), Some("acme"));
        assert_eq!(&s.open(None, b"r", &v_old).unwrap()[..], b"x", "old values open with the old key");
        let shredded = sealer(&[("b", None, 0x22)], &["acme"]);
        assert!(shredded.is_destroyed(&v_acme));
        assert_eq!(shredded.open(None, b"r", &v_acme).unwrap_err(), OpenError::Destroyed("acme".into()));
    }

    #[test]
    fn the_key_check_names_a_wrong_key_before_any_store_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(sealer(&[("a", None, 0x11)], &[]).verify(dir.path()).unwrap(), "a new key");
        assert!(!sealer(&[("a", None, 0x11)], &[]).verify(dir.path()).unwrap());
        let e = sealer(&[("a", None, 0x22)], &[]).verify(dir.path()).unwrap_err();
        assert!(e.contains("encryption key 'a' is not the key"), "{e}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, generate_key_hex()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = EncryptionConfig {
            keys: vec![KeyConfig { id: "a".into(), org: None, material: KeyMaterial::File(p) }],
            destroyed_keys: vec![],
            accept_plain: false,
        };
        let e = Sealer::load(&cfg).unwrap_err();
        assert!(e.contains("encryption.key[0]") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key(&format!("  {}\n", "ab".repeat(32))).is_ok());
        assert!(parse_key("abc").unwrap_err().contains("64 hex digits"));
        assert!(parse_key(&"zz".repeat(32)).is_err());
        assert_eq!(parse_key(&generate_key_hex()).unwrap().len(), 32);
    }
}

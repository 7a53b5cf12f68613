//! Row keys and sealing data shared by the shards' stores and the control store, and the
//! storage error both report.

/// A storage error, with what was being done.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError(format!("store: {e}"))
    }
}

/// `org \0 rest`.
pub fn org_key(org: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(org.len() + 1 + rest.len());
    k.extend_from_slice(org.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// The additional data a row's value is sealed with: keyspace name, NUL, row key.
pub fn row_aad(ks: &str, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(ks.len() + 1 + key.len());
    a.extend_from_slice(ks.as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

/// The org and the rest of a row key (`org \0 rest`).
pub(crate) fn split_key(k: &[u8]) -> Option<(&str, &str)> {
    let i = k.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&k[..i]).ok()?, std::str::from_utf8(&k[i + 1..]).ok()?))
}

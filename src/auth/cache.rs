//! The verified-credential cache, shared by all shards: a client verified on one shard
//! reconnects on any other without another Argon2id hash. Per org, two LRUs of credential
//! fingerprints — good verdicts and bad ones — for known users only: a guesser's bad verdicts
//! never evict a good one, and names that do not exist are never remembered (their decoy
//! checks stay as slow as a real one). Touched only on CONNECT, for a lookup: the lock is
//! never held across anything slow.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::secret::Mac;

/// Good verdicts remembered per org.
pub const GOOD_PER_ORG: usize = 4_096;
/// Bad verdicts remembered per org.
pub const BAD_PER_ORG: usize = 1_024;

struct OrgCache {
    good: LruCache<Mac, ()>,
    bad: LruCache<Mac, ()>,
}

impl OrgCache {
    fn new() -> OrgCache {
        let n = |x| NonZeroUsize::new(x).expect("non-zero");
        OrgCache { good: LruCache::new(n(GOOD_PER_ORG)), bad: LruCache::new(n(BAD_PER_ORG)) }
    }
}

/// Verdicts on known users' credentials, per org.
#[derive(Default)]
pub struct CredentialCache {
    orgs: Mutex<HashMap<Arc<str>, OrgCache>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCache(..)")
    }
}

impl CredentialCache {
    /// The remembered verdict on fingerprint `fp` in `org` (`true` = good).
    pub fn get(&self, org: &str, fp: &Mac) -> Option<bool> {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let o = orgs.get_mut(org)?;
        if o.good.get(fp).is_some() {
            return Some(true);
        }
        o.bad.get(fp).map(|()| false)
    }

    /// Remembers a known user's verdict.
    pub fn put(&self, org: &Arc<str>, fp: Mac, ok: bool) {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let o = orgs.entry(org.clone()).or_insert_with(OrgCache::new);
        if ok {
            o.bad.pop(&fp);
            o.good.put(fp, ());
        } else {
            o.bad.put(fp, ());
        }
    }

    /// Forgets everything of `org` (deleted).
    pub fn forget_org(&self, org: &str) {
        self.orgs.lock().unwrap_or_else(|p| p.into_inner()).remove(org);
    }

    /// Verdicts remembered for `org` (good, bad).
    pub fn len(&self, org: &str) -> (usize, usize) {
        let orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        orgs.get(org).map_or((0, 0), |o| (o.good.len(), o.bad.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: usize) -> Mac {
        let mut m = [0; 32];
        m[..8].copy_from_slice(&(i as u64).to_le_bytes());
        m
    }

    #[test]
    fn guessing_never_evicts_a_good_verdict() {
        let c = CredentialCache::default();
        let acme: Arc<str> = "acme".into();
        c.put(&acme, fp(0), true);
        for i in 1..10 * BAD_PER_ORG {
            c.put(&acme, fp(i), false);
        }
        assert_eq!(c.get("acme", &fp(0)), Some(true));
        assert_eq!(c.len("acme"), (1, BAD_PER_ORG));
        assert_eq!(c.get("acme", &fp(1)), None, "oldest bad verdict evicted");
        assert_eq!(c.get("acme", &fp(10 * BAD_PER_ORG - 1)), Some(false));
    }

    #[test]
    fn orgs_are_bounded_apart_and_forgotten() {
        let c = CredentialCache::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for i in 0..GOOD_PER_ORG + 10 {
            c.put(&a, fp(i), true);
        }
        c.put(&b, fp(0), true);
        assert_eq!(c.len("a").0, GOOD_PER_ORG);
        assert_eq!(c.get("b", &fp(0)), Some(true), "another org's churn does not evict");
        c.forget_org("b");
        assert_eq!(c.get("b", &fp(0)), None);
    }
}

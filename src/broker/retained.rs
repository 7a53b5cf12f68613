//! Retained messages, replicated on every shard (each shard answers its own subscribers from
//! its replica). Writes carry a global sequence; the highest sequence wins, so replicas
//! converge whatever order the mesh delivers them in.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;

use super::msg::Msg;
use crate::codec::topic::matches;

/// One org's retained messages: topic -> (message, sequence of the write that set it).
type OrgRetained = HashMap<Box<str>, (Arc<Msg>, u64), RandomState>;

/// Per-org retained messages on one shard.
#[derive(Debug, Default)]
pub struct Retained {
    orgs: HashMap<Arc<str>, OrgRetained, RandomState>,
    /// Per org, retained topics the broker made (`$SYS/…`): they do not count against the
    /// org's retained quota.
    broker_owned: HashMap<Arc<str>, usize, RandomState>,
    /// Highest sequence of a delete per (org, topic), so a late older set cannot resurrect it.
    tombstones: HashMap<(Arc<str>, Box<str>), u64, RandomState>,
}

/// Outcome of applying a retained write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored or replaced.
    Stored,
    /// Deleted (empty payload).
    Deleted,
    /// Ignored: an equal or newer write was already applied.
    Stale,
    /// Refused: the org is at its retained-message limit.
    Full,
}

impl Retained {
    /// Whether a retained publish on `topic` would be refused for the org's limit `max`
    /// (replacing or deleting a topic never is).
    pub fn is_full_for(&self, org: &str, topic: &str, max: usize) -> bool {
        !topic.starts_with('$')
            && self.orgs.get(org).is_some_and(|m| !m.contains_key(topic) && self.tenant_len(org, m) >= max)
    }

    /// Retained topics of `org` that count against its quota (not the broker's `$` ones).
    fn tenant_len(&self, org: &str, m: &OrgRetained) -> usize {
        m.len().saturating_sub(self.broker_owned.get(org).copied().unwrap_or(0))
    }

    /// Keeps the count of broker-made (`$…`) topics right as one appears (`+1`) or goes (`-1`).
    fn note_broker_owned(&mut self, org: &Arc<str>, broker_made: bool, delta: isize) {
        if broker_made {
            let n = self.broker_owned.entry(org.clone()).or_default();
            *n = n.saturating_add_signed(delta);
        }
    }

    /// Applies a set (non-empty payload) or delete (empty payload) with sequence `seq`.
    /// `msg` must be an owned copy.
    pub fn apply(&mut self, org: &Arc<str>, msg: Msg, seq: u64, max: usize) -> RetainOutcome {
        let map = self.orgs.entry(org.clone()).or_default();
        let topic = msg.topic.as_str();
        if let Some((_, old)) = map.get(topic) {
            if *old >= seq {
                return RetainOutcome::Stale;
            }
        }
        let tomb_key = (org.clone(), Box::<str>::from(topic));
        if let Some(t) = self.tombstones.get(&tomb_key) {
            if *t >= seq {
                return RetainOutcome::Stale;
            }
        }
        if msg.payload.is_empty() {
            if map.remove(topic).is_some() {
                self.note_broker_owned(org, topic.starts_with('$'), -1);
            }
            self.tombstones.insert(tomb_key, seq);
            if self.tombstones.len() > 100_000 {
                // Bound: tombstones only guard against reordering within the mesh, which is
                // short-lived; forgetting old ones is safe in practice.
                self.tombstones.clear();
            }
            return RetainOutcome::Deleted;
        }
        let new = !map.contains_key(topic);
        let broker_made = topic.starts_with('$');
        if new && !broker_made {
            let len = map.len().saturating_sub(self.broker_owned.get(org).copied().unwrap_or(0));
            if len >= max {
                return RetainOutcome::Full;
            }
        }
        map.insert(topic.into(), (Arc::new(msg), seq));
        if new {
            self.note_broker_owned(org, broker_made, 1);
        }
        RetainOutcome::Stored
    }

    /// Retained messages of `org` matching `filter`.
    pub fn matching<'a>(&'a self, org: &str, filter: &'a str) -> impl Iterator<Item = &'a Arc<Msg>> + 'a {
        self.orgs
            .get(org)
            .into_iter()
            .flat_map(move |m| m.iter().filter(move |(t, _)| matches(filter, t)).map(|(_, (m, _))| m))
    }

    /// Removes `org`'s retained messages received before `cutoff_ms`; returns their topics
    /// and sequences.
    pub fn expire(&mut self, org: &str, cutoff_ms: u64) -> Vec<(Box<str>, u64)> {
        let Some(map) = self.orgs.get_mut(org) else { return Vec::new() };
        let mut out = Vec::new();
        map.retain(|t, (m, seq)| {
            let keep = m.received_ms >= cutoff_ms;
            if !keep {
                out.push((t.clone(), *seq));
            }
            keep
        });
        let org: Arc<str> = org.into();
        for (t, _) in &out {
            self.note_broker_owned(&org, t.starts_with('$'), -1);
        }
        out
    }

    /// Forgets every retained message of `org` (the org was deleted).
    pub fn purge(&mut self, org: &str) {
        self.orgs.remove(org);
        self.broker_owned.remove(org);
        self.tombstones.retain(|(o, _), _| &**o != org);
    }

    /// Number of retained messages in `org`.
    pub fn count(&self, org: &str) -> usize {
        self.orgs.get(org).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqStr, QoS};

    fn msg(topic: &str) -> Msg {
        Msg {
            topic: MqStr::copy_from(topic).unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            props: Default::default(),
            received_ms: 0,
        }
    }

    #[test]
    fn broker_topics_do_not_use_the_orgs_retained_quota() {
        let mut r = Retained::default();
        let org: Arc<str> = "acme".into();
        let mut seq = 0;
        let mut put = |r: &mut Retained, t: &str| {
            seq += 1;
            r.apply(&org, msg(t), seq, 2)
        };
        for i in 0..7 {
            assert_eq!(put(&mut r, &format!("$SYS/broker/x{i}")), RetainOutcome::Stored);
        }
        assert_eq!(put(&mut r, "a"), RetainOutcome::Stored);
        assert_eq!(put(&mut r, "b"), RetainOutcome::Stored);
        assert_eq!(put(&mut r, "c"), RetainOutcome::Full, "the org's own limit still holds");
        assert!(r.is_full_for("acme", "c", 2) && !r.is_full_for("acme", "$SYS/broker/y", 2));
    }
}

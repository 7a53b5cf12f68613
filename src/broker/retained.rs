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
        self.orgs.get(org).is_some_and(|m| !m.contains_key(topic) && m.len() >= max)
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
            map.remove(topic);
            self.tombstones.insert(tomb_key, seq);
            if self.tombstones.len() > 100_000 {
                // Bound: tombstones only guard against reordering within the mesh, which is
                // short-lived; forgetting old ones is safe in practice.
                self.tombstones.clear();
            }
            return RetainOutcome::Deleted;
        }
        if !map.contains_key(topic) && map.len() >= max {
            return RetainOutcome::Full;
        }
        map.insert(topic.into(), (Arc::new(msg), seq));
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
        out
    }

    /// Forgets every retained message of `org` (the org was deleted).
    pub fn purge(&mut self, org: &str) {
        self.orgs.remove(org);
        self.tombstones.retain(|(o, _), _| &**o != org);
    }

    /// Number of retained messages in `org`.
    pub fn count(&self, org: &str) -> usize {
        self.orgs.get(org).map_or(0, |m| m.len())
    }
}

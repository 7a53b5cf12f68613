//! The topic trie. See the module docs of [`crate::router`].

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;
use smallvec::SmallVec;

use crate::codec::topic::{classify, FilterKind};
use crate::codec::SubOptions;

/// Index of a session in its shard's session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef(pub u32);

/// One local subscription on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Subscribing session on this shard.
    pub session: SessionRef,
    /// Options given at SUBSCRIBE.
    pub opts: SubOptions,
    /// Subscription identifier (5.0), if any.
    pub sub_id: Option<u32>,
    /// A deny rule of the subscriber's ACL overlaps the filter: check each delivery.
    pub checked: bool,
}

/// A shared-subscription group on one node.
#[derive(Debug)]
struct Group {
    /// Share name.
    name: Box<str>,
    /// Full `$share/g/filter` string, sent to a remote shard picked to deliver.
    full: Arc<str>,
    /// Members on this shard.
    members: Vec<Sub>,
    /// Other shards with at least one member.
    remote: u64,
    /// Round-robin cursor over `members.len() + remote.count_ones()`.
    next: u32,
}

const NONE: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    parent: u32,
    key: Box<str>,
    children: HashMap<Box<str>, u32, RandomState>,
    plus: u32,
    hash: u32,
    subs: Vec<Sub>,
    groups: Vec<Group>,
    remote: u64,
}

impl Node {
    fn new(parent: u32, key: &str) -> Node {
        Node {
            parent,
            key: key.into(),
            children: HashMap::default(),
            plus: NONE,
            hash: NONE,
            subs: Vec::new(),
            groups: Vec::new(),
            remote: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus == NONE
            && self.hash == NONE
            && self.subs.is_empty()
            && self.groups.is_empty()
            && self.remote == 0
    }
}

#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
    free: Vec<u32>,
}

impl Trie {
    fn new() -> Trie {
        Trie { nodes: vec![Node::new(NONE, "")], free: Vec::new() }
    }

    fn alloc(&mut self, parent: u32, key: &str) -> u32 {
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = Node::new(parent, key);
            i
        } else {
            self.nodes.push(Node::new(parent, key));
            (self.nodes.len() - 1) as u32
        }
    }

    /// Walks (creating) the node for `filter`.
    fn node_mut(&mut self, filter: &str) -> u32 {
        let mut n = 0u32;
        for level in filter.split('/') {
            let next = match level {
                "+" => self.nodes[n as usize].plus,
                "#" => self.nodes[n as usize].hash,
                _ => self.nodes[n as usize].children.get(level).copied().unwrap_or(NONE),
            };
            n = if next != NONE {
                next
            } else {
                let c = self.alloc(n, level);
                let node = &mut self.nodes[n as usize];
                match level {
                    "+" => node.plus = c,
                    "#" => node.hash = c,
                    _ => {
                        node.children.insert(level.into(), c);
                    }
                }
                c
            };
        }
        n
    }

    /// Finds the node for `filter` without creating it.
    fn find(&self, filter: &str) -> Option<u32> {
        let mut n = 0u32;
        for level in filter.split('/') {
            let node = &self.nodes[n as usize];
            n = match level {
                "+" => node.plus,
                "#" => node.hash,
                _ => node.children.get(level).copied().unwrap_or(NONE),
            };
            if n == NONE {
                return None;
            }
        }
        Some(n)
    }

    /// Removes empty nodes from `n` upwards.
    fn prune(&mut self, mut n: u32) {
        while n != 0 && self.nodes[n as usize].is_empty() {
            let parent = self.nodes[n as usize].parent;
            let key = std::mem::take(&mut self.nodes[n as usize].key);
            let p = &mut self.nodes[parent as usize];
            match &*key {
                "+" => p.plus = NONE,
                "#" => p.hash = NONE,
                _ => {
                    p.children.remove(&*key);
                }
            }
            self.free.push(n);
            n = parent;
        }
    }
}

/// A shared-group delivery that a remote shard must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPick {
    /// Shard that must deliver to one of its members.
    pub shard: u8,
    /// The full `$share/g/filter`.
    pub filter: Arc<str>,
}

/// Result of routing one PUBLISH, reused across calls.
#[derive(Debug, Default)]
pub struct Matches {
    /// Local subscriptions that match (may hold several per session; the caller merges).
    pub subs: Vec<Sub>,
    /// Remote shards with matching non-shared subscriptions.
    pub remote: u64,
    /// Shared groups whose pick fell on a remote shard.
    pub shared_remote: SmallVec<[SharedPick; 2]>,
}

impl Matches {
    /// Empties the result, keeping capacity.
    pub fn clear(&mut self) {
        self.subs.clear();
        self.remote = 0;
        self.shared_remote.clear();
    }
}

/// The per-shard subscription index over all organizations.
#[derive(Debug)]
pub struct Router {
    shard: u8,
    orgs: HashMap<Arc<str>, Trie, RandomState>,
    stack: Vec<(u32, usize, bool)>,
}

/// What a subscribe or unsubscribe changed, so the caller can tell other shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The session already had this filter (options replaced) / had it (for unsubscribe).
    pub existed: bool,
    /// This shard's first subscriber (subscribe) or last (unsubscribe) on the filter or group:
    /// other shards must be told.
    pub interest_changed: bool,
}

impl Router {
    /// An empty index for shard `shard`.
    pub fn new(shard: u8) -> Router {
        Router { shard, orgs: HashMap::default(), stack: Vec::new() }
    }

    /// Adds or replaces `sub` on `filter` (which may be `$share/g/f`; validated by the caller).
    pub fn subscribe(&mut self, org: &Arc<str>, filter: &str, sub: Sub) -> Change {
        let trie = self.orgs.entry(org.clone()).or_insert_with(Trie::new);
        match classify(filter) {
            FilterKind::Plain(f) => {
                let n = trie.node_mut(f);
                let node = &mut trie.nodes[n as usize];
                if let Some(s) = node.subs.iter_mut().find(|s| s.session == sub.session) {
                    *s = sub;
                    return Change { existed: true, interest_changed: false };
                }
                node.subs.push(sub);
                Change { existed: false, interest_changed: node.subs.len() == 1 }
            }
            FilterKind::Shared(sf) => {
                let n = trie.node_mut(sf.filter);
                let node = &mut trie.nodes[n as usize];
                let gi = match node.groups.iter().position(|g| &*g.name == sf.group) {
                    Some(i) => i,
                    None => {
                        node.groups.push(Group {
                            name: sf.group.into(),
                            full: filter.into(),
                            members: Vec::new(),
                            remote: 0,
                            next: 0,
                        });
                        node.groups.len() - 1
                    }
                };
                let g = &mut node.groups[gi];
                if let Some(s) = g.members.iter_mut().find(|s| s.session == sub.session) {
                    *s = sub;
                    return Change { existed: true, interest_changed: false };
                }
                g.members.push(sub);
                Change { existed: false, interest_changed: g.members.len() == 1 }
            }
            FilterKind::InvalidShared => unreachable!("caller validates filters"),
        }
    }

    /// Removes `session`'s subscription on `filter`.
    pub fn unsubscribe(&mut self, org: &str, filter: &str, session: SessionRef) -> Change {
        let none = Change { existed: false, interest_changed: false };
        let Some(trie) = self.orgs.get_mut(org) else { return none };
        let (inner, group) = match classify(filter) {
            FilterKind::Plain(f) => (f, None),
            FilterKind::Shared(sf) => (sf.filter, Some(sf.group)),
            FilterKind::InvalidShared => return none,
        };
        let Some(n) = trie.find(inner) else { return none };
        let node = &mut trie.nodes[n as usize];
        let change = match group {
            None => match node.subs.iter().position(|s| s.session == session) {
                Some(i) => {
                    node.subs.swap_remove(i);
                    Change { existed: true, interest_changed: node.subs.is_empty() }
                }
                None => none,
            },
            Some(gname) => {
                let Some(gi) = node.groups.iter().position(|g| &*g.name == gname) else {
                    return none;
                };
                let g = &mut node.groups[gi];
                match g.members.iter().position(|s| s.session == session) {
                    Some(i) => {
                        g.members.remove(i);
                        let last = g.members.is_empty();
                        if last && g.remote == 0 {
                            node.groups.swap_remove(gi);
                        }
                        Change { existed: true, interest_changed: last }
                    }
                    None => none,
                }
            }
        };
        trie.prune(n);
        change
    }

    /// Records that `shard` gained (`add`) or lost its interest in `filter` of `org`.
    pub fn set_remote(&mut self, org: &Arc<str>, filter: &str, shard: u8, add: bool) {
        debug_assert_ne!(shard, self.shard);
        let bit = 1u64 << shard;
        let trie = self.orgs.entry(org.clone()).or_insert_with(Trie::new);
        match classify(filter) {
            FilterKind::Plain(f) => {
                let n = if add { Some(trie.node_mut(f)) } else { trie.find(f) };
                if let Some(n) = n {
                    let node = &mut trie.nodes[n as usize];
                    if add {
                        node.remote |= bit
                    } else {
                        node.remote &= !bit
                    }
                    trie.prune(n);
                }
            }
            FilterKind::Shared(sf) => {
                let n = if add { Some(trie.node_mut(sf.filter)) } else { trie.find(sf.filter) };
                let Some(n) = n else { return };
                let node = &mut trie.nodes[n as usize];
                let gi = match node.groups.iter().position(|g| &*g.name == sf.group) {
                    Some(i) => i,
                    None if add => {
                        node.groups.push(Group {
                            name: sf.group.into(),
                            full: filter.into(),
                            members: Vec::new(),
                            remote: 0,
                            next: 0,
                        });
                        node.groups.len() - 1
                    }
                    None => return,
                };
                let g = &mut node.groups[gi];
                if add {
                    g.remote |= bit
                } else {
                    g.remote &= !bit;
                    if g.remote == 0 && g.members.is_empty() {
                        node.groups.swap_remove(gi);
                    }
                }
                trie.prune(n);
            }
            FilterKind::InvalidShared => {}
        }
    }

    /// Every filter of `org` on which this shard has local interest (to replay to a peer).
    pub fn local_filters(&self) -> Vec<(Arc<str>, String)> {
        let mut out = Vec::new();
        for (org, trie) in &self.orgs {
            for (i, node) in trie.nodes.iter().enumerate() {
                if trie.free.contains(&(i as u32)) || i == 0 {
                    continue;
                }
                let path = path_of(trie, i as u32);
                if !node.subs.is_empty() {
                    out.push((org.clone(), path.clone()));
                }
                for g in &node.groups {
                    if !g.members.is_empty() {
                        out.push((org.clone(), g.full.to_string()));
                    }
                }
            }
        }
        out
    }

    /// Matches `topic` in `org`: local subscribers, remote shards, shared picks.
    /// `deliver_shared` is false when routing a message forwarded by another shard (the
    /// originating shard already picked shared-group members).
    pub fn route(&mut self, org: &str, topic: &str, deliver_shared: bool, out: &mut Matches) {
        out.clear();
        let Some(trie) = self.orgs.get_mut(org) else { return };
        let dollar = topic.starts_with('$');
        let stack = &mut self.stack;
        stack.clear();
        stack.push((0, 0, false));
        while let Some((n, pos, done)) = stack.pop() {
            if done {
                collect(trie, n, deliver_shared, self.shard, out);
                let h = trie.nodes[n as usize].hash;
                if h != NONE {
                    collect(trie, h, deliver_shared, self.shard, out); // `a/#` matches `a`
                }
                continue;
            }
            let (level, next, last) = match topic[pos..].find('/') {
                Some(i) => (&topic[pos..pos + i], pos + i + 1, false),
                None => (&topic[pos..], topic.len(), true),
            };
            let node = &trie.nodes[n as usize];
            let wild_ok = !(pos == 0 && dollar); // [MQTT-4.7.2-1]
            if wild_ok && node.hash != NONE {
                let h = node.hash;
                collect(trie, h, deliver_shared, self.shard, out);
            }
            let node = &trie.nodes[n as usize];
            if wild_ok && node.plus != NONE {
                stack.push((node.plus, next, last));
            }
            if let Some(&c) = node.children.get(level) {
                stack.push((c, next, last));
            }
        }
    }

    /// Picks one local member of the shared group `full` (`$share/g/f`) for a message forwarded
    /// by the shard that chose this shard.
    pub fn pick_shared_local(&mut self, org: &str, full: &str) -> Option<Sub> {
        let FilterKind::Shared(sf) = classify(full) else { return None };
        let trie = self.orgs.get_mut(org)?;
        let n = trie.find(sf.filter)?;
        let g = trie.nodes[n as usize].groups.iter_mut().find(|g| &*g.name == sf.group)?;
        if g.members.is_empty() {
            return None;
        }
        g.next = g.next.wrapping_add(1);
        Some(g.members[g.next as usize % g.members.len()])
    }

    /// Number of (org, filter) entries with local subscribers, for `$SYS`.
    pub fn local_subscription_count(&self, org: &str) -> usize {
        self.orgs.get(org).map_or(0, |t| {
            t.nodes
                .iter()
                .map(|n| n.subs.len() + n.groups.iter().map(|g| g.members.len()).sum::<usize>())
                .sum()
        })
    }
}

fn path_of(trie: &Trie, mut n: u32) -> String {
    let mut parts = Vec::new();
    while n != 0 && n != NONE {
        parts.push(&*trie.nodes[n as usize].key);
        n = trie.nodes[n as usize].parent;
    }
    parts.reverse();
    parts.join("/")
}

fn collect(trie: &mut Trie, n: u32, deliver_shared: bool, shard: u8, out: &mut Matches) {
    let node = &mut trie.nodes[n as usize];
    out.subs.extend_from_slice(&node.subs);
    out.remote |= node.remote;
    if !deliver_shared {
        return;
    }
    for g in &mut node.groups {
        let local = g.members.len() as u32;
        let total = local + g.remote.count_ones();
        if total == 0 {
            continue;
        }
        g.next = g.next.wrapping_add(1);
        let k = g.next % total;
        if k < local {
            out.subs.push(g.members[k as usize]);
        } else {
            // The (k - local)-th set bit of the remote mask.
            let mut mask = g.remote;
            for _ in 0..(k - local) {
                mask &= mask - 1;
            }
            let target = mask.trailing_zeros() as u8;
            debug_assert_ne!(target, shard);
            out.shared_remote.push(SharedPick { shard: target, filter: g.full.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topic::matches;
    use proptest::prelude::*;

    fn sub(i: u32) -> Sub {
        Sub { session: SessionRef(i), opts: SubOptions::default(), sub_id: None, checked: false }
    }

    fn org() -> Arc<str> {
        Arc::from("local")
    }

    #[test]
    fn basic_routing_and_isolation() {
        let mut r = Router::new(0);
        let o = org();
        r.subscribe(&o, "a/+/c", sub(1));
        r.subscribe(&o, "a/#", sub(2));
        r.subscribe(&Arc::from("other"), "#", sub(3));
        let mut m = Matches::default();
        r.route("local", "a/b/c", true, &mut m);
        let mut got: Vec<u32> = m.subs.iter().map(|s| s.session.0).collect();
        got.sort();
        assert_eq!(got, vec![1, 2]);
        r.route("local", "a", true, &mut m);
        assert_eq!(m.subs.len(), 1, "a/# matches a");
        r.route("nope", "a", true, &mut m);
        assert!(m.subs.is_empty());
    }

    #[test]
    fn unsubscribe_prunes() {
        let mut r = Router::new(0);
        let o = org();
        assert!(r.subscribe(&o, "x/y", sub(1)).interest_changed);
        assert!(!r.subscribe(&o, "x/y", sub(2)).interest_changed);
        assert!(!r.unsubscribe("local", "x/y", SessionRef(1)).interest_changed);
        assert!(r.unsubscribe("local", "x/y", SessionRef(2)).interest_changed);
        assert_eq!(r.orgs["local"].free.len(), 2);
    }

    #[test]
    fn remote_and_shared() {
        let mut r = Router::new(0);
        let o = org();
        r.set_remote(&o, "t/#", 3, true);
        r.subscribe(&o, "$share/g/t/1", sub(1));
        r.set_remote(&o, "$share/g/t/1", 2, true);
        let mut m = Matches::default();
        let mut local = 0;
        let mut remote = 0;
        for _ in 0..10 {
            r.route("local", "t/1", true, &mut m);
            assert_eq!(m.remote, 1 << 3);
            local += m.subs.len();
            remote += m.shared_remote.len();
        }
        assert_eq!((local, remote), (5, 5));
        r.set_remote(&o, "t/#", 3, false);
        r.route("local", "t/1", false, &mut m);
        assert_eq!(m.remote, 0);
        assert!(m.subs.is_empty(), "forwarded messages skip shared groups");
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![4 => level(), 1 => Just("+".to_string())], 1..4).prop_flat_map(
            |v| {
                prop::bool::ANY.prop_map(move |hash| {
                    let mut v = v.clone();
                    if hash {
                        v.push("#".to_string());
                    }
                    v.join("/")
                })
            },
        )
    }

    proptest! {
        /// The trie agrees with the ten-line reference matcher on generated filters and topics.
        #[test]
        fn trie_matches_reference(filters in prop::collection::vec(filter(), 1..8),
                                  topic in prop::collection::vec(level(), 1..5)) {
            let topic = topic.join("/");
            let mut r = Router::new(0);
            let o = org();
            for (i, f) in filters.iter().enumerate() {
                r.subscribe(&o, f, sub(i as u32));
            }
            let mut m = Matches::default();
            r.route("local", &topic, true, &mut m);
            let mut got: Vec<u32> = m.subs.iter().map(|s| s.session.0).collect();
            got.sort();
            got.dedup();
            let mut want: Vec<u32> = filters.iter().enumerate()
                .filter(|(_, f)| matches(f, &topic)).map(|(i, _)| i as u32).collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(got, want);
        }
    }
}

//! Per-org fair scheduling of a shard's CPU (SPEC §4: a flooding org cannot starve another on
//! the same shard).
//!
//! A shard's work comes in *turns*: between two polls of the reactor, every reader with bytes
//! ready runs once. Without a budget, one org's flood (a full socket buffer per connection,
//! thousands of packets) makes every turn long, and another org's message waits for it.
//! Here each org may process [`limits::FAIR_BUDGET`] packets per turn while another org also
//! has work; a reader over its org's budget stops ([`super::ReadVerdict::Wait`]) and waits
//! for the next turn, which the shell starts after one reactor poll
//! ([`super::ShardCore::next_turn`]). An org alone on its shard is never held back (the
//! scheduler is work-conserving), and neither is a connection that has not logged in yet.
//!
//! Turns advance only when someone waits for one, so an uncontended shard pays one counter
//! increment per packet and nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;

use ahash::RandomState;

use crate::limits;

/// An org's slot in a shard's fair scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FairSlot(u32);

#[derive(Debug)]
struct OrgTurn {
    org: Arc<str>,
    /// Connections of this org on this shard holding the slot.
    conns: u32,
    /// The turn `used` counts for.
    turn: u64,
    /// Packets processed in `turn`.
    used: u32,
}

/// The per-shard scheduler state.
#[derive(Debug, Default)]
pub(crate) struct Fair {
    turn: u64,
    slots: Vec<Option<OrgTurn>>,
    free: Vec<u32>,
    index: HashMap<Arc<str>, u32, RandomState>,
    /// Orgs that processed packets in this turn and in the previous one.
    active_now: u32,
    active_before: u32,
    /// Readers that did their share this turn, and readers that found their org's share spent
    /// before they ran: the latter are woken first next turn, so within an org no connection
    /// starves behind another that always runs first.
    yielded: Vec<Waker>,
    starved: Vec<Waker>,
    /// The shell's turn task, woken when a reader starts waiting for the next turn.
    turn_task: Option<Waker>,
}

impl Fair {
    /// A connection of `org` logged in: its slot (shared by the org's connections here).
    pub(crate) fn join(&mut self, org: &Arc<str>) -> FairSlot {
        if let Some(&i) = self.index.get(org) {
            self.slots[i as usize].as_mut().expect("indexed").conns += 1;
            return FairSlot(i);
        }
        let t = OrgTurn { org: org.clone(), conns: 1, turn: self.turn.wrapping_sub(1), used: 0 };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(t);
                i
            }
            None => {
                self.slots.push(Some(t));
                self.slots.len() as u32 - 1
            }
        };
        self.index.insert(org.clone(), i);
        FairSlot(i)
    }

    /// A connection holding `slot` closed.
    pub(crate) fn leave(&mut self, slot: FairSlot) {
        let s = &mut self.slots[slot.0 as usize];
        if let Some(t) = s {
            t.conns -= 1;
            if t.conns == 0 {
                self.index.remove(&t.org);
                *s = None;
                self.free.push(slot.0);
            }
        }
    }

    fn contended(&self) -> bool {
        self.active_now > 1 || self.active_before > 1
    }

    /// Counts one packet of `slot`'s org; true when the org has spent its share of this turn
    /// while another org has work (the reader should stop after this packet).
    #[inline]
    pub(crate) fn charge(&mut self, slot: FairSlot) -> bool {
        let turn = self.turn;
        let Some(t) = self.slots[slot.0 as usize].as_mut() else { return false };
        if t.turn != turn {
            t.turn = turn;
            t.used = 0;
            self.active_now += 1;
        }
        t.used += 1;
        let spent = t.used >= limits::FAIR_BUDGET;
        spent && self.contended()
    }

    /// Whether `slot`'s org must wait for the next turn; registers `waker` if so (`yielded`:
    /// this reader used the share, rather than finding it spent).
    pub(crate) fn must_wait(&mut self, slot: FairSlot, yielded: bool, waker: &Waker) -> bool {
        let turn = self.turn;
        let Some(t) = self.slots[slot.0 as usize].as_ref() else { return false };
        if t.turn != turn || t.used < limits::FAIR_BUDGET || !self.contended() {
            return false;
        }
        if yielded { &mut self.yielded } else { &mut self.starved }.push(waker.clone());
        if let Some(w) = self.turn_task.take() {
            w.wake();
        }
        true
    }

    /// Whether some reader waits for the next turn; registers the turn task's `waker` if not.
    pub(crate) fn turn_wanted(&mut self, waker: &Waker) -> bool {
        if self.yielded.is_empty() && self.starved.is_empty() {
            self.turn_task = Some(waker.clone());
            return false;
        }
        true
    }

    /// Starts a new turn: every org's share is whole again; waiting readers run, starved
    /// ones first.
    pub(crate) fn next_turn(&mut self) {
        self.turn = self.turn.wrapping_add(1);
        self.active_before = self.active_now;
        self.active_now = 0;
        for w in self.starved.drain(..).chain(self.yielded.drain(..)) {
            w.wake();
        }
    }

    /// Number of orgs with connections on this shard.
    #[cfg(test)]
    pub(crate) fn orgs(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Waker {
        futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            std::task::Poll::Ready(cx.waker().clone())
        }))
    }

    #[test]
    fn an_org_alone_is_never_held_back() {
        let mut f = Fair::default();
        let a = f.join(&"a".into());
        let _a2 = f.join(&"a".into());
        assert_eq!(f.orgs(), 1);
        for _ in 0..10 * limits::FAIR_BUDGET {
            assert!(!f.charge(a));
        }
        assert!(!f.must_wait(a, false, &noop()));
    }

    #[test]
    fn a_busy_org_yields_its_turn_when_another_has_work() {
        let mut f = Fair::default();
        let a = f.join(&"a".into());
        let b = f.join(&"b".into());
        assert!(!f.charge(b)); // b has work this turn
        let mut stops = 0;
        for _ in 0..limits::FAIR_BUDGET {
            stops += f.charge(a) as u32;
        }
        assert_eq!(stops, 1, "a stops exactly at its budget");
        let w = noop();
        assert!(f.must_wait(a, true, &w));
        assert!(!f.must_wait(b, false, &w), "b still has its share");
        assert!(f.turn_wanted(&w));
        f.next_turn();
        assert!(!f.must_wait(a, true, &w), "a new turn gives a a new share");
        assert!(!f.turn_wanted(&w));
        // b went quiet: one more contended turn (b was active in the last), then a runs free.
        for _ in 0..limits::FAIR_BUDGET {
            f.charge(a);
        }
        assert!(f.must_wait(a, true, &w));
        f.next_turn();
        for _ in 0..10 * limits::FAIR_BUDGET {
            assert!(!f.charge(a));
        }
    }

    #[test]
    fn slots_are_reused_when_an_org_leaves() {
        let mut f = Fair::default();
        let a = f.join(&"a".into());
        let b = f.join(&"b".into());
        f.leave(a);
        assert_eq!(f.orgs(), 1);
        let c = f.join(&"c".into());
        assert_eq!(c, a);
        f.leave(b);
        f.leave(c);
        assert_eq!(f.orgs(), 0);
    }
}

//! Subscription index: one topic trie per organization, replicated on every shard.
//!
//! Each node holds this shard's own subscribers, the set of other shards that have at least one
//! subscriber on the same filter (a 64-bit mask), and shared-subscription groups. A PUBLISH is
//! matched once on the shard that received it: [`Router::route`] yields the local subscribers
//! and the union of remote shards to forward to. The organization is the first key of every
//! lookup, so no match can ever cross organizations. Matching reuses scratch buffers and
//! allocates nothing once warm. Owned by exactly one shard; other shards change its remote
//! masks only by sending interest messages.

pub mod trie;

pub use trie::{Matches, Router, SessionRef, SharedPick, Sub};

//! Every compile-time bound of the broker, with why it has this value and what happens at the
//! limit. Runtime limits (per listener, per org) live in the validated `Config`.

/// Largest packet the broker accepts by default (bytes, fixed header included). At the limit:
/// 5.0 DISCONNECT 0x95 Packet Too Large (CONNACK 0x95 before CONNECT completes), then close.
/// 1 MiB covers IoT and agent payloads; operators raise it per org (quota issue).
pub const PACKET_BYTES_MAX_DEFAULT: u32 = 1024 * 1024;

/// Hard ceiling of any configured maximum packet size: the MQTT maximum (256 MiB - 1 + header).
pub const PACKET_BYTES_MAX_CEILING: u32 = 268_435_455 + 5;

/// Filters accepted in one SUBSCRIBE/UNSUBSCRIBE. Bounds per-packet work; beyond it the packet
/// is refused with 0x83 Implementation Specific Error and the connection closed.
pub const FILTERS_PER_PACKET_MAX: usize = 1024;

/// User properties accepted on one packet; bounds decode work and per-message memory.
pub const USER_PROPERTIES_MAX: usize = 256;

/// Subscription identifiers on one PUBLISH (one per overlapping subscription we deliver for).
pub const SUB_IDS_PER_PUBLISH_MAX: usize = 64;

/// Subscriptions one session may hold (per-client quota default). Beyond it SUBACK 0x97.
pub const SUBSCRIPTIONS_PER_SESSION_MAX: usize = 10_000;

/// Messages queued for one session (offline, or beyond its in-flight window). At the limit the
/// oldest QoS 0 message, else the oldest message, is dropped and counted.
pub const SESSION_QUEUE_MAX: usize = 10_000;

/// How far into a full queue a QoS 0 message is looked for to drop before the oldest one.
pub const QUEUE_VICTIM_SCAN: usize = 64;

/// Reads a connection makes in a row (each up to `READ_CHUNK_BYTES`) before it lets the
/// shard's other tasks run.
pub const READS_BEFORE_YIELD: usize = 16;

/// Mesh batches a receiver hands the core before it lets the shard's other tasks run (a
/// receiver whose queue never empties must not keep readers and accepts from running).
pub const MESH_BATCHES_BEFORE_YIELD: usize = 4;

/// Most messages in one cross-shard batch: what a shard collected for a peer during a turn
/// leaves as one batch (or several of at most this many).
pub const MESH_BATCH_MAX: usize = 1024;

/// Empty batches kept for reuse per ordered pair of shards (the receiver hands each drained
/// batch back; beyond this many they are freed).
pub const MESH_BATCH_POOL: usize = 8;

/// Unacknowledged outbound QoS 1/2 messages per session when the client sets no Receive
/// Maximum (3.1.1), and our own Receive Maximum for inbound QoS 1/2 (5.0).
pub const INFLIGHT_MAX: u16 = 128;

/// Bytes of encoded output buffered for one connection before QoS 0 messages to it are dropped
/// (and QoS 1/2 ones queued in the session instead): a subscriber that never reads can hold at
/// most this much output plus its bounded session queue.
pub const CONN_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Pending output on one connection above which the shard stops reading from clients until it
/// drains (publisher backpressure): a fast publisher is slowed to what its subscribers take,
/// instead of its QoS 0 messages being read and then dropped.
pub const OUTPUT_PRESSURE_BYTES: usize = 1024 * 1024;

/// Messages in a live session's queue (its in-flight window is full) above which the shard
/// stops reading publishers, like output pressure: QoS 1/2 to a slow but live subscriber slow
/// the publishers down instead of overflowing the bounded queue.
pub const QUEUE_PRESSURE: usize = SESSION_QUEUE_MAX / 2;

/// How long a connection under output pressure may go without its socket taking a single byte
/// before it is declared stalled (a client that stopped reading) and stops slowing everyone
/// else; a slow but live reader is never declared stalled. its QoS 0 messages are then dropped at
/// `CONN_OUTPUT_BYTES_MAX` and QoS 1/2 ones wait in its bounded session queue.
pub const OUTPUT_STALL_MS: u64 = 2000;

/// Topic aliases we accept from a client (5.0 Topic Alias Maximum in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;

/// Bytes read from a socket per read call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Seconds a new connection may take to send a complete CONNECT before it is closed. Stops
/// slowloris connections from holding a slot forever.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// Most shards: remote-interest sets are 64-bit masks.
pub const SHARDS_MAX: usize = 64;

/// Cross-shard mesh queue capacity (batches per ordered pair of shards, each at most
/// [`MESH_BATCH_MAX`] messages). When full the sender's backlog holds the overflow and
/// publishers' connections stop being read.
pub const MESH_QUEUE_CAPACITY: usize = 16;

/// Backlog of mesh messages a shard holds when a peer queue is full; above it, reading from
/// publishers pauses (backpressure), so the backlog is bounded by one read batch per connection.
pub const MESH_BACKLOG_PAUSE: usize = 16_384;

/// Password verifications queued for the hashing pool (all shards) before CONNECTs needing
/// one are answered "server busy": bounds the CPU and memory a wrong-password storm costs.
pub const HASH_QUEUE_MAX: usize = 256;

/// Default lifetime of a temporary token (SPEC §2: 60 minutes).
pub const TOKEN_TTL_DEFAULT_SECS: u64 = 3600;

/// Default longest lifetime a temporary token may ask for (an org may lower or raise it).
pub const TOKEN_TTL_MAX_SECS: u64 = 24 * 3600;

/// Default retention of audit events (30 days).
pub const AUDIT_RETENTION_DEFAULT_MS: u64 = 30 * 24 * 3600 * 1000;

/// Audit events one shard holds for the control plane before dropping (and counting) more.
pub const AUDIT_BACKLOG_MAX: usize = 65_536;

/// Retained messages per org (the quota issue makes this configurable per org).
pub const RETAINED_PER_ORG_MAX: usize = 100_000;

/// Longest client id accepted (SPEC §5: up to 256 bytes). Longer: 0x85.
pub const CLIENT_ID_BYTES_MAX: usize = 256;

/// Seconds the broker waits for an acknowledgement before it retransmits on reconnect only
/// (MQTT 5 forbids resends on a live connection [MQTT-4.4.0-1]); kept for documentation.
pub const SESSION_EXPIRY_MAX_SECS: u32 = u32::MAX;

const _: () = assert!(PACKET_BYTES_MAX_DEFAULT <= PACKET_BYTES_MAX_CEILING);
// An output buffer must hold at least one maximum-size packet, or a large QoS 0 message could
// never be delivered to an idle subscriber.
const _: () = assert!(CONN_OUTPUT_BYTES_MAX >= PACKET_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(SHARDS_MAX <= 64);
// Pressure must start before dropping does, or backpressure never engages.
const _: () = assert!(OUTPUT_PRESSURE_BYTES < CONN_OUTPUT_BYTES_MAX);

/// How long a 3.1.1 connection over its org's message rate stays unread before it tries again
/// (the shard's 50 ms tick wakes it; a chunk of the rate refills in about 100 ms).
pub const QUOTA_THROTTLE_MS: u64 = 50;

/// Packets an org may process per shard turn while another org on the shard has work (per-org
/// fair scheduling, `broker::fair`): bounds how long one org's flood delays another's message
/// (about this many packets' work per turn) at the cost of one reactor poll per share.
pub const FAIR_BUDGET: u32 = 128;

/// Levels a topic name or filter may have (topic names, wills, filters, ACL patterns, the
/// simulator, REST publish). EMQX's default `max_topic_levels`; deep enough for any real
/// hierarchy, and it bounds what one topic costs the trie walk and the ACL check.
pub const TOPIC_LEVELS_MAX: usize = 128;

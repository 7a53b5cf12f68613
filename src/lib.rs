//! coremq: a multi-tenant MQTT 3.1.1/5.0 broker, thread-per-core on io_uring (glommio).
//!
//! # Module map
//! - sans-IO (no sockets, files or clock):
//!   - [`codec`]: MQTT wire format, strict decoding with reason codes.
//!   - [`router`]: per-org subscription trie replicated on every shard.
//!   - [`broker`]: the shard core: connections, sessions, QoS flows, retained, wills, `$SYS`,
//!     cross-shard messages.
//!   - [`identity`]: user-name and organization-id rules.
//!   - [`limits`]: every compile-time bound.
//! - I/O shell:
//!   - [`shard`]: glommio executors, listeners, connection tasks, the mesh.
//!   - [`config`]: the TOML configuration, validated.
//!   - [`cli`]: the command line.
//!
//! # Two rules
//! 1. The broker's logic does no I/O: everything under `codec`, `router`, `broker` and
//!    `identity` is driven by `handle_*` calls with the time passed in, and drained with
//!    `poll_*` calls.
//! 2. Every piece of state has exactly one owning shard; other shards reach it only through
//!    [`broker::mesh::MeshMsg`]. The ownership table is in `docs/architecture.md`.

pub mod acl;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod control;
pub mod identity;
pub mod limits;
pub mod plane;
pub mod quota;
pub mod ratelog;
pub mod router;
pub mod shard;
pub mod store;
pub mod transport;

//! coremq: a multi-tenant MQTT 3.1.1/5.0 broker, thread-per-core on io_uring (glommio).
//!
//! # Module map, lowest layer first
//! A module imports only from its own layer and those below (`tests/tidy.rs` checks it, with
//! no import circle, file and function lengths, and no I/O in the sans-IO modules).
//!
//! 1. Vocabulary: [`limits`] (every compile-time bound), [`identity`] (user-name and org-id
//!    rules), [`clock`] (the two clocks; read only by the shell, the control plane and the
//!    CLI), [`ratelog`] (one report a second, the rest counted).
//! 2. Wire and records: [`codec`] (MQTT packets, strict decoding with reason codes),
//!    [`audit`] (audit records).
//! 3. Decisions: [`router`] (per-org subscription trie), [`acl`] (ACL v2 policies compiled
//!    per identity), [`quota`] (per-org limits and their atomic counters).
//! 4. [`auth`] (who a CONNECT is: passwords, tokens, JWTs, anonymous; the directory the
//!    control plane publishes) and [`plane`] (the typed contract between shards and the
//!    control plane).
//! 5. [`broker`]: the sans-IO shard core, composed of parts (connections, sessions,
//!    durability, mesh, pressure, timers), driven by `handle_*` calls and drained by `poll_*`
//!    calls. Named `broker` rather than `core`, which would shadow the `core` crate in paths.
//! 6. Adapters: [`transport`] (TCP, TLS, WebSocket, PROXY v2 byte streams), [`store`] (the
//!    shards' fjall databases, sealed rows), [`config`] (the TOML file, validated).
//! 7. [`control`]: the control plane (admin HTTP API, control store, audit log, JWKS).
//! 8. [`shard`]: the I/O shell: glommio executors, listeners, connection tasks, the mesh, the
//!    store's commit task.
//! 9. [`cli`]: the command line (`serve`, `config`, `acl`, `data`, `certs`, admin commands).
//!
//! # Two rules
//! 1. The broker's logic does no I/O: `codec`, `router`, `acl`, `quota`, the auth decisions
//!    and `broker` are driven by calls with the time passed in.
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

//! ACL v2 (SPEC §3): the policy document ([`policy`]), the topic-filter algebra ([`matcher`]),
//! the per-connection compiled form and its checks ([`compiled`]), and the shipped presets.

pub mod compiled;
pub mod matcher;
pub mod policy;
pub mod presets;
pub mod simulate;

pub use compiled::{AclIdentity, CompiledAcl, Decision, Origin, SubDecision};
pub use policy::{Policy, PolicyError};

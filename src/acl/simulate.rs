//! The simulator behind `coremq acl simulate` and `POST /v2/acl/simulate`: one check of an
//! identity's action on a topic against a policy, with the deciding rule and the bound pattern.

use serde::{Deserialize, Serialize};

use super::compiled::{AclIdentity, CompiledAcl};
use super::policy::Policy;

/// One simulated request (also one `--cases` entry, with `expect`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimRequest {
    /// Who.
    #[serde(default)]
    pub identity: AclIdentity,
    /// `publish` or `subscribe`.
    pub action: String,
    /// Topic (publish) or filter (subscribe, `$share/g/f` allowed).
    pub topic: String,
    /// QoS requested.
    #[serde(default)]
    pub qos: u8,
    /// Retain flag (publish).
    #[serde(default)]
    pub retain: bool,
    /// Expected verdict (`--cases` only): `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimResult {
    /// `allow` or `deny`.
    pub verdict: &'static str,
    /// Deciding policy rule, 0-based (`null`: `default_action`, or a per-user rule).
    pub rule: Option<u32>,
    /// The deciding rule's pattern after binding.
    pub pattern: Option<String>,
    /// Why, when the request itself is refused (an invalid topic, `$SYS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// QoS granted (subscribe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_qos: Option<u8>,
}

fn deny(reason: impl Into<String>) -> SimResult {
    SimResult { verdict: "deny", rule: None, pattern: None, reason: Some(reason.into()), granted_qos: None }
}

/// Runs one request. `user_rules`: the permanent user's own (publish, subscribe) lists.
pub fn simulate(policy: &Policy, req: &SimRequest, user_rules: (&[String], &[String])) -> SimResult {
    use crate::codec::topic::{classify, valid_filter, FilterKind};
    let acl = CompiledAcl::compile(policy, &req.identity, user_rules.0, user_rules.1);
    if req.qos > 2 {
        return deny("qos must be 0, 1 or 2");
    }
    let out = |d: super::Decision, granted: Option<u8>| SimResult {
        verdict: if d.allow { "allow" } else { "deny" },
        rule: d.policy_rule(),
        pattern: d.rule.map(|r| acl.pattern(r)),
        reason: None,
        granted_qos: granted.filter(|_| d.allow),
    };
    match req.action.as_str() {
        "publish" => {
            let t = &req.topic;
            if t.is_empty() || t.contains(['+', '#', '\0']) || t.len() > 65535 {
                return deny("not a valid topic name");
            }
            if t.starts_with("$SYS") {
                return deny("$SYS is broker-owned");
            }
            out(acl.check_publish(t, req.qos, req.retain), None)
        }
        "subscribe" => {
            let f = req.topic.as_str();
            if !valid_filter(f) {
                return deny("not a valid topic filter");
            }
            let inner = match classify(f) {
                FilterKind::Plain(p) => p,
                FilterKind::Shared(s) => s.filter,
                FilterKind::InvalidShared => return deny("not a valid shared subscription"),
            };
            let d = acl.check_subscribe(inner, req.qos);
            out(d.decision, Some(d.granted))
        }
        other => deny(format!("action must be publish or subscribe, got \"{other}\"")),
    }
}

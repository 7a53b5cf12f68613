//! A policy bound to one identity (SPEC §3): variables substituted once at CONNECT, rules whose
//! selectors do not apply dropped, unbindable variables failing closed (an allow rule drops; a
//! deny rule's level becomes `+`). The checks walk the result without allocating.

use std::collections::BTreeMap;

use super::matcher::{covers, levels_of, matches, overlaps, AsLevel, Level};
use super::policy::{Action, Part, Policy, TLevel, Var};

/// What variables and selectors read (also the simulator's `identity` JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclIdentity {
    /// Local part of a permanent user's name (unset for tokens, JWTs, anonymous).
    #[serde(default)]
    pub username: Option<String>,
    /// Organization.
    #[serde(default)]
    pub org_id: Option<String>,
    /// Client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `{user_id}`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// `{email}`.
    #[serde(default)]
    pub email: Option<String>,
    /// `{agent_id}`.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// `{session_id}`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// `{role}` (also a member of `roles`).
    #[serde(default)]
    pub role: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// `{cert_cn}`.
    #[serde(default)]
    pub cert_cn: Option<String>,
    /// `{claim.NAME}`; non-string values count as missing.
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `rules[i]` of the policy.
    Policy(u32),
    /// The user's own `publish`/`subscribe` list (allow-only).
    User,
}

/// One level of a bound pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BLevel {
    Lit(Box<str>),
    Plus,
    Hash,
}

impl AsLevel for BLevel {
    fn level(&self) -> Level<'_> {
        match self {
            BLevel::Lit(s) => Level::Lit(s),
            BLevel::Plus => Level::Plus,
            BLevel::Hash => Level::Hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BRule {
    levels: Box<[BLevel]>,
    publish: bool,
    subscribe: bool,
    allow: bool,
    qos: u8,
    retain: Option<bool>,
    origin: Origin,
}

impl BRule {
    /// Cheap pre-filter: a rule whose first level is literal can only match topics that start
    /// with it (most rules of a large policy are rejected by one short comparison).
    fn may_match(&self, first: &str) -> bool {
        match self.levels.first() {
            Some(BLevel::Lit(l)) => **l == *first,
            _ => true,
        }
    }
}

/// A verdict with the rule that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allow: bool,
    /// The deciding rule (`None`: `default_action`).
    pub origin: Option<Origin>,
    /// Index into the compiled rules (for [`CompiledAcl::pattern`]).
    pub rule: Option<usize>,
}

impl Decision {
    /// The deciding rule's 0-based index in the policy (`None`: `default_action`, or a
    /// permanent user's own rule) — what the simulator and audit events report.
    pub fn policy_rule(&self) -> Option<u32> {
        match self.origin {
            Some(Origin::Policy(i)) => Some(i),
            _ => None,
        }
    }

    /// [`Decision::policy_rule`] as JSON (`null` when none).
    pub fn policy_rule_json(&self) -> serde_json::Value {
        self.policy_rule().map_or(serde_json::Value::Null, Into::into)
    }
}

/// The verdict on a SUBSCRIBE filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubDecision {
    /// Allowed or not, and why.
    pub decision: Decision,
    /// The QoS granted (≤ the requested), when allowed.
    pub granted: u8,
    /// A deny rule overlaps the filter: each delivery must be checked.
    pub checked: bool,
}

/// A policy bound to one identity. Two are equal when they decide everything alike (same
/// bound rules, same default): a session whose holder's ACL is unchanged skips re-checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAcl {
    default_allow: bool,
    rules: Vec<BRule>,
}

/// A bound value may stand in a topic: non-empty, no `+ # /`, NUL or control characters.
fn usable(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(|c| matches!(c, '+' | '#' | '/') || c.is_control())
}

fn value<'a>(id: &'a AclIdentity, var: &Var) -> Option<&'a str> {
    let v = match var {
        Var::Username => id.username.as_deref(),
        Var::OrgId => id.org_id.as_deref(),
        Var::ClientId => id.client_id.as_deref(),
        Var::UserId => id.user_id.as_deref(),
        Var::Email => id.email.as_deref(),
        Var::AgentId => id.agent_id.as_deref(),
        Var::SessionId => id.session_id.as_deref(),
        Var::Role => id.role.as_deref(),
        Var::CertCn => id.cert_cn.as_deref(),
        Var::Claim(n) => id.claims.get(n).and_then(serde_json::Value::as_str),
    }?;
    usable(v).then_some(v)
}

/// Binds a template; `None` when a variable cannot be bound and `widen` is false.
fn bind(levels: &[TLevel], id: &AclIdentity, widen: bool) -> Option<Box<[BLevel]>> {
    let mut out = Vec::with_capacity(levels.len());
    for (i, l) in levels.iter().enumerate() {
        out.push(match l {
            TLevel::Plus => BLevel::Plus,
            TLevel::Hash => BLevel::Hash,
            TLevel::Parts(parts) => {
                let mut s = String::new();
                let mut ok = true;
                let mut has_var = false;
                for p in parts {
                    match p {
                        Part::Lit(t) => s.push_str(t),
                        Part::Var(v) => {
                            has_var = true;
                            match value(id, v) {
                                Some(x) => s.push_str(x),
                                None => ok = false,
                            }
                        }
                    }
                }
                // A bound first level starting with `$` would reach broker-owned topics.
                if ok && has_var && i == 0 && s.starts_with('$') {
                    ok = false;
                }
                match (ok, widen) {
                    (true, _) => BLevel::Lit(s.into()),
                    (false, true) => BLevel::Plus,
                    (false, false) => return None,
                }
            }
        });
    }
    Some(out.into())
}

impl CompiledAcl {
    /// Binds `policy` (and a permanent user's own allow lists) to `id`.
    pub fn compile(
        policy: &Policy,
        id: &AclIdentity,
        user_publish: &[String],
        user_subscribe: &[String],
    ) -> CompiledAcl {
        let mut rules = Vec::new();
        for (i, r) in policy.rules.iter().enumerate() {
            if let Some(users) = &r.users {
                if !id.username.as_ref().is_some_and(|u| users.contains(u)) {
                    continue;
                }
            }
            if let Some(roles) = &r.roles {
                let holds = |x: &String| id.roles.contains(x) || id.role.as_ref() == Some(x);
                if !roles.iter().any(holds) {
                    continue;
                }
            }
            let Some(levels) = bind(&r.levels, id, !r.allow) else { continue };
            rules.push(BRule {
                levels,
                publish: r.action.publish(),
                subscribe: r.action.subscribe(),
                allow: r.allow,
                qos: r.qos,
                retain: r.retain,
                origin: Origin::Policy(i as u32),
            });
        }
        for (list, action) in [(user_publish, Action::Publish), (user_subscribe, Action::Subscribe)] {
            for t in list {
                let Ok(tl) = super::policy::parse_pattern(t) else { continue };
                let Some(levels) = bind(&tl, id, false) else { continue };
                rules.push(BRule {
                    levels,
                    publish: action.publish(),
                    subscribe: action.subscribe(),
                    allow: true,
                    qos: 0b111,
                    retain: None,
                    origin: Origin::User,
                });
            }
        }
        CompiledAcl { default_allow: policy.default_allow, rules }
    }

    fn decided(&self, allow: bool, rule: Option<usize>) -> Decision {
        Decision { allow, origin: rule.map(|r| self.rules[r].origin), rule }
    }

    /// May this identity publish to `topic` at `qos` with `retain`? Allocation-free.
    pub fn check_publish(&self, topic: &str, qos: u8, retain: bool) -> Decision {
        let mut allow = None;
        let first = topic.split('/').next().unwrap_or("");
        for (i, r) in self.rules.iter().enumerate() {
            if !r.publish || !r.may_match(first) || !matches(&r.levels, topic) {
                continue;
            }
            if r.allow {
                if allow.is_none() && r.qos & (1 << qos) != 0 && (!retain || r.retain != Some(false)) {
                    allow = Some(i);
                }
            } else if r.qos & (1 << qos) != 0 && r.retain.is_none_or(|x| x == retain) {
                return self.decided(false, Some(i)); // deny wins
            }
        }
        match allow {
            Some(i) => self.decided(true, Some(i)),
            None => self.decided(self.default_allow, None),
        }
    }

    /// May this identity subscribe to `filter` (without `$share/group/`) at `qos`?
    pub fn check_subscribe(&self, filter: &str, qos: u8) -> SubDecision {
        let mut f = Vec::new();
        levels_of(filter, &mut f);
        let mut checked = false;
        let mut best: Option<(usize, u8)> = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.subscribe {
                continue;
            }
            if r.allow {
                if covers(&r.levels, &f) {
                    let max = (7 - r.qos.leading_zeros()) as u8; // highest QoS in the mask
                    if best.is_none_or(|(_, m)| max > m) {
                        best = Some((best.map_or(i, |(j, _)| j), max));
                    }
                }
            } else if r.qos & (1 << qos) != 0 {
                if covers(&r.levels, &f) {
                    return SubDecision {
                        decision: self.decided(false, Some(i)),
                        granted: 0,
                        checked: false,
                    };
                }
                checked |= overlaps(&r.levels, &f);
            }
        }
        match best {
            Some((i, max)) => {
                SubDecision { decision: self.decided(true, Some(i)), granted: qos.min(max), checked }
            }
            None if self.default_allow => {
                SubDecision { decision: self.decided(true, None), granted: qos, checked }
            }
            None => SubDecision { decision: self.decided(false, None), granted: 0, checked: false },
        }
    }

    /// For a subscription flagged `checked`: may a message on `topic` be delivered through it?
    /// Allocation-free.
    pub fn check_delivery(&self, topic: &str) -> bool {
        let first = topic.split('/').next().unwrap_or("");
        !self.rules.iter().any(|r| r.subscribe && !r.allow && r.may_match(first) && matches(&r.levels, topic))
    }

    /// May a message already stored for this identity on `topic` (queued or in flight) still
    /// be delivered: would subscribing to the topic itself be allowed, with no deny rule over
    /// it? Used when a session's holder or rights change (SPEC §3).
    pub fn may_read(&self, topic: &str) -> bool {
        self.check_subscribe(topic, 0).decision.allow && self.check_delivery(topic)
    }

    /// The bound pattern of compiled rule `rule`, as text (simulator output).
    pub fn pattern(&self, rule: usize) -> String {
        self.rules[rule]
            .levels
            .iter()
            .map(|l| match l {
                BLevel::Lit(s) => s.to_string(),
                BLevel::Plus => "+".into(),
                BLevel::Hash => "#".into(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: [&str; 10] = [
        "username",
        "org_id",
        "client_id",
        "user_id",
        "email",
        "agent_id",
        "session_id",
        "role",
        "cert_cn",
        "claim.team",
    ];

    fn identity_with(value: &str) -> AclIdentity {
        let s = Some(value.to_string());
        AclIdentity {
            username: s.clone(),
            org_id: s.clone(),
            client_id: s.clone(),
            user_id: s.clone(),
            email: s.clone(),
            agent_id: s.clone(),
            session_id: s.clone(),
            role: s.clone(),
            roles: vec![],
            cert_cn: s,
            claims: [("team".to_string(), serde_json::Value::String(value.into()))].into(),
        }
    }

    fn policy(rules: &str, default: &str) -> Policy {
        Policy::parse(&format!(r#"{{"version": "2.0", "default_action": "{default}", "rules": [{rules}]}}"#))
            .expect("valid")
    }

    /// Wildcard injection through every variable: an allow rule never widens, a deny rule
    /// never narrows.
    #[test]
    fn hostile_values_fail_closed_in_both_directions() {
        for var in VARS {
            for bad in ["#", "+", "a/b", "", "x\u{1}y", "a\u{7f}", "a+b", "#/x"] {
                let id = identity_with(bad);
                let allow = policy(
                    &format!(
                        r#"{{"topic": "t/{{{var}}}", "action": "all", "effect": "allow"}}, {{"topic": "{{{var}}}", "action": "all", "effect": "allow"}}"#
                    ),
                    "deny",
                );
                let acl = CompiledAcl::compile(&allow, &id, &[], &[]);
                for t in ["t/x", "t/a", "x", "t/#", "#"] {
                    assert!(!acl.check_subscribe(t, 0).decision.allow, "{var}={bad:?} widened to {t}");
                }
                for t in ["t/x", "t/a/b", "x", "a"] {
                    assert!(!acl.check_publish(t, 0, false).allow, "{var}={bad:?} allowed publish {t}");
                }
                let deny = policy(
                    &format!(
                        r#"{{"topic": "t/{{{var}}}", "action": "all", "effect": "deny"}}, {{"topic": "t/#", "action": "all", "effect": "allow"}}"#
                    ),
                    "deny",
                );
                let acl = CompiledAcl::compile(&deny, &id, &[], &[]);
                assert!(!acl.check_publish("t/anything", 0, false).allow, "{var}={bad:?} narrowed a deny");
                assert!(acl.check_publish("t/a/deeper", 0, false).allow);
            }
            // `$` at the first level is unbindable too.
            let id = identity_with("$SYS");
            let p =
                policy(&format!(r#"{{"topic": "{{{var}}}/#", "action": "all", "effect": "allow"}}"#), "deny");
            let acl = CompiledAcl::compile(&p, &id, &[], &[]);
            assert!(!acl.check_subscribe("$SYS/#", 0).decision.allow, "{var}");
            // A good value binds.
            let id = identity_with("good");
            let p = policy(
                &format!(r#"{{"topic": "t/{{{var}}}/#", "action": "all", "effect": "allow"}}"#),
                "deny",
            );
            let acl = CompiledAcl::compile(&p, &id, &[], &[]);
            assert!(acl.check_subscribe("t/good/+", 1).decision.allow, "{var}");
            assert!(!acl.check_subscribe("t/other/+", 1).decision.allow, "{var}");
        }
    }

    #[test]
    fn selectors_qos_and_retain() {
        let p = policy(
            r#"{"topic": "a/#", "action": "publish", "effect": "allow", "qos": [0, 1], "retain": false, "roles": ["r"]},
               {"topic": "a/x", "action": "publish", "effect": "deny", "qos": [1]},
               {"topic": "s/#", "action": "subscribe", "effect": "allow", "qos": [0], "users": ["u"]}"#,
            "deny",
        );
        let mut id = AclIdentity { username: Some("u".into()), role: Some("r".into()), ..Default::default() };
        let acl = CompiledAcl::compile(&p, &id, &[], &[]);
        assert!(acl.check_publish("a/y", 1, false).allow);
        assert!(!acl.check_publish("a/y", 2, false).allow, "qos not in the allow");
        assert!(!acl.check_publish("a/y", 0, true).allow, "retain not allowed");
        assert!(acl.check_publish("a/x", 0, false).allow, "the deny narrows to QoS 1");
        assert!(!acl.check_publish("a/x", 1, false).allow);
        let d = acl.check_subscribe("s/1", 2);
        assert!(d.decision.allow && d.granted == 0, "granted capped at the rule's QoS");
        id.role = None;
        id.username = Some("v".into());
        let acl = CompiledAcl::compile(&p, &id, &[], &[]);
        assert!(!acl.check_publish("a/y", 0, false).allow && !acl.check_subscribe("s/1", 0).decision.allow);
    }
}

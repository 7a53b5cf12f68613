//! The ACL v2 policy document (SPEC §3): parsing with field-level errors naming the JSON path
//! (`rules[2].action`), and the validated form the compiler binds per connection.

use serde_json::{Map, Value};

/// `publish`, `subscribe` or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH (and wills).
    Publish,
    /// SUBSCRIBE (and delivery through overlapping subscriptions).
    Subscribe,
    /// Both.
    All,
}

impl Action {
    /// Whether the rule applies to publishes.
    pub fn publish(self) -> bool {
        matches!(self, Action::Publish | Action::All)
    }
    /// Whether the rule applies to subscribes.
    pub fn subscribe(self) -> bool {
        matches!(self, Action::Subscribe | Action::All)
    }
}

/// A variable a topic pattern may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `{username}` (permanent users' local part).
    Username,
    /// `{org_id}`.
    OrgId,
    /// `{client_id}`.
    ClientId,
    /// `{user_id}`.
    UserId,
    /// `{email}`.
    Email,
    /// `{agent_id}`.
    AgentId,
    /// `{session_id}`.
    SessionId,
    /// `{role}`.
    Role,
    /// `{cert_cn}`.
    CertCn,
    /// `{claim.NAME}`.
    Claim(String),
}

/// A piece of a pattern level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// A variable.
    Var(Var),
}

/// One level of a pattern template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TLevel {
    /// `+`.
    Plus,
    /// `#`.
    Hash,
    /// Literal text and variables.
    Parts(Vec<Part>),
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The pattern as written.
    pub topic: String,
    /// Parsed levels.
    pub levels: Vec<TLevel>,
    /// Action.
    pub action: Action,
    /// Allow (true) or deny.
    pub allow: bool,
    /// `users` selector.
    pub users: Option<Vec<String>>,
    /// `roles` selector.
    pub roles: Option<Vec<String>>,
    /// Allowed QoS levels as a bit mask (bit n = QoS n); 0b111 when absent.
    pub qos: u8,
    /// Whether `qos` was given.
    pub qos_given: bool,
    /// `retain`, if given.
    pub retain: Option<bool>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `default_action` is allow.
    pub default_allow: bool,
    /// Rules, in document order (indexes are 0-based).
    pub rules: Vec<Rule>,
    /// The document as given (served by `GET /v2/acl`).
    pub source: Value,
}

/// A validation error: JSON path and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// `rules[2].action`, or `` for the document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { path: path.into(), message: message.into() }
}

/// Parses the variable name inside `{…}`.
fn parse_var(name: &str) -> Option<Var> {
    Some(match name {
        "username" => Var::Username,
        "org_id" => Var::OrgId,
        "client_id" => Var::ClientId,
        "user_id" => Var::UserId,
        "email" => Var::Email,
        "agent_id" => Var::AgentId,
        "session_id" => Var::SessionId,
        "role" => Var::Role,
        "cert_cn" => Var::CertCn,
        n => {
            let c = n.strip_prefix("claim.")?;
            if c.is_empty() || c.len() > 64 || c.contains(['{', '}', '/', '+', '#']) {
                return None;
            }
            Var::Claim(c.to_string())
        }
    })
}

/// Parses a pattern with variables (whole levels or inside a level).
pub fn parse_pattern(topic: &str) -> Result<Vec<TLevel>, String> {
    if topic.is_empty() {
        return Err("empty topic pattern".into());
    }
    if topic.len() > 1024 {
        return Err("topic pattern over 1024 bytes".into());
    }
    let parts: Vec<&str> = topic.split('/').collect();
    if parts.len() > crate::limits::TOPIC_LEVELS_MAX {
        return Err(format!("topic pattern over {} levels", crate::limits::TOPIC_LEVELS_MAX));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (i, l) in parts.iter().enumerate() {
        match *l {
            "#" if i + 1 == parts.len() => out.push(TLevel::Hash),
            "#" => return Err("`#` must be the last level".into()),
            "+" => out.push(TLevel::Plus),
            l if l.contains(['+', '#']) => return Err(format!("wildcard inside level \"{l}\"")),
            l if l.contains('\0') => return Err("NUL in pattern".into()),
            l => {
                let mut ps = Vec::new();
                let mut rest = l;
                while !rest.is_empty() {
                    match rest.find('{') {
                        None => {
                            if rest.contains('}') {
                                return Err(format!("unbalanced `}}` in level \"{l}\""));
                            }
                            ps.push(Part::Lit(rest.to_string()));
                            rest = "";
                        }
                        Some(open) => {
                            let (lit, after) = rest.split_at(open);
                            if lit.contains('}') {
                                return Err(format!("unbalanced `}}` in level \"{l}\""));
                            }
                            if !lit.is_empty() {
                                ps.push(Part::Lit(lit.to_string()));
                            }
                            let close =
                                after.find('}').ok_or_else(|| format!("unclosed `{{` in level \"{l}\""))?;
                            let name = &after[1..close];
                            let var =
                                parse_var(name).ok_or_else(|| format!("unknown variable {{{name}}}"))?;
                            ps.push(Part::Var(var));
                            rest = &after[close + 1..];
                        }
                    }
                }
                out.push(TLevel::Parts(ps));
            }
        }
    }
    Ok(out)
}

fn string_list(path: &str, v: &Value) -> Result<Vec<String>, PolicyError> {
    let a = v.as_array().ok_or_else(|| err(path, "expected a list of strings"))?;
    if a.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    a.iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| err(format!("{path}[{i}]"), "expected a non-empty string"))
        })
        .collect()
}

impl Policy {
    /// Parses and validates JSON text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let v: Value = serde_json::from_str(text).map_err(|e| err("", format!("not JSON: {e}")))?;
        Policy::from_value(v)
    }

    /// Validates a JSON document.
    pub fn from_value(v: Value) -> Result<Policy, PolicyError> {
        let o = v.as_object().ok_or_else(|| err("", "expected a JSON object"))?;
        for k in o.keys() {
            if !matches!(k.as_str(), "version" | "default_action" | "rules" | "description") {
                return Err(err(k.clone(), "unknown key"));
            }
        }
        match o.get("version") {
            Some(Value::String(s)) if s == "2.0" => {}
            Some(_) => return Err(err("version", "expected \"2.0\"")),
            None => return Err(err("version", "required (\"2.0\")")),
        }
        let default_allow = match o.get("default_action").and_then(Value::as_str) {
            Some("allow") => true,
            Some("deny") => false,
            _ => return Err(err("default_action", "expected \"allow\" or \"deny\"")),
        };
        let empty = Vec::new();
        let rules_v = match o.get("rules") {
            None => &empty,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(err("rules", "expected a list")),
        };
        let mut rules = Vec::with_capacity(rules_v.len());
        for (i, r) in rules_v.iter().enumerate() {
            rules.push(parse_rule(&format!("rules[{i}]"), r)?);
        }
        Ok(Policy { default_allow, rules, source: v })
    }

    /// `permit-all`: default allow, no rules.
    pub fn permit_all() -> Policy {
        static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        P.get_or_init(|| {
            Policy::parse(super::presets::get("permit-all").expect("shipped")).expect("valid preset")
        })
        .clone()
    }

    /// `blank`: deny everything.
    pub fn blank() -> Policy {
        Policy::blank_ref().clone()
    }

    /// `blank`, parsed once (CONNECTs to orgs without a policy bind it).
    pub fn blank_ref() -> &'static Policy {
        static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        P.get_or_init(|| Policy::parse(super::presets::get("blank").expect("shipped")).expect("valid preset"))
    }
}

fn parse_rule(path: &str, r: &Value) -> Result<Rule, PolicyError> {
    let o: &Map<String, Value> = r.as_object().ok_or_else(|| err(path, "expected an object"))?;
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "topic" | "action" | "effect" | "users" | "roles" | "qos" | "retain" | "description"
        ) {
            return Err(err(format!("{path}.{k}"), "unknown key"));
        }
    }
    let topic = o
        .get("topic")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{path}.topic"), "required string"))?
        .to_string();
    let levels = parse_pattern(&topic).map_err(|m| err(format!("{path}.topic"), m))?;
    let action = match o.get("action").and_then(Value::as_str) {
        Some("publish") => Action::Publish,
        Some("subscribe") => Action::Subscribe,
        Some("all") => Action::All,
        _ => return Err(err(format!("{path}.action"), "expected \"publish\", \"subscribe\" or \"all\"")),
    };
    let allow = match o.get("effect").and_then(Value::as_str) {
        Some("allow") => true,
        Some("deny") => false,
        _ => return Err(err(format!("{path}.effect"), "expected \"allow\" or \"deny\"")),
    };
    let users = o.get("users").map(|v| string_list(&format!("{path}.users"), v)).transpose()?;
    let roles = o.get("roles").map(|v| string_list(&format!("{path}.roles"), v)).transpose()?;
    let (qos, qos_given) = match o.get("qos") {
        None => (0b111, false),
        Some(Value::Array(a)) if !a.is_empty() => {
            let mut m = 0u8;
            for (i, q) in a.iter().enumerate() {
                match q.as_u64() {
                    Some(q @ 0..=2) => m |= 1 << q,
                    _ => return Err(err(format!("{path}.qos[{i}]"), "expected 0, 1 or 2")),
                }
            }
            (m, true)
        }
        Some(Value::Array(_)) => return Err(err(format!("{path}.qos"), "must not be empty")),
        Some(_) => return Err(err(format!("{path}.qos"), "expected a list of 0, 1, 2")),
    };
    let retain = match o.get("retain") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(err(format!("{path}.retain"), "expected true or false")),
    };
    Ok(Rule { topic, levels, action, allow, users, roles, qos, qos_given, retain })
}

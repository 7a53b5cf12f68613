//! `coremq acl validate|simulate|presets|diff` (local, no broker needed) and `acl update`
//! (admin API). Output is for people and CI: one line per case, a closing tally, exit codes.

use std::path::Path;

use crate::acl::simulate::{simulate, SimRequest, SimResult};
use crate::acl::{presets, Policy};
use crate::config::Config;

/// A failure for standard error, with the exit code.
#[derive(Debug)]
pub struct ToolError(pub String, pub i32);

fn read(path: &Path) -> Result<String, ToolError> {
    std::fs::read_to_string(path).map_err(|e| ToolError(format!("{}: cannot read: {e}", path.display()), 2))
}

fn load_policy(spec: &str) -> Result<Policy, ToolError> {
    let text = match spec.strip_prefix("preset:") {
        Some(n) => {
            presets::get(n).ok_or_else(|| ToolError(format!("unknown preset \"{n}\""), 2))?.to_string()
        }
        None => read(Path::new(spec))?,
    };
    Policy::parse(&text).map_err(|e| ToolError(format!("{spec}: {e}"), 1))
}

/// `acl validate FILE`.
pub fn validate(file: &Path) -> Result<String, ToolError> {
    let p = load_policy(&file.to_string_lossy())?;
    Ok(format!(
        "{}: ok (version 2.0, default_action {}, {} rule(s))",
        file.display(),
        if p.default_allow { "allow" } else { "deny" },
        p.rules.len()
    ))
}

/// `acl presets [NAME]`.
pub fn presets_cmd(name: Option<&str>) -> Result<String, ToolError> {
    match name {
        None => {
            Ok(presets::PRESETS.iter().map(|(n, d, _)| format!("{n:16} {d}")).collect::<Vec<_>>().join("\n"))
        }
        Some(n) => presets::get(n)
            .map(|d| d.trim_end().to_string())
            .ok_or_else(|| ToolError(format!("unknown preset \"{n}\"; `coremq acl presets` lists them"), 2)),
    }
}

fn line(r: &SimResult) -> String {
    format!(
        "verdict {}  rule {}  pattern {}{}",
        r.verdict,
        r.rule.map_or("-".into(), |r| r.to_string()),
        crate::cli::value_safe(r.pattern.as_deref().unwrap_or("-")),
        r.reason.as_ref().map_or(String::new(), |x| format!("  ({})", crate::cli::value_safe(x))),
    )
}

/// `acl simulate`.
#[allow(clippy::too_many_arguments)]
pub fn simulate_cmd(
    policy: Option<&str>,
    config: Option<&Path>,
    identity: Option<&Path>,
    action: Option<&str>,
    topic: Option<&str>,
    qos: u8,
    retain: bool,
    cases: Option<&Path>,
) -> Result<(String, bool), ToolError> {
    let cfg = config.map(Config::load).transpose().map_err(|e| ToolError(e.to_string(), 2))?;
    let reqs: Vec<SimRequest> = match (cases, action, topic) {
        (Some(c), _, _) => serde_json::from_str(&read(c)?)
            .map_err(|e| ToolError(format!("{}: not a JSON array of cases: {e}", c.display()), 2))?,
        (None, Some(a), Some(t)) => {
            let identity = match identity {
                Some(p) => serde_json::from_str(&read(p)?)
                    .map_err(|e| ToolError(format!("{}: not an identity: {e}", p.display()), 2))?,
                None => Default::default(),
            };
            vec![SimRequest { identity, action: a.into(), topic: t.into(), qos, retain, expect: None }]
        }
        _ => return Err(ToolError("give --action and --topic, or --cases FILE".into(), 2)),
    };
    let fixed = policy.map(load_policy).transpose()?;
    let mut out = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for (i, req) in reqs.iter().enumerate() {
        // The identity's org; without org_id, the config's only org if it declares one.
        let org = cfg.as_ref().and_then(|c| match req.identity.org_id.as_deref() {
            Some(o) => c.org(o),
            None if c.orgs.len() == 1 => c.orgs.first(),
            None => None,
        });
        let policy = match (&fixed, org) {
            (Some(p), _) => p.clone(),
            (None, Some(o)) => o.policy.clone().unwrap_or_else(Policy::blank),
            (None, None) => {
                return Err(ToolError("give --policy, or --config with the identity's org_id".into(), 2))
            }
        };
        let user = org
            .and_then(|o| req.identity.username.as_ref().and_then(|u| o.users.iter().find(|x| &x.name == u)));
        let (p, s) = user.map_or((Vec::new(), Vec::new()), |u| (u.publish.clone(), u.subscribe.clone()));
        let r = simulate(&policy, req, (&p, &s));
        match &req.expect {
            None => out.push(line(&r)),
            Some(e) => {
                let ok = e == r.verdict;
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
                out.push(format!(
                    "{} case {i}: {} {} (qos {}{}) expect {e}: {}",
                    if ok { "ok  " } else { "FAIL" },
                    req.action,
                    crate::cli::value_safe(&req.topic),
                    req.qos,
                    if req.retain { ", retain" } else { "" },
                    line(&r)
                ));
            }
        }
    }
    if cases.is_some() {
        out.push(format!("{passed} passed, {failed} failed"));
    }
    Ok((out.join("\n"), failed == 0))
}

/// `acl diff OLD NEW [--cases FILE]`.
pub fn diff(old: &Path, new: &Path, cases: Option<&Path>) -> Result<(String, bool), ToolError> {
    let a = load_policy(&old.to_string_lossy())?;
    let b = load_policy(&new.to_string_lossy())?;
    let mut out = Vec::new();
    if a.default_allow != b.default_allow {
        out.push(format!("default_action: {} -> {}", act(a.default_allow), act(b.default_allow)));
    }
    let key = |r: &crate::acl::policy::Rule| serde_json::to_string(&rule_json(r)).unwrap_or_default();
    for r in &a.rules {
        if !b.rules.iter().any(|x| key(x) == key(r)) {
            out.push(format!("- {}", key(r)));
        }
    }
    for r in &b.rules {
        if !a.rules.iter().any(|x| key(x) == key(r)) {
            out.push(format!("+ {}", key(r)));
        }
    }
    let mut changed = 0;
    if let Some(c) = cases {
        let reqs: Vec<SimRequest> = serde_json::from_str(&read(c)?)
            .map_err(|e| ToolError(format!("{}: not a JSON array of cases: {e}", c.display()), 2))?;
        for (i, req) in reqs.iter().enumerate() {
            let (x, y) = (simulate(&a, req, (&[], &[])), simulate(&b, req, (&[], &[])));
            if x.verdict != y.verdict {
                changed += 1;
                let topic = crate::cli::value_safe(&req.topic);
                out.push(format!("case {i}: {} {topic}: {} -> {}", req.action, x.verdict, y.verdict));
            }
        }
        out.push(format!("{changed} of {} case(s) change verdict", reqs.len()));
    }
    if out.is_empty() {
        out.push("no differences".into());
    }
    Ok((out.join("\n"), true))
}

fn act(allow: bool) -> &'static str {
    if allow {
        "allow"
    } else {
        "deny"
    }
}

fn rule_json(r: &crate::acl::policy::Rule) -> serde_json::Value {
    serde_json::json!({
        "topic": r.topic, "effect": act(r.allow),
        "action": match r.action { crate::acl::policy::Action::Publish => "publish", crate::acl::policy::Action::Subscribe => "subscribe", crate::acl::policy::Action::All => "all" },
        "users": r.users, "roles": r.roles,
        "qos": r.qos_given.then(|| (0..3).filter(|q| r.qos & (1 << q) != 0).collect::<Vec<_>>()),
        "retain": r.retain,
    })
}

use std::sync::Arc;

use super::directory::{Attrs, Directory, OrgDir, TokenDir, UserDir};
use super::password::{hash_password, verify_password};
use super::*;

fn shared() -> Arc<AuthShared> {
    let pepper = Pepper::new(b"test pepper");
    let mut acme = OrgDir::default();
    acme.users.insert(
        "alice".into(),
        Arc::new(UserDir {
            name: "alice".into(),
            phc: hash_password(b"pw").into(),
            version: 1,
            disabled: false,
            roles: Arc::new(["engineer".to_string()]),
            publish: Arc::new([]),
            subscribe: Arc::new([]),
        }),
    );
    acme.tokens.insert(
        "tok_abc".into(),
        Arc::new(TokenDir {
            mac: pepper.mac(TOKEN_DOMAIN, b"tkn_secret"),
            expires_unix_ms: 10_000,
            attrs: Arc::new(Attrs { agent_id: Some("a7".into()), ..Attrs::default() }),
        }),
    );
    let mut dir = Directory::with_orgs(["other"]);
    dir.orgs.insert("acme".into(), Arc::new(acme));
    Arc::new(AuthShared::new(dir, pepper))
}

fn run(a: &mut Authenticator, v: Verdict) -> Verdict {
    match v {
        Verdict::Verify(t) => {
            let ok = verify_password(&t.phc, &t.password);
            a.verified(t, Some(ok))
        }
        v => v,
    }
}

fn denied(v: &Verdict) -> Option<Denied> {
    match v {
        Verdict::Deny(d, _) => Some(*d),
        _ => None,
    }
}

#[test]
fn usernames_orgs_and_anonymous() {
    let mut a = Authenticator::new(shared());
    let anon: Arc<str> = "local".into();
    assert!(matches!(a.check(None, None, Some(&anon), 0, true), Verdict::Allow(i) if &*i.org == "local"));
    assert_eq!(denied(&a.check(None, None, None, 0, true)), Some(Denied::AnonymousRefused));
    for bad in ["alice", "a@b@acme", "@acme", "al/ice@acme", "al+@acme", "alice@", "alice@ACME"] {
        assert_eq!(
            denied(&a.check(Some(bad), Some(b"pw"), None, 0, true)),
            Some(Denied::BadUsername),
            "{bad}"
        );
    }
    assert_eq!(denied(&a.check(Some("alice@nope"), Some(b"pw"), None, 0, true)), Some(Denied::UnknownOrg));
}

#[test]
fn passwords_are_verified_then_cached() {
    let mut a = Authenticator::new(shared());
    let v = a.check(Some("alice@acme"), Some(b"pw"), None, 0, true);
    assert!(matches!(v, Verdict::Verify(_)), "first time: hashed");
    let v = run(&mut a, v);
    assert!(matches!(&v, Verdict::Allow(i) if &*i.name == "alice" && i.method == Method::Password));
    assert!(matches!(a.check(Some("alice@acme"), Some(b"pw"), None, 0, true), Verdict::Allow(_)), "cached");
    let v = a.check(Some("alice@acme"), Some(b"wrong"), None, 0, true);
    assert_eq!(denied(&run(&mut a, v)), Some(Denied::BadPassword));
    assert_eq!(
        denied(&a.check(Some("alice@acme"), Some(b"wrong"), None, 0, true)),
        Some(Denied::BadPassword),
        "bad answer cached too: no second hash"
    );
    assert_eq!(denied(&a.check(Some("alice@acme"), None, None, 0, true)), Some(Denied::BadPassword));
    // Unknown users take a decoy hash (no timing oracle) and are refused; not in another org.
    let v = a.check(Some("mallory@acme"), Some(b"pw"), None, 0, true);
    assert!(matches!(v, Verdict::Verify(_)));
    assert_eq!(denied(&run(&mut a, v)), Some(Denied::UnknownUser));
    let v = a.check(Some("alice@other"), Some(b"pw"), None, 0, true);
    assert_eq!(denied(&run(&mut a, v)), Some(Denied::UnknownUser));
}

#[test]
fn a_password_change_invalidates_the_cache() {
    let sh = shared();
    let mut a = Authenticator::new(sh.clone());
    let v = a.check(Some("alice@acme"), Some(b"pw"), None, 0, true);
    assert!(matches!(run(&mut a, v), Verdict::Allow(_)));
    let mut dir = (**sh.directory.load()).clone();
    let mut org = (*dir.orgs["acme"]).clone();
    let mut u = (*org.users["alice"]).clone();
    u.phc = hash_password(b"new").into();
    u.version = 2;
    org.users.insert("alice".into(), Arc::new(u));
    dir.orgs.insert("acme".into(), Arc::new(org));
    sh.directory.store(Arc::new(dir));
    let v = a.check(Some("alice@acme"), Some(b"pw"), None, 0, true);
    assert!(matches!(v, Verdict::Verify(_)), "new version: not served from the cache");
    assert_eq!(denied(&run(&mut a, v)), Some(Denied::BadPassword));
    let v = a.check(Some("alice@acme"), Some(b"new"), None, 0, true);
    assert!(matches!(run(&mut a, v), Verdict::Allow(_)));
}

#[test]
fn tokens() {
    let mut a = Authenticator::new(shared());
    let v = a.check(Some("tok_abc@acme"), Some(b"tkn_secret"), None, 5_000, true);
    let Verdict::Allow(i) = v else { panic!("{v:?}") };
    assert_eq!(
        (i.method, i.attrs.agent_id.as_deref(), i.expires_unix_ms),
        (Method::Token, Some("a7"), Some(10_000))
    );
    assert_eq!(
        denied(&a.check(Some("tok_abc@acme"), Some(b"tkn_secreT"), None, 5_000, true)),
        Some(Denied::BadPassword)
    );
    assert_eq!(
        denied(&a.check(Some("tok_abc@acme"), Some(b"tkn_secret"), None, 10_000, true)),
        Some(Denied::Expired)
    );
    assert_eq!(
        denied(&a.check(Some("tok_zzz@acme"), Some(b"tkn_secret"), None, 0, true)),
        Some(Denied::UnknownUser)
    );
    assert_eq!(
        denied(&a.check(Some("tok_abc@other"), Some(b"tkn_secret"), None, 0, true)),
        Some(Denied::UnknownUser)
    );
}

#[test]
fn per_user_inflight_is_bounded() {
    let mut a = Authenticator::new(shared());
    let mut tickets = Vec::new();
    for i in 0..PER_USER_INFLIGHT_MAX {
        match a.check(Some("alice@acme"), Some(format!("guess{i}").as_bytes()), None, 0, true) {
            Verdict::Verify(t) => tickets.push(t),
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(denied(&a.check(Some("alice@acme"), Some(b"pw"), None, 0, true)), Some(Denied::Busy));
    for t in tickets {
        a.verified(t, Some(false));
    }
    assert!(matches!(a.check(Some("alice@acme"), Some(b"pw"), None, 0, true), Verdict::Verify(_)));
}

#[test]
fn every_refusal_costs_a_hash_and_unknown_names_are_not_cached() {
    let sh = shared();
    let mut dir = (**sh.directory.load()).clone();
    let mut org = (*dir.orgs["acme"]).clone();
    let mut u = (*org.users["alice"]).clone();
    u.disabled = true;
    org.users.insert("alice".into(), Arc::new(u));
    dir.orgs.insert("acme".into(), Arc::new(org));
    sh.directory.store(Arc::new(dir));
    let mut a = Authenticator::new(sh.clone());
    // A disabled user is refused after the same hash as a wrong password, even with the right one.
    let v = a.check(Some("alice@acme"), Some(b"pw"), None, 0, true);
    assert!(matches!(v, Verdict::Verify(_)), "disabled: hashed before the refusal");
    assert_eq!(denied(&run(&mut a, v)), Some(Denied::Disabled));
    // Unknown names: a decoy hash every time, never remembered.
    for _ in 0..2 {
        let v = a.check(Some("mallory@acme"), Some(b"pw"), None, 0, true);
        assert!(matches!(v, Verdict::Verify(_)), "unknown user: decoy hash, not a cached answer");
        assert_eq!(denied(&run(&mut a, v)), Some(Denied::UnknownUser));
    }
    assert_eq!(sh.cache.len("acme"), (0, 0));
}

use super::*;

fn parse(t: &str) -> Result<Config, ConfigError> {
    Config::parse(t, Path::new("/etc/coremq"))
}

#[test]
fn interop_config() {
    let c = parse(
        "data_dir = \"./d\"\nshards = 1\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1999\"\nanonymous_org = \"local\"\n",
    )
    .unwrap();
    assert_eq!(c.shards, 1);
    assert_eq!(c.data_dir, PathBuf::from("/etc/coremq/./d"));
    assert_eq!(c.orgs.len(), 1);
    assert_eq!(c.orgs[0].id, "local");
    assert_eq!(
        c.orgs[0].policy,
        Some(crate::acl::Policy::permit_all()),
        "undeclared anonymous org: permit-all"
    );
}

#[test]
fn encryption_and_retention() {
    let c = parse(
        "[[listener]]\nkind=\"tcp\"\n[[org]]\nid=\"acme\"\n[org.retention]\nqueued_max_age=\"7d\"\n\
         [encryption]\ndestroyed_keys=[\"old\"]\n[[encryption.key]]\nid=\"k1\"\nfile=\"k1.key\"\n\
         [[encryption.key]]\nid=\"acme-1\"\norg=\"acme\"\nenv=\"ACME_KEY\"\n",
    )
    .unwrap();
    assert_eq!(c.encryption.keys.len(), 2);
    assert_eq!(c.encryption.keys[0].material, KeyMaterial::File(PathBuf::from("/etc/coremq/k1.key")));
    assert_eq!(c.encryption.keys[1].org.as_deref(), Some("acme"));
    assert_eq!(c.encryption.destroyed_keys, vec!["old".to_string()]);
    assert_eq!(c.org("acme").unwrap().retention.queued_max_age_ms, Some(7 * 86_400_000));
    let e = |t: &str| parse(&format!("[[listener]]\nkind=\"tcp\"\n{t}")).unwrap_err().0;
    assert!(e("[[encryption.key]]\nid=\"k\"\n").contains("encryption.key[0]: exactly one of file or env"));
    assert!(e("[[encryption.key]]\nid=\"a b\"\nenv=\"X\"\n").contains("encryption.key[0].id"));
    assert!(e("[encryption]\ndestroyed_keys=[\"k\"]\n[[encryption.key]]\nid=\"k\"\nenv=\"X\"\n")
        .contains("used twice"));
    assert!(e("[[org]]\nid=\"a\"\n[org.retention]\nqueued_max_age=0\n")
        .contains("org[0].retention.queued_max_age"));
}

#[test]
fn unknown_keys_are_named() {
    let e = parse("shard = 2\n[[listener]]\nkind=\"tcp\"\n").unwrap_err();
    assert!(e.0.contains("unknown field `shard`"), "{e}");
    let e = parse("[[listener]]\nkind=\"tcp\"\nbnd=\"x\"\n").unwrap_err();
    assert!(e.0.contains("bnd") && e.0.contains("line 3"), "{e}");
}

#[test]
fn refusals() {
    assert!(parse("[[listener]]\nkind=\"tcp\"\nbind=\"0.0.0.0:1883\"\nanonymous_org=\"local\"\n")
        .unwrap_err()
        .0
        .contains("non-loopback"));
    assert!(parse("shards = 0\n[[listener]]\nkind=\"tcp\"\n").unwrap_err().0.contains("shards"));
    assert!(parse("shards = \"many\"\n[[listener]]\nkind=\"tcp\"\n").unwrap_err().0.contains("shards"));
    assert!(parse("durability = \"sometimes\"\n[[listener]]\nkind=\"tcp\"\n")
        .unwrap_err()
        .0
        .contains("durability"));
    assert!(parse("[[listener]]\nkind=\"quic\"\n").unwrap_err().0.contains("listener[0].kind"));
    assert!(parse("[[listener]]\nkind=\"tls\"\n").unwrap_err().0.contains("listener[0].cert: required"));
    assert!(parse("[[listener]]\nkind=\"tls\"\ncert=\"/nope.pem\"\nkey=\"/nope.key\"\n")
        .unwrap_err()
        .0
        .contains("not a readable file"));
    assert!(parse("[[listener]]\nkind=\"tcp\"\npath=\"/mqtt\"\n")
        .unwrap_err()
        .0
        .contains("listener[0].path"));
    assert!(parse("[[listener]]\nkind=\"tcp\"\ncert=\"x\"\n").unwrap_err().0.contains("only for kind tls"));
    assert!(parse("[[listener]]\nkind=\"tcp\"\nbind=\"nope\"\n").unwrap_err().0.contains("listener[0].bind"));
    assert!(parse("[[org]]\nid=\"Bad\"\n[[listener]]\nkind=\"tcp\"\n").unwrap_err().0.contains("org[0].id"));
    assert!(parse("").unwrap_err().0.contains("listener"));
}

#[test]
fn durations() {
    let c = parse("sys_interval = \"2s\"\n[[listener]]\nkind=\"tcp\"\n").unwrap();
    assert_eq!(c.sys_interval_ms, 2000);
    assert!(parse("sys_interval = \"2 parsecs\"\n[[listener]]\nkind=\"tcp\"\n").is_err());
}

#[test]
fn fetchable_urls_compare_the_parsed_host() {
    for ok in [
        "https://idp.example/jwks",
        "http://localhost:8080/k",
        "http://127.0.0.1/k",
        "http://[::1]:9/k",
        "http://127.1/k",
    ] {
        assert!(fetchable_url(ok), "{ok}");
    }
    for bad in [
        "http://localhost.evil.tld/",
        "http://127.0.0.1.nip.io/",
        "http://127.0.0.1@evil.tld/",
        "http://localhost@evil.tld/",
        "http://evil.tld/",
        "ftp://localhost/",
        "http:///x",
        "not a url",
    ] {
        assert!(!fetchable_url(bad), "{bad}");
    }
}

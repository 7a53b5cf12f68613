//! The shard stores on a real fjall database: what a corrupt or foreign value does at start
//! (a clear error naming the database, the session and the reason; never a silent skip),
//! and that what `open` reads back is what was stored.

use std::sync::Arc;

use coremq::config::Durability;
use coremq::store::seal::Sealer;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};

fn write_raw(dir: &std::path::Path, keyspace: &str, key: &[u8], value: &[u8]) {
    write_raw_in(dir, 0, keyspace, key, value)
}

fn write_raw_in(dir: &std::path::Path, shard: usize, keyspace: &str, key: &[u8], value: &[u8]) {
    let db = Database::builder(dir.join("shards").join(shard.to_string())).open().unwrap();
    let ks = db.keyspace(keyspace, KeyspaceCreateOptions::default).unwrap();
    ks.insert(key, value).unwrap();
    db.persist(PersistMode::SyncAll).unwrap();
}

fn raw_get(dir: &std::path::Path, shard: usize, keyspace: &str, key: &[u8]) -> Vec<Vec<u8>> {
    let db = Database::builder(dir.join("shards").join(shard.to_string())).open().unwrap();
    let ks = db.keyspace(keyspace, KeyspaceCreateOptions::default).unwrap();
    ks.get(key).unwrap().map(|v| v.to_vec()).into_iter().collect()
}

fn open_err(dir: &std::path::Path) -> String {
    coremq::store::open(dir, 1, Durability::Group, Arc::new(Sealer::plain()), 1_800_000_000_000, &[])
        .unwrap_err()
        .to_string()
}

#[test]
fn a_corrupt_session_record_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), "sessions", b"acme\0sensor-1", b"{not json");
    let e = open_err(dir.path());
    assert!(e.contains("acme/sensor-1") && e.contains("corrupt session record"), "{e}");
}

#[test]
fn a_record_of_a_newer_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let rec = br#"{"v":2,"expiry_secs":60,"protocol":5,"expires_at_unix_ms":null,"next_seq":0,"subs":[]}"#;
    write_raw(dir.path(), "sessions", b"acme\0s", rec);
    let e = open_err(dir.path());
    assert!(e.contains("version 2"), "{e}");
}

#[test]
fn a_truncated_queued_message_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rec = br#"{"v":1,"expiry_secs":600,"protocol":4,"expires_at_unix_ms":null,"next_seq":1,"subs":[]}"#;
    write_raw(dir.path(), "sessions", b"acme\0s", rec);
    let mut qk = b"acme\0s\0".to_vec();
    qk.extend_from_slice(&1u64.to_be_bytes());
    write_raw(dir.path(), "queue", &qk, &[1, 1, 0, 0, 0, 0]);
    let e = open_err(dir.path());
    assert!(e.contains("queued message of acme/s") && e.contains("truncated"), "{e}");
}

#[test]
fn an_empty_data_dir_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let o = coremq::store::open(
        dir.path(),
        2,
        Durability::Group,
        Arc::new(Sealer::plain()),
        1_800_000_000_000,
        &[],
    )
    .unwrap();
    assert_eq!(o.shards.len(), 2);
    assert!(o.sessions.iter().all(Vec::is_empty) && o.retained_msgs.is_empty());
    assert_eq!(o.retained_seq, 0);
}

#[test]
fn a_sealed_value_without_its_key_stops_the_start_with_the_key_id() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), "sessions", b"acme\0s", b"\xC5\x02k1............................");
    let e = open_err(dir.path());
    assert!(e.contains("acme/s") && e.contains("encryption key 'k1', which is not configured"), "{e}");
}

#[test]
fn a_corrupt_in_flight_state_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rec = br#"{"v":1,"expiry_secs":600,"protocol":5,"expires_at_unix_ms":null,"next_seq":1,"subs":[]}"#;
    write_raw(dir.path(), "sessions", b"acme\0s", rec);
    let mut k = b"acme\0s\0".to_vec();
    k.extend_from_slice(&1u64.to_be_bytes());
    write_raw(dir.path(), "outbound", &k, &[1, 0, 0, 0]); // packet id 0
    let e = open_err(dir.path());
    assert!(e.contains("in-flight state of acme/s") && e.contains("corrupt"), "{e}");
}

fn record(epoch: u64, filter: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"expiry_secs":600,"protocol":5,"expires_at_unix_ms":null,"next_seq":0,"epoch":{epoch},"subs":[{{"filter":"{filter}","qos":1,"nl":false,"rap":false,"rh":0,"id":null,"checked":false}}]}}"#
    )
    .into_bytes()
}

fn open_sessions(dir: &std::path::Path) -> Vec<(String, u64, String)> {
    let o = coremq::store::open(dir, 2, Durability::Group, Arc::new(Sealer::plain()), 1_800_000_000_000, &[])
        .unwrap();
    o.sessions
        .iter()
        .flatten()
        .map(|s| (s.key.client_id.as_str().to_string(), s.meta.epoch, s.meta.subs[0].filter.clone()))
        .collect()
}

#[test]
fn of_two_copies_left_by_a_takeover_the_highest_epoch_wins_and_the_other_is_deleted() {
    for (old_in, new_in) in [(0, 1), (1, 0)] {
        let dir = tempfile::tempdir().unwrap();
        write_raw_in(dir.path(), old_in, "sessions", b"acme\0mover", &record(5, "old"));
        write_raw_in(dir.path(), new_in, "sessions", b"acme\0mover", &record(9, "new"));
        // A record without an epoch (written before epochs existed) reads as epoch 0.
        let pre = br#"{"v":1,"expiry_secs":600,"protocol":4,"expires_at_unix_ms":null,"next_seq":0,"subs":[{"filter":"x","qos":0,"nl":false,"rap":false,"rh":0,"id":null,"checked":false}]}"#;
        write_raw_in(dir.path(), old_in, "sessions", b"acme\0plain", pre);
        let mut got = open_sessions(dir.path());
        got.sort();
        let want =
            vec![("mover".to_string(), 9, "new".to_string()), ("plain".to_string(), 0, "x".to_string())];
        assert_eq!(got, want);
        // The older copy is gone from the disk, not just skipped.
        let copies: usize = (0..2).map(|i| raw_get(dir.path(), i, "sessions", b"acme\0mover").len()).sum();
        assert_eq!(copies, 1);
        let mut again = open_sessions(dir.path());
        again.sort();
        assert_eq!(again, want);
    }
}

#[test]
fn the_queue_scan_starts_at_the_sessions_cursor() {
    // Rows below `first_seq` are never read (they would be deletions of acknowledged
    // messages); a corrupt one there proves it.
    let dir = tempfile::tempdir().unwrap();
    let rec = br#"{"v":1,"expiry_secs":600,"protocol":4,"expires_at_unix_ms":null,"next_seq":7,"first_seq":8,"subs":[]}"#;
    write_raw(dir.path(), "sessions", b"acme\0s", rec);
    let mut qk = b"acme\0s\0".to_vec();
    qk.extend_from_slice(&7u64.to_be_bytes());
    write_raw(dir.path(), "queue", &qk, &[1, 1, 0, 0, 0, 0]);
    let o = coremq::store::open(
        dir.path(),
        1,
        Durability::Group,
        Arc::new(Sealer::plain()),
        1_800_000_000_000,
        &[],
    )
    .unwrap();
    assert_eq!(o.sessions[0].len(), 1);
    assert!(o.sessions[0][0].queue.is_empty());
}

/// A sealer with one global key (written to a 0600 file in `dir`).
fn keyed(dir: &std::path::Path, accept_plain: bool) -> Sealer {
    use coremq::config::{EncryptionConfig, KeyConfig, KeyMaterial};
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("k.key");
    std::fs::write(&p, "5a".repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = EncryptionConfig {
        keys: vec![KeyConfig { id: "k".into(), org: None, material: KeyMaterial::File(p) }],
        destroyed_keys: vec![],
        accept_plain,
    };
    Sealer::load(&cfg).unwrap()
}

#[test]
fn with_encryption_on_a_planted_plain_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    write_raw(dir.path(), "sessions", b"acme\0s", &record(1, "a/#"));
    let e =
        coremq::store::open(dir.path(), 1, Durability::Group, Arc::new(keyed(keys.path(), false)), 1, &[])
            .unwrap_err()
            .to_string();
    assert!(e.contains("acme/s") && e.contains("stored unencrypted") && e.contains("accept_plain"), "{e}");
    // The explicit migration switch reads it.
    let o = coremq::store::open(dir.path(), 1, Durability::Group, Arc::new(keyed(keys.path(), true)), 1, &[]);
    assert_eq!(o.unwrap().sessions[0].len(), 1);
}

#[test]
fn the_first_start_with_a_key_seals_what_was_plain() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    write_raw(dir.path(), "sessions", b"acme\0s", &record(1, "a/#"));
    let s = keyed(keys.path(), false);
    assert!(s.verify(dir.path()).unwrap(), "a key used for the first time");
    s.request_reseal();
    let o = coremq::store::open(dir.path(), 1, Durability::Group, Arc::new(s), 1, &[]).unwrap();
    assert_eq!(o.sessions[0].len(), 1);
    drop(o);
    let raw = raw_get(dir.path(), 0, "sessions", b"acme\0s");
    assert!(Sealer::key_id(&raw[0]) == Some("k"), "sealed in place");
    let o =
        coremq::store::open(dir.path(), 1, Durability::Group, Arc::new(keyed(keys.path(), false)), 1, &[]);
    assert_eq!(o.unwrap().sessions[0].len(), 1, "and read back with the key");
}

#[test]
fn with_encryption_on_a_planted_plain_policy_is_refused_and_the_pepper_gets_sealed() {
    use coremq::control::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let pepper = {
        let plain = Store::open(dir.path()).unwrap();
        plain.put_policy("acme", &serde_json::json!({"version": "2.0", "default_action": "allow"})).unwrap();
        let p = plain.pepper().unwrap();
        plain.sync().unwrap();
        p
    };
    let sealed = Store::open_sealed(dir.path(), Arc::new(keyed(keys.path(), false))).unwrap();
    let e = sealed.policy("acme").unwrap_err().to_string();
    assert!(e.contains("stored unencrypted"), "{e}");
    assert_eq!(sealed.pepper().unwrap(), pepper, "the same pepper, now sealed");
    drop(sealed);
    let plain_again = Store::open(dir.path()).unwrap();
    assert!(plain_again.pepper().is_err(), "the stored pepper no longer opens without the key");
    drop(plain_again);
    // A reseal pass (a key's first start) seals the policy.
    let s = keyed(keys.path(), false);
    s.request_reseal();
    let sealed = Store::open_sealed(dir.path(), Arc::new(s)).unwrap();
    assert!(sealed.policy("acme").unwrap().is_some());
}

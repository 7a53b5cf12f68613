//! Argon2id password hashes (PHC strings) and the bounded hashing pool that verifies them off
//! the shards' reactors (an Argon2id check costs tens of milliseconds by design).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id with the parameters SPEC/ARCHITECTURE fix: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19_456, 2, 1, None).expect("valid params"))
}

/// Hashes a password into an Argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &[u8]) -> String {
    let salt = SaltString::encode_b64(&super::secret::random_bytes::<16>()).expect("16-byte salt");
    argon2().hash_password(password, &salt).expect("argon2 hashing with valid params").to_string()
}

/// Checks that `phc` is an Argon2id PHC string; the error says what is wrong.
pub fn check_phc(phc: &str) -> Result<(), String> {
    let h = PasswordHash::new(phc).map_err(|e| format!("not a PHC string ({e})"))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(format!("algorithm is {}, expected argon2id (use `coremq passwd`)", h.algorithm));
    }
    if h.hash.is_none() {
        return Err("PHC string has no hash".into());
    }
    Ok(())
}

/// Verifies `password` against an Argon2id PHC string (parameters come from the string).
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
        Err(_) => false,
    }
}

/// One verification for the pool.
pub struct HashJob {
    /// The stored hash.
    pub phc: Arc<str>,
    /// The password the client sent.
    pub password: Vec<u8>,
    /// Called on the pool thread with the verdict; must not block.
    pub reply: Box<dyn FnOnce(bool) + Send>,
}

/// A fixed set of threads verifying passwords from a bounded queue. When the queue is full,
/// submissions are refused at once (the caller answers "server busy"), so a storm of wrong
/// passwords costs a bounded amount of memory and CPU.
#[derive(Clone)]
pub struct HashPool {
    tx: flume::Sender<Work>,
}

/// What a pool thread does.
enum Work {
    /// Check a password against a stored hash (CONNECT).
    Verify(HashJob),
    /// Hash a new password (admin API): the PHC string goes to `reply`.
    Hash { password: Vec<u8>, reply: Box<dyn FnOnce(String) + Send> },
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").field("queued", &self.tx.len()).finish()
    }
}

impl HashPool {
    /// Starts `threads` verifier threads sharing a queue of `queue` jobs.
    pub fn start(threads: usize, queue: usize) -> HashPool {
        let (tx, rx) = flume::bounded::<Work>(queue);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("coremq-hash-{i}"))
                .spawn(move || {
                    while let Ok(work) = rx.recv() {
                        match work {
                            Work::Verify(job) => (job.reply)(verify_password(&job.phc, &job.password)),
                            Work::Hash { password, reply } => reply(hash_password(&password)),
                        }
                    }
                })
                .expect("spawn hashing thread");
        }
        HashPool { tx }
    }

    /// Queues a job; gives it back if the queue is full.
    pub fn submit(&self, job: HashJob) -> Result<(), HashJob> {
        self.tx.try_send(Work::Verify(job)).map_err(|e| match e.into_inner() {
            Work::Verify(job) => job,
            Work::Hash { .. } => unreachable!("a verification was sent"),
        })
    }

    /// Queues the hashing of a new password (the admin API's; Argon2id needs 19 MiB a hash,
    /// so hashes share the pool's bounded threads and queue); false when the queue is full.
    pub fn hash(&self, password: Vec<u8>, reply: Box<dyn FnOnce(String) + Send>) -> bool {
        self.tx.try_send(Work::Hash { password, reply }).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let phc = hash_password(b"hunter2");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(check_phc(&phc).is_ok());
        assert!(verify_password(&phc, b"hunter2"));
        assert!(!verify_password(&phc, b"hunter3"));
        assert!(check_phc("plain").is_err());
        assert!(check_phc("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err());
    }

    #[test]
    fn pool_refuses_when_full() {
        let pool = HashPool::start(1, 1);
        let phc: Arc<str> = hash_password(b"x").into();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut refused = 0;
        for _ in 0..20 {
            let tx = tx.clone();
            let job = HashJob {
                phc: phc.clone(),
                password: b"x".to_vec(),
                reply: Box::new(move |ok| tx.send(ok).expect("test receiver")),
            };
            if pool.submit(job).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 18, "queue of 1 + 1 thread: at most 2 accepted, {refused} refused");
        assert!(rx.recv().expect("a verdict"));
    }
}

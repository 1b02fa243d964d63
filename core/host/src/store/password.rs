//! Password hashing and verification (argon2id), and login tokens.
//!
//! Hashing is slow on purpose, so it runs on a small pool of its own threads
//! with its own bounded queue: the batch thread only looks hashes up and
//! stores results, and never waits for argon2.
//!
//! The flows, with the database steps on the batch thread:
//!
//! - `Register`: the batch thread answers `NameTaken` when the name exists,
//!   else the pool hashes and hands a [`Finish::CreateUser`] back; the insert
//!   is `ON CONFLICT DO NOTHING`, so when two registrations of one name race,
//!   the unique key decides and the second gets `NameTaken`.
//! - `Login` and `Verify`: the batch thread looks the hash up, the pool
//!   verifies (against a dummy hash when the user is unknown, so that both
//!   rejections take about as long) and answers `Rejected` or `Verified`
//!   itself, or for a login hands a [`Finish::CreateToken`] back: a token of
//!   32 random bytes, hex, of which only the SHA-256 is stored.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use natter_core::store::{Cancel, StoreError, StoreFailure, StoreReqId, StoreValue};
use rand::rngs::OsRng;
use rand::RngCore;

use super::Shared;

/// An argon2id hash (default parameters: v19, m=19456 KiB, t=2, p=1) of
/// `password` with a fresh random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Whether `password` matches the PHC string `hash` (with the parameters
/// written in the hash). `Err` when `hash` is malformed.
pub fn verify_password(hash: &str, password: &str) -> Result<bool, argon2::password_hash::Error> {
    let parsed = PasswordHash::new(hash)?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(e),
    }
}

/// 32 random bytes from the operating system: the key that signs guests'
/// `resume` secrets, drawn anew at every start.
pub fn random_secret() -> natter_core::GuestSecret {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    natter_core::GuestSecret(key)
}

/// A cluster node's id for one run (`Config::node`).
pub fn random_node_id() -> u64 {
    OsRng.next_u64()
}

/// A new login token (32 random bytes, hex) and its stored form.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

pub use natter_core::store::token_hash;

/// A hash to verify against when the user is unknown, so that an unknown
/// user costs as much as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        hash_password(&hex::encode(bytes)).unwrap_or_default()
    })
}

/// What a login adds to a verification.
#[derive(Clone, Copy, Debug)]
pub(super) struct LoginTerms {
    pub now_ms: u64,
    pub ttl_ms: u64,
}

/// Work for the pool.
pub(super) enum PasswordJob {
    /// Hash a new user's password.
    Hash { id: StoreReqId, submitted: Instant, user: String, password: String, cancel: Cancel },
    /// Check a password against the stored hash (`None`: unknown user).
    Verify {
        id: StoreReqId,
        submitted: Instant,
        user: String,
        password: String,
        hash: Option<String>,
        login: Option<LoginTerms>,
        cancel: Cancel,
    },
}

impl PasswordJob {
    fn request(&self) -> (StoreReqId, Instant, &Cancel) {
        match self {
            PasswordJob::Hash { id, submitted, cancel, .. } | PasswordJob::Verify { id, submitted, cancel, .. } => {
                (*id, *submitted, cancel)
            }
        }
    }
}

/// The database half of a password operation, run by the batch thread.
pub(super) enum Finish {
    /// Insert the user, unless the name was taken meanwhile.
    CreateUser { id: StoreReqId, submitted: Instant, user: String, hash: String, cancel: Cancel },
    /// Store the token's hash and answer with the token.
    CreateToken { id: StoreReqId, submitted: Instant, user: String, token: String, token_hash: String, expires_ms: u64 },
}

/// What a pool job ends in.
enum Outcome {
    /// The answer.
    Done(Result<StoreValue, StoreError>),
    /// A database step for the batch thread.
    Finish(Finish),
}

/// The hashing threads.
pub(super) struct PasswordPool {
    tx: Option<SyncSender<PasswordJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl PasswordPool {
    /// Starts `threads` threads (at least one) sharing a queue of `bound`
    /// jobs.
    pub(super) fn spawn(threads: usize, bound: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<PasswordJob>(bound.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = PasswordPool { tx: Some(tx), threads: Vec::new() };
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new().name(format!("natter-pw-{i}")).spawn(move || {
                if i == 0 {
                    // Pay for the dummy hash before the first unknown user.
                    let _ = dummy_hash();
                }
                work(&rx, &shared)
            })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queues `job`; `false` (and the job dropped) when the queue is full.
    pub(super) fn try_submit(&self, job: PasswordJob) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(job).is_ok())
    }
}

impl Drop for PasswordPool {
    /// Lets the threads finish the queued jobs, then joins them.
    fn drop(&mut self) {
        self.tx = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn work(rx: &Mutex<Receiver<PasswordJob>>, shared: &Shared) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let (id, submitted, cancel) = job.request();
        if shared.skip_password(cancel) {
            // Gone client or shutdown: never start a hash nobody waits for.
            shared.password_done(id, submitted, Err(StoreError::Overloaded));
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job))).unwrap_or_else(|_| {
            tracing::error!("password job panicked");
            Outcome::Done(Err(StoreError::Backend(StoreFailure::Other)))
        });
        match outcome {
            Outcome::Done(result) => shared.password_done(id, submitted, result),
            Outcome::Finish(finish) => shared.password_finish(finish),
        }
    }
}

fn run(job: PasswordJob) -> Outcome {
    match job {
        PasswordJob::Hash { id, submitted, user, password, cancel } => match hash_password(&password) {
            Ok(hash) => Outcome::Finish(Finish::CreateUser { id, submitted, user, hash, cancel }),
            Err(e) => {
                tracing::error!(error = %e, "password hashing failed");
                Outcome::Done(Err(StoreError::Backend(StoreFailure::Other)))
            }
        },
        PasswordJob::Verify { id, submitted, user, password, hash, login, .. } => {
            let matches = match &hash {
                Some(hash) => verify_password(hash, &password),
                None => verify_password(dummy_hash(), &password).map(|_| false),
            };
            match (matches, login) {
                (Ok(false), _) => Outcome::Done(Ok(StoreValue::Rejected)),
                (Ok(true), None) => Outcome::Done(Ok(StoreValue::Verified)),
                (Ok(true), Some(LoginTerms { now_ms, ttl_ms })) => {
                    let (token, token_hash) = new_token();
                    let expires_ms = now_ms.saturating_add(ttl_ms);
                    Outcome::Finish(Finish::CreateToken { id, submitted, user, token, token_hash, expires_ms })
                }
                (Err(e), _) => {
                    tracing::error!(error = %e, user, "stored password hash is malformed");
                    Outcome::Done(Err(StoreError::Backend(StoreFailure::Other)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_password(&hash, "correct horse").unwrap());
        assert!(!verify_password(&hash, "wrong horse").unwrap());
        assert!(verify_password("not a hash", "x").is_err());
        // Fresh salt every time.
        assert_ne!(hash, hash_password("correct horse").unwrap());
    }

    #[test]
    fn tokens() {
        let (token, hash) = new_token();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash, token_hash(&token));
        assert_eq!(hash.len(), 64);
        assert_ne!(token, hash);
        assert_ne!(new_token().0, token);
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

//! `register`: many registrations at once from one address, each an
//! argon2 hash on the server, while a legitimate user logs in once a
//! second from another. A server that hashes whatever arrives keeps its
//! cores busy and the login waits behind the queue; one that limits
//! registrations per address and bounds its hashing queue answers 429 or
//! 503 early and the login goes through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proc::Usage;
use crate::stats::Histogram;
use crate::{http, name_prefix};

use super::{bystander_then_attack, counted, cpu_counts, AttackArgs, Outcome, ATTACKER, PASSWORD};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RegisterArgs {
    /// Registrations sent at once, each on its own connection.
    #[arg(long, default_value_t = 300)]
    count: usize,
    /// Seconds between the legitimate user's logins.
    #[arg(long, default_value_t = 1.0)]
    login_every: f64,
    /// Longest wait for any one answer, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// Answers by status code (or what failed), and their latency.
#[derive(Default)]
struct Answers {
    statuses: BTreeMap<String, usize>,
    latency: Histogram,
}

impl Answers {
    fn record(&mut self, result: std::io::Result<(u16, Vec<u8>)>, took: Duration) {
        let key = match result {
            Ok((status, _)) => status.to_string(),
            Err(e) => format!("failed: {e}"),
        };
        *self.statuses.entry(key).or_default() += 1;
        self.latency.record(took.as_micros() as u64);
    }
}

pub(crate) fn run(a: &AttackArgs, k: &RegisterArgs) -> Outcome {
    let prefix = name_prefix('z');
    let user = format!("{prefix}u");
    http::accounts(a.target.http, std::slice::from_ref(&user), PASSWORD, 1);
    let (by, usage) = bystander_then_attack(a, &["registrations"]);
    let timeout = Duration::from_secs_f64(k.timeout);
    let done = AtomicUsize::new(0);
    let registers = Mutex::new(Answers::default());
    let mut logins = Answers::default();
    let began = Instant::now();
    std::thread::scope(|s| {
        for i in 0..k.count {
            let (done, registers, prefix) = (&done, &registers, &prefix);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn_scoped(s, move || {
                    let body = format!(r#"{{"user":"{prefix}r{i}","password":"{PASSWORD}"}}"#);
                    let t = Instant::now();
                    let result = http::post_once(a.target.http, Some(ATTACKER), "/api/register", &body, timeout);
                    registers.lock().expect("answers").record(result, t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                })
                .expect("cannot start a registering thread");
        }
        // The legitimate user, from the default address, until every
        // registration is answered (and a few times at least).
        let body = format!(r#"{{"user":"{user}","password":"{PASSWORD}"}}"#);
        let mut next = Instant::now();
        while done.load(Ordering::Relaxed) < k.count || logins.latency.count() < 3 {
            if Instant::now() >= next {
                let t = Instant::now();
                logins.record(http::post_once(a.target.http, None, "/api/login", &body, timeout), t.elapsed());
                next += Duration::from_secs_f64(k.login_every);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let took = began.elapsed().as_secs_f64();
    let window = usage.until(&Usage::now(a.target.pid));
    let bystander = by.finish();
    let registers = registers.into_inner().expect("answers");
    let (r, l) = (registers.latency.ms(), logins.latency.ms());
    let mut counts = vec![
        ("registrations by status".into(), counted(&registers.statuses)),
        ("registration answer p50/max ms".into(), format!("{:.0}/{:.0}", r.p50, r.max)),
        ("all registrations answered in".into(), format!("{took:.1} s")),
        ("logins by status".into(), counted(&logins.statuses)),
        ("login p50/p99/max ms".into(), format!("{:.1}/{:.1}/{:.1}", l.p50, l.p99, l.max)),
    ];
    counts.extend(cpu_counts(&window));
    Outcome {
        title: format!(
            "register: {} concurrent registrations from one address; a user logs in every {} s meanwhile",
            k.count, k.login_every
        ),
        bystander,
        counts,
    }
}

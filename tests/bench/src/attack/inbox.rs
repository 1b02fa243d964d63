//! `inbox`: guests fill a registered user's inbox while it is offline (as
//! fast as the server answers), then the user reconnects in a loop,
//! reading for a moment each time and never acknowledging. A server that
//! sends the whole inbox at every `welcome` spends its loop on it; one that
//! bounds the inbox refuses the flood past the bound (`inbox_full`) and
//! sends it in pages.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fleet::{Event, Fleet, Hello, Plan};
use crate::proc::Usage;
use crate::scan::{number, scan};
use crate::stats::Histogram;
use crate::{http, name_prefix};

use super::{attacker_session, bystander_then_attack, counted, cpu_counts, AttackArgs, Outcome, PASSWORD};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct InboxArgs {
    /// Private messages sent to the offline user.
    #[arg(long, default_value_t = 60_000)]
    messages: usize,
    /// Guest sessions sending them, each its share.
    #[arg(long, default_value_t = 60)]
    senders: usize,
    /// Loopback source addresses the senders come from (127.0.0.2, ...).
    #[arg(long, default_value_t = 10)]
    sources: usize,
    /// Sends a sender has unanswered at once.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Longest the flood may take, seconds.
    #[arg(long, default_value_t = 30.0)]
    flood_limit: f64,
    /// Seconds of reconnecting.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Milliseconds each reconnected session reads before it closes.
    #[arg(long, default_value_t = 200)]
    read_ms: u64,
}

/// How the flood went.
#[derive(Default)]
struct Flood {
    sent: u64,
    stored: u64,
    refused: BTreeMap<String, usize>,
    seconds: f64,
}

/// How the reconnects went.
#[derive(Default)]
struct Reconnects {
    done: u64,
    failed: BTreeMap<String, usize>,
    /// `private` frames read after `welcome`, over all reconnects.
    privates: u64,
    /// Sessions the server closed within the read, by reason (a slow
    /// consumer: more queued for it than `--max-queue`).
    closed: BTreeMap<String, usize>,
    /// Connect to `welcome`.
    welcome: Histogram,
}

pub(crate) fn run(a: &AttackArgs, k: &InboxArgs) -> Outcome {
    let prefix = name_prefix('v');
    let victim = format!("{prefix}v");
    let token = http::accounts(a.target.http, std::slice::from_ref(&victim), PASSWORD, 1);
    let (by, usage) = bystander_then_attack(a, &["flood", "reconnects"]);
    let flood = flood(a, k, &victim, &prefix);
    eprintln!("inbox: {} stored, {} refused in {:.1} s", flood.stored, flood.sent - flood.stored, flood.seconds);
    by.next_phase();
    let re = reconnect(a, k, &token);
    let window = usage.until(&Usage::now(a.target.pid));
    let bystander = by.finish();
    let w = re.welcome.ms();
    let mut counts = vec![
        ("private messages sent".into(), flood.sent.to_string()),
        ("stored (ok)".into(), flood.stored.to_string()),
        ("refused".into(), counted(&flood.refused)),
        ("unanswered".into(), (flood.sent - flood.stored - flood.refused.values().sum::<usize>() as u64).to_string()),
        ("flood took".into(), format!("{:.1} s", flood.seconds)),
        ("reconnects done (welcome)".into(), re.done.to_string()),
        ("reconnects refused".into(), counted(&re.failed)),
        ("private messages read after welcome".into(), re.privates.to_string()),
        ("reconnected sessions the server closed".into(), counted(&re.closed)),
        ("connect to welcome p50/max ms".into(), format!("{:.1}/{:.1}", w.p50, w.max)),
    ];
    counts.extend(cpu_counts(&window));
    Outcome {
        title: format!(
            "inbox: {} private messages from {} guests to an offline user, then {} s of reconnects reading {} ms each",
            k.messages, k.senders, k.seconds, k.read_ms
        ),
        bystander,
        counts,
    }
}

/// Guests send the victim `k.messages` private messages, each sender its
/// share with `k.window` unanswered at most.
fn flood(a: &AttackArgs, k: &InboxArgs, victim: &str, prefix: &str) -> Flood {
    let guests = format!("{prefix}g");
    let plan = Plan {
        http: a.target.http,
        hello: Hello::Guest(&guests),
        rooms: None,
        count: k.senders,
        sources: k.sources,
        local: None,
        second: None,
        in_flight: 50,
        session_timeout: Duration::from_secs(15),
    };
    let (mut fleet, _) = Fleet::open(&plan);
    let share = k.messages.div_ceil(k.senders);
    let mut left: Vec<usize> = (0..k.senders).map(|i| share.min(k.messages.saturating_sub(i * share))).collect();
    let mut unanswered = vec![0usize; k.senders];
    let mut r = Flood::default();
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(k.flood_limit);
    let text = "x".repeat(64);
    while Instant::now() < deadline {
        for i in 0..k.senders {
            while left[i] > 0 && unanswered[i] < k.window && fleet.is_open(i) {
                let msg = format!(r#"{{"type":"send","to":"{victim}","text":"{text}","ref":"{}"}}"#, r.sent);
                if !fleet.send(i, msg.as_bytes()) {
                    break;
                }
                (left[i], unanswered[i], r.sent) = (left[i] - 1, unanswered[i] + 1, r.sent + 1);
            }
        }
        if unanswered.iter().all(|&u| u == 0) {
            break;
        }
        fleet.pump(Duration::from_millis(5), |i, ev, _| {
            let Event::Text(t) = ev else { return };
            let f = scan(t);
            if f.reference.and_then(number).is_none() {
                return;
            }
            match f.kind {
                b"ok" => r.stored += 1,
                b"error" => {
                    *r.refused.entry(String::from_utf8_lossy(f.code.unwrap_or(b"?")).into_owned()).or_default() += 1
                }
                _ => return,
            }
            unanswered[i] -= 1;
        });
        // A sender whose connection is gone has nothing more on its way.
        for (i, u) in unanswered.iter_mut().enumerate() {
            if !fleet.is_open(i) {
                *u = 0;
            }
        }
    }
    r.seconds = began.elapsed().as_secs_f64();
    r
}

/// The victim's sessions, one after another for `k.seconds`: connect with
/// the token, read for `k.read_ms`, close.
fn reconnect(a: &AttackArgs, k: &InboxArgs, token: &[String]) -> Reconnects {
    let mut r = Reconnects::default();
    let end = Instant::now() + Duration::from_secs_f64(k.seconds);
    while Instant::now() < end {
        let plan = attacker_session(a, token);
        let (mut fleet, opened) = Fleet::open(&plan);
        if opened.ready == 0 {
            for (why, n) in opened.failed {
                *r.failed.entry(why).or_default() += n;
            }
            // A refusal costs the server little: without a pause the loop
            // would only run out of source ports.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        r.done += 1;
        r.welcome.record(opened.latency.percentile(1.0));
        fleet.pump_until(Instant::now() + Duration::from_millis(k.read_ms), |_, ev, _| {
            if let Event::Text(t) = ev {
                r.privates += u64::from(scan(t).kind == b"private");
            }
        });
        for (why, n) in std::mem::take(&mut fleet.gone) {
            *r.closed.entry(why).or_default() += n;
        }
    }
    r
}

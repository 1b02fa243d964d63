//! `rooms`: many live rooms, then a listing of the largest ones asked for
//! over and over. A server that walks and sorts every room per request
//! spends its loop on it; one that keeps rooms sorted and budgets listings
//! per session answers some quickly and refuses the rest (`rate_limited`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fleet::{summary, Event, Fleet, Hello, Plan};
use crate::name_prefix;
use crate::phase::Schedule;
use crate::proc::Usage;
use crate::scan::{numbers, scan};
use crate::stats::Histogram;

use super::{bystander_then_attack, counted, cpu_counts, guest_plan, join_all, AttackArgs, Outcome, ATTACKER};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RoomsArgs {
    /// Guest sessions that hold the rooms.
    #[arg(long, default_value_t = 150)]
    guests: usize,
    /// Rooms each guest joins (the server's --max-rooms must allow it).
    #[arg(long, default_value_t = 100)]
    rooms_each: usize,
    /// Loopback source addresses the guests come from (127.0.0.2, ...).
    #[arg(long, default_value_t = 10)]
    sources: usize,
    /// Connections asking for the listing.
    #[arg(long, default_value_t = 10)]
    askers: usize,
    /// Listings a second per connection.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The listing's `limit`.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Seconds of asking.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// How the listings were answered.
#[derive(Default)]
struct Answers {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, usize>,
    /// Due to answer, `ok`s only.
    latency: Histogram,
}

impl Answers {
    fn settled(&self) -> u64 {
        self.ok + self.errors.values().sum::<usize>() as u64
    }
}

pub(crate) fn run(a: &AttackArgs, k: &RoomsArgs) -> Outcome {
    let prefix = name_prefix('r');
    let holders = guest_plan(a, &prefix, k.guests, k.sources);
    let began = Instant::now();
    let (mut holders, opened) = Fleet::open(&holders);
    let room_names = |i: usize| (0..k.rooms_each).map(|j| format!("{prefix}r{i}x{j}")).collect();
    let (joined, join_errors) = join_all(&mut holders, k.guests, room_names, Duration::from_secs(60));
    let setup_s = began.elapsed().as_secs_f64();
    eprintln!("rooms: {} guests in {joined} rooms in {setup_s:.1} s", opened.ready);

    let (by, usage) = bystander_then_attack(a, &["listings"]);
    let asker_prefix = name_prefix('q');
    let askers = Plan {
        http: a.target.http,
        hello: Hello::Guest(&asker_prefix),
        rooms: None,
        count: k.askers,
        sources: 1,
        local: Some(ATTACKER),
        second: None,
        in_flight: k.askers,
        session_timeout: Duration::from_secs(15),
    };
    let (mut askers, asked_open) = Fleet::open(&askers);
    let answers = ask(&mut askers, k);
    let window = usage.until(&Usage::now(a.target.pid));
    let bystander = by.finish();
    let askers_lost = summary(&askers.gone);
    drop((askers, holders));

    let l = answers.latency.ms();
    let mut counts = vec![
        ("guests holding rooms".into(), format!("{} ({} failed)", opened.ready, opened.failures())),
        ("rooms joined".into(), format!("{joined} in {setup_s:.1} s (errors: {})", counted(&join_errors))),
        ("asking connections".into(), format!("{} ({} failed)", asked_open.ready, asked_open.failures())),
        ("listings asked".into(), answers.sent.to_string()),
        ("answered ok".into(), answers.ok.to_string()),
        ("answered rate_limited".into(), answers.errors.get("rate_limited").copied().unwrap_or(0).to_string()),
        ("other answers".into(), other_than(&answers.errors, "rate_limited")),
        ("unanswered".into(), (answers.sent - answers.settled()).to_string()),
        ("asking connections lost".into(), askers_lost),
        ("listing ok p50/p99/max ms".into(), format!("{:.1}/{:.1}/{:.1}", l.p50, l.p99, l.max)),
    ];
    counts.extend(cpu_counts(&window));
    Outcome {
        title: format!(
            "rooms: {} rooms held by {} guests; {} connections ask for rooms limit {} at {}/s each for {} s",
            k.guests * k.rooms_each,
            k.guests,
            k.askers,
            k.limit,
            k.rate,
            k.seconds
        ),
        bystander,
        counts,
    }
}

/// The error counts except `code`.
fn other_than(errors: &BTreeMap<String, usize>, code: &str) -> String {
    let mut rest = errors.clone();
    rest.remove(code);
    counted(&rest)
}

/// Every asker sends listings on a schedule for `k.seconds`; then up to 5 s
/// for the answers still on their way.
fn ask(fleet: &mut Fleet, k: &RoomsArgs) -> Answers {
    let mut r = Answers::default();
    let start = Instant::now();
    let (end, t0) = (start + Duration::from_secs_f64(k.seconds), fleet.t0);
    let drain_end = end + Duration::from_secs(5);
    let mut schedule = Schedule::new(start, k.askers, k.rate);
    loop {
        let now = Instant::now();
        if now >= drain_end || (now >= end && r.settled() >= r.sent) {
            return r;
        }
        if now < end {
            for i in 0..k.askers {
                while let Some(due) = schedule.due(i, now) {
                    let due = due.duration_since(t0).as_micros() as u64;
                    let msg = format!(r#"{{"type":"rooms","limit":{},"ref":"{} {due}"}}"#, k.limit, r.sent);
                    r.sent += u64::from(fleet.send(i, msg.as_bytes()));
                }
            }
        }
        let wait = schedule.next().filter(|_| now < end).map_or(Duration::from_millis(5), |t| t - now.min(t));
        fleet.pump(wait.min(Duration::from_millis(5)), |_, ev, now_us| {
            let Event::Text(t) = ev else { return };
            let f = scan(t);
            let Some([_, due]) = f.reference.and_then(numbers::<2>) else { return };
            match f.kind {
                b"ok" => {
                    r.ok += 1;
                    r.latency.record(now_us.saturating_sub(due));
                }
                b"error" => {
                    *r.errors.entry(String::from_utf8_lossy(f.code.unwrap_or(b"?")).into_owned()).or_default() += 1
                }
                _ => {}
            }
        });
    }
}

//! `presence`: guests sit in `lobby` while one client opens and closes
//! sessions in a loop, first a registered user re-using its token (each
//! open and close is `online` and `offline` to every member of its rooms),
//! then guests on the line port (each is `join` and `leave` in `lobby`).
//! The figures are the presence events the guests received and the
//! sessions the attacker got; a fixed server limits session opens and
//! coalesces a user's quick flaps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{summary, Event, Fleet, Hello, Plan};
use crate::proc::Usage;
use crate::scan::scan;
use crate::{http, name_prefix};

use super::{
    attacker_session, bystander_then_attack, counted, cpu_counts, guest_plan, join_all, AttackArgs, Outcome, ATTACKER,
    PASSWORD,
};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct PresenceArgs {
    /// Guests in `lobby` receiving the presence events.
    #[arg(long, default_value_t = 50)]
    guests: usize,
    /// Loopback source addresses the guests come from (127.0.0.2, ...).
    #[arg(long, default_value_t = 5)]
    sources: usize,
    /// Seconds of each loop (the token's, then the line port's).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Loops the attacker runs at once (one client, several connections).
    #[arg(long, default_value_t = 4)]
    loops: usize,
}

/// The sessions one loop asked for.
#[derive(Default)]
struct Flaps {
    opened: u64,
    refused: BTreeMap<String, usize>,
    /// Presence events the guests received meanwhile (and just after).
    events: u64,
}

/// What time lets events already sent arrive before they are counted.
const SETTLE: Duration = Duration::from_millis(500);

pub(crate) fn run(a: &AttackArgs, k: &PresenceArgs) -> Outcome {
    let line = a.line.expect("presence needs --line, the server's line-protocol address");
    let prefix = name_prefix('f');
    let attacker = format!("{prefix}a");
    let token = http::accounts(a.target.http, std::slice::from_ref(&attacker), PASSWORD, 1);
    join_lobby(a, &token);
    let listeners = Listeners::start(a, k, &prefix);
    let (by, usage) = bystander_then_attack(a, &["token flaps", "line flaps"]);
    let token_flaps = listeners.count(|| in_parallel(k.loops, |_| flap_token(a, k, &token)));
    by.next_phase();
    let line_flaps = listeners.count(|| in_parallel(k.loops, |n| flap_line(line, k, &format!("{prefix}{n}"))));
    let window = usage.until(&Usage::now(a.target.pid));
    let bystander = by.finish();
    let (ready, lost) = listeners.stop();
    let mut counts = vec![("guests in lobby".into(), ready.to_string())];
    for (name, f) in [("token", &token_flaps), ("line", &line_flaps)] {
        counts.push((format!("{name}: sessions opened"), f.opened.to_string()));
        counts.push((format!("{name}: refused"), counted(&f.refused)));
        counts.push((format!("{name}: presence events to the guests"), f.events.to_string()));
    }
    counts.push(("guests' connections lost".into(), lost));
    counts.extend(cpu_counts(&window));
    Outcome {
        title: format!(
            "presence: {} guests in lobby; one user's sessions open and close in {} loops for {} s, then line guests' for {} s",
            k.guests, k.loops, k.seconds, k.seconds
        ),
        bystander,
        counts,
    }
}

/// Makes the attacker a member of `lobby` (a stored membership: it outlives the session).
fn join_lobby(a: &AttackArgs, token: &[String]) {
    let plan = Plan {
        http: a.target.http,
        hello: Hello::Token(token),
        rooms: None,
        count: 1,
        sources: 1,
        local: None,
        second: None,
        in_flight: 1,
        session_timeout: Duration::from_secs(10),
    };
    let (mut fleet, opened) = Fleet::open(&plan);
    opened.require_all("the attacker's first session");
    let (ok, errors) = join_all(&mut fleet, 1, |_| vec!["lobby".into()], Duration::from_secs(10));
    assert_eq!(ok, 1, "the attacker could not join lobby: {}", summary(&errors));
}

/// The guests in `lobby`, read on their own thread (else their queues
/// would fill and the server close them as slow consumers).
struct Listeners {
    events: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ready: usize,
    thread: std::thread::JoinHandle<String>,
}

impl Listeners {
    fn start(a: &AttackArgs, k: &PresenceArgs, prefix: &str) -> Listeners {
        let guests = format!("{prefix}g");
        let plan = guest_plan(a, &guests, k.guests, k.sources);
        let (mut fleet, opened) = Fleet::open(&plan);
        let (ready, errors) = join_all(&mut fleet, k.guests, |_| vec!["lobby".into()], Duration::from_secs(15));
        assert!(errors.is_empty(), "guests could not join lobby: {}", summary(&errors));
        eprintln!("presence: {ready} of {} guests in lobby ({})", k.guests, opened.failure_summary());
        let (events, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (e, s) = (events.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("listeners".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    fleet.pump(Duration::from_millis(20), |_, ev, _| {
                        if let Event::Text(t) = ev {
                            if scan(t).kind == b"presence" {
                                e.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                summary(&fleet.gone)
            })
            .expect("cannot start the listeners' thread");
        Listeners { events, stop, ready, thread }
    }

    /// Runs one loop; its flaps with the presence events counted meanwhile.
    fn count(&self, flap: impl FnOnce() -> Flaps) -> Flaps {
        let before = self.events.load(Ordering::Relaxed);
        let mut f = flap();
        std::thread::sleep(SETTLE);
        f.events = self.events.load(Ordering::Relaxed) - before;
        f
    }

    /// Guests in lobby, and why any lost its connection.
    fn stop(self) -> (usize, String) {
        self.stop.store(true, Ordering::Relaxed);
        (self.ready, self.thread.join().expect("the listeners' thread panicked"))
    }
}

/// Runs `loops` flap loops at once (loop `n` gets `n`); their sums.
fn in_parallel(loops: usize, flap: impl Fn(usize) -> Flaps + Sync) -> Flaps {
    let flap = &flap;
    let all: Vec<Flaps> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..loops.max(1)).map(|n| s.spawn(move || flap(n))).collect();
        handles.into_iter().map(|h| h.join().expect("a flap loop panicked")).collect()
    });
    let mut sum = Flaps::default();
    for f in all {
        sum.opened += f.opened;
        for (why, n) in f.refused {
            *sum.refused.entry(why).or_default() += n;
        }
    }
    sum
}

/// The attacker's sessions with its token, one after another: open, close.
fn flap_token(a: &AttackArgs, k: &PresenceArgs, token: &[String]) -> Flaps {
    let mut f = Flaps::default();
    let end = Instant::now() + Duration::from_secs_f64(k.seconds);
    while Instant::now() < end {
        let plan = attacker_session(a, token);
        let (_, opened) = Fleet::open(&plan);
        f.opened += opened.ready as u64;
        refused(&mut f, opened.failed);
    }
    f
}

/// Counts refusals; pauses after one, or the loop only runs out of source ports.
fn refused(f: &mut Flaps, reasons: BTreeMap<String, usize>) {
    if reasons.is_empty() {
        return;
    }
    for (why, n) in reasons {
        *f.refused.entry(why).or_default() += n;
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// Line-port guests, one after another: connect, nickname, `* welcome`, close.
fn flap_line(line: SocketAddr, k: &PresenceArgs, prefix: &str) -> Flaps {
    let mut f = Flaps::default();
    let end = Instant::now() + Duration::from_secs_f64(k.seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        match line_guest(line, &format!("{prefix}l{n}")) {
            Ok(()) => f.opened += 1,
            Err(why) => refused(&mut f, BTreeMap::from([(why, 1)])),
        }
    }
    f
}

/// One line-port guest session up to its `* welcome`; else why not (the
/// server's `! CODE`, or what failed).
fn line_guest(line: SocketAddr, name: &str) -> Result<(), String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket.bind(&SocketAddr::new(ATTACKER, 0).into()).map_err(|e| format!("bind: {e}"))?;
    socket.connect(&line.into()).map_err(|e| format!("connect: {e}"))?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream.write_all(format!("{name}\n").as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut l = String::new();
    loop {
        l.clear();
        match reader.read_line(&mut l) {
            Ok(0) => return Err("closed".into()),
            Ok(_) if l.starts_with("* welcome") => return Ok(()),
            Ok(_) if l.starts_with("! ") => {
                return Err(format!("! {}", l[2..].split_whitespace().next().unwrap_or("?")));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

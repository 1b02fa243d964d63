//! Attacks: what one abusive client can make the server do to everybody
//! else. Each kind runs a bounded attack (bounded in count and time, on
//! loopback, stopping by itself) while a [`Bystander`] — a registered user
//! in a room with a second member — sends a room message every 50 ms and
//! times its `ok`s. The figures are the bystander's alone first, then
//! during each phase of the attack, and the attack's own counts (what the
//! server answered it): a fixed server refuses the attack and keeps the
//! bystander's latency where it was.
//!
//! The attacker connects from its own loopback address ([`ATTACKER`]), the
//! bystander from the default one, so that a per-address limit meant for
//! the attacker does not hit the bystander (as on the internet). What an
//! attack builds first (rooms, an inbox) is spread over other loopback
//! addresses: that set-up is not what is measured.

mod bystander;
mod inbox;
mod presence;
mod register;
mod rooms;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::fleet::{Event, Fleet, Hello, Plan};
use crate::proc::{Usage, Window};
use crate::report::{col, text, Cell, Table};
use crate::scan::scan;
use crate::Target;

pub(crate) use bystander::Bystander;

/// The attacker's source address: not the bystander's (127.0.0.1) nor one
/// of the set-up's (127.0.0.2 and up).
pub(crate) const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1));

/// Any password within the 8..=1024 rule.
pub(crate) const PASSWORD: &str = "bench-password-7";

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct AttackArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// The server's line-protocol address (`presence` flaps line guests there).
    #[arg(long)]
    pub(crate) line: Option<SocketAddr>,
    /// Seconds of the bystander alone, before the attack.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) baseline: f64,
    #[command(subcommand)]
    pub(crate) kind: Kind,
}

/// The attacks. Every kind needs the server's `--rate` at 20 or more (the
/// bystander sends 20 messages a second); what else a kind needs is in its
/// own help.
#[derive(clap::Subcommand, Clone, Debug)]
pub(crate) enum Kind {
    /// ~15,000 live rooms, then `rooms` listings of 1,000 from 10 connections
    /// at 20/s each. The server needs `--rate 1000000 --burst 1000000` (each
    /// guest joins its rooms at once) and `--max-rooms` at least --rooms-each.
    Rooms(rooms::RoomsArgs),
    /// A registered user's inbox filled while it is offline, then the user
    /// reconnecting in a loop. The server needs `--rate 1000000 --burst
    /// 1000000` (the senders send as fast as the server answers).
    Inbox(inbox::InboxArgs),
    /// 50 guests in `lobby` while one user's sessions open and close in a
    /// loop (4 at once), then line-port guests do (needs --line).
    Presence(presence::PresenceArgs),
    /// 300 concurrent registrations from one address while a user logs in
    /// once a second.
    Register(register::RegisterArgs),
}

/// What one attack run found.
pub(crate) struct Outcome {
    pub(crate) title: String,
    /// The bystander's figures: the baseline, then each phase of the attack.
    pub(crate) bystander: Vec<bystander::Figures>,
    /// The attack's own counts, in order: what, and how many.
    pub(crate) counts: Vec<(String, String)>,
}

impl Outcome {
    fn tables(&self) -> (Table, Table) {
        let mut by = Table::new(
            format!("{}: bystander's room messages, one every 50 ms", self.title),
            vec![
                col("sent"),
                col("ok"),
                col("ok p50 ms"),
                col("ok p99 ms"),
                col("ok max ms"),
                col("no ok in 5 s"),
                text("errors"),
            ],
        )
        .first("phase");
        for f in &self.bystander {
            let l = f.latency.ms();
            by.push(
                &f.phase,
                vec![
                    Cell::num(f.sent as f64, 0),
                    Cell::num(f.latency.count() as f64, 0),
                    Cell::num(l.p50, 2),
                    Cell::num(l.p99, 2),
                    Cell::num(l.max, 2),
                    Cell::num(f.timeouts as f64, 0),
                    Cell::text(crate::fleet::summary(&f.errors)),
                ],
            );
        }
        let mut counts = Table::new(format!("{}: the attack", self.title), vec![text("count")]).first("what");
        for (what, n) in &self.counts {
            counts.push(what, vec![Cell::text(n.clone())]);
        }
        (by, counts)
    }
}

/// Runs the attack; prints its tables; returns the exit status.
pub(crate) fn run(a: &AttackArgs) -> i32 {
    a.target.check();
    if let Some(line) = a.line {
        assert!(line.ip().is_loopback(), "--line {line}: load goes to loopback addresses only");
    }
    let o = match &a.kind {
        Kind::Rooms(k) => rooms::run(a, k),
        Kind::Inbox(k) => inbox::run(a, k),
        Kind::Presence(k) => presence::run(a, k),
        Kind::Register(k) => register::run(a, k),
    };
    let (by, counts) = o.tables();
    if a.target.json {
        println!("{}", serde_json::json!({ "bystander": by.to_json(), "attack": counts.to_json() }));
    } else {
        print!("{}\n{}", by.render(), counts.render());
    }
    0
}

/// Starts the bystander and lets it run alone for the baseline; returns it
/// in its first attack phase, the server's and this process's CPU readings
/// taken as the attack starts.
/// `count` guests named `prefix` + index, from the set-up addresses: what
/// an attack builds before it starts.
pub(crate) fn guest_plan<'a>(a: &AttackArgs, prefix: &'a str, count: usize, sources: usize) -> Plan<'a> {
    Plan {
        http: a.target.http,
        hello: Hello::Guest(prefix),
        rooms: None,
        count,
        sources,
        local: None,
        second: None,
        in_flight: 50,
        session_timeout: Duration::from_secs(15),
    }
}

/// One session of the attacker's, opened with `token`.
pub(crate) fn attacker_session<'a>(a: &AttackArgs, token: &'a [String]) -> Plan<'a> {
    Plan {
        http: a.target.http,
        hello: Hello::Token(token),
        rooms: None,
        count: 1,
        sources: 1,
        local: Some(ATTACKER),
        second: None,
        in_flight: 1,
        session_timeout: Duration::from_secs(5),
    }
}

pub(crate) fn bystander_then_attack(a: &AttackArgs, phases: &[&str]) -> (Bystander, Usage) {
    let by = Bystander::start(a.target.http, phases);
    std::thread::sleep(Duration::from_secs_f64(a.baseline));
    by.next_phase();
    (by, Usage::now(a.target.pid))
}

/// CPU counts of an attack's window.
pub(crate) fn cpu_counts(w: &Window) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(s) = w.server_cpu_s {
        out.push(("server CPU during the attack".into(), format!("{s:.1} s of {:.1} s", w.seconds)));
    }
    // Past the limit the generator, not the server, may set the attack's pace.
    let saturated = if w.generator_saturated() { " (saturated)" } else { "" };
    out.push(("load generator CPU".into(), format!("{:.0}%{saturated}", w.own_share() * 100.0)));
    out
}

/// `reason xN, ...` of a count map, or "none".
pub(crate) fn counted(m: &BTreeMap<String, usize>) -> String {
    crate::fleet::summary(m)
}

/// Sends each client's joins (client `i` joins every room `rooms(i)` names)
/// and waits for their answers, up to `timeout`: returns the joins answered
/// `ok` and the errors by code.
pub(crate) fn join_all(
    fleet: &mut Fleet,
    clients: usize,
    rooms: impl Fn(usize) -> Vec<String>,
    timeout: Duration,
) -> (usize, BTreeMap<String, usize>) {
    let mut expected = 0;
    for i in 0..clients {
        for room in rooms(i) {
            let msg = format!(r#"{{"type":"join","room":"{room}","ref":"j"}}"#);
            expected += usize::from(fleet.send(i, msg.as_bytes()));
        }
    }
    let (mut ok, mut errors) = (0, BTreeMap::new());
    let deadline = Instant::now() + timeout;
    while ok + errors.values().sum::<usize>() < expected && Instant::now() < deadline {
        fleet.pump(Duration::from_millis(20), |_, ev, _| {
            if let Event::Text(t) = ev {
                let f = scan(t);
                match (f.kind, f.reference) {
                    (b"ok", Some(b"j")) => ok += 1,
                    (b"error", Some(b"j")) => {
                        *errors.entry(String::from_utf8_lossy(f.code.unwrap_or(b"?")).into_owned()).or_default() += 1
                    }
                    _ => {}
                }
            }
        });
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_phase_and_a_row_per_count() {
        let mut attack = bystander::Figures { phase: "listings".into(), sent: 3, timeouts: 1, ..Default::default() };
        // 2 ms reads 2.02: the upper edge of its bucket.
        attack.latency.record(2_000);
        attack.latency.record(6_000_000);
        attack.errors.insert("rate_limited".into(), 1);
        let o = Outcome {
            title: "t".into(),
            bystander: vec![bystander::Figures { phase: "baseline".into(), ..Default::default() }, attack],
            counts: vec![("answered ok".into(), "12".into())],
        };
        let (by, counts) = o.tables();
        let by = by.render();
        assert!(by.contains("| baseline | 0 | 0 | 0.00 | 0.00 | 0.00 | 0 | none |"), "{by}");
        assert!(by.contains("| listings | 3 | 2 | 2.02 | 6000.00 | 6000.00 | 1 | rate_limited x1 |"), "{by}");
        assert!(counts.render().contains("| answered ok | 12 |"));
    }
}

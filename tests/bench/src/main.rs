//! `natter-bench`: load over real sockets on loopback, speaking the real
//! protocol, with a check that nothing is lost, doubled or reordered.
//!
//! Each scenario is a subcommand against a running server (`--http`, and
//! `--pid` for its CPU and memory figures); `compare` starts each runtime
//! binary in turn and runs the scenarios against it. Send times travel in
//! the message texts (and refs), so latency is measured on this process's
//! monotonic clock, from when a message was due rather than when it went
//! out: a generator that falls behind shows up as latency, not as a
//! quietly lower load. The server must run with `--rate`/`--burst` above
//! the senders' rate (`compare` passes `--rate 1000000 --burst 1000000`).

mod attack;
mod cluster;
mod compare;
mod fanout;
mod fleet;
mod http;
mod hub;
mod idle;
mod phase;
mod private;
mod proc;
mod ramp;
mod report;
mod scale;
mod scan;
mod stats;
mod storm;
mod wsclient;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generator for Natter")]
struct Cli {
    #[command(subcommand)]
    scenario: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rooms of guests, a few senders per room at a fixed rate.
    Fanout(fanout::FanoutArgs),
    /// The fan-out on one set of clients, the rate raised step by step until
    /// p99 passes a limit or anything is lost.
    Ramp(ramp::RampArgs),
    /// Pairs of registered users sending private messages to each other.
    Private(private::PrivateArgs),
    /// Many silent sessions held open: memory per session, heartbeats.
    Idle(idle::IdleArgs),
    /// Sessions opened as fast as the server takes them.
    Storm(storm::StormArgs),
    /// About 19,000 sessions from several source addresses, held.
    Scale(scale::ScaleArgs),
    /// A bounded attack while a bystander sends a room message every 50 ms:
    /// the bystander's `ok` latency alone, then during the attack.
    Attack(attack::AttackArgs),
    /// Starts each runtime binary in turn, runs the scenarios against it and
    /// prints one table per scenario with ratios against the first binary.
    Compare(compare::CompareArgs),
    /// One binary on SQLite, on PostgreSQL, and as two nodes on PostgreSQL
    /// and Redis (private instances it starts): the fan-out side by side,
    /// cross-node latency apart; then private messages on PostgreSQL.
    Cluster(cluster::ClusterArgs),
    /// The hub alone, in process (no sockets, no threads): its cost per
    /// routed message and per delivery against a shard's per delivery, and
    /// so how many I/O threads one hub can feed.
    Hub(hub::HubArgs),
}

/// The server under load, and how to print.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Target {
    /// The server's HTTP address (loopback: the load stays on this machine).
    #[arg(long)]
    pub(crate) http: SocketAddr,
    /// The server's PID, for its CPU and memory figures.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Print JSON instead of a markdown table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Target {
    pub(crate) fn check(&self) {
        assert!(self.http.ip().is_loopback(), "--http {}: load goes to loopback addresses only", self.http);
    }
}

/// A scenario's arguments: the title of its table.
pub(crate) trait Titled {
    fn title(&self) -> String;
}

/// A prefix for names that is unique to this process and call: guests and
/// users of one run never meet those of another on the same server.
pub(crate) fn name_prefix(letter: char) -> String {
    static RUN: AtomicU32 = AtomicU32::new(0);
    format!("{letter}{}n{}x", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed))
}

/// Source addresses for `clients` when not given: one holds about 28,000.
pub(crate) fn sources_for(clients: usize, given: usize) -> usize {
    if given > 0 {
        given
    } else {
        clients.div_ceil(20_000)
    }
}

fn single<A: Titled, R: report::Row>(a: &A, target: &Target, run: impl FnOnce(&A) -> R) -> i32 {
    target.check();
    let r = run(a);
    report::print_one(&a.title(), &target.http.to_string(), &r, target.json);
    i32::from(!r.clean())
}

fn main() {
    let status = match Cli::parse().scenario {
        Command::Fanout(a) => single(&a, &a.target, fanout::run),
        Command::Ramp(a) => single(&a, &a.target, ramp::run),
        Command::Private(a) => single(&a, &a.target, private::run),
        Command::Idle(a) => single(&a, &a.target, idle::run),
        Command::Storm(a) => single(&a, &a.target, storm::run),
        Command::Scale(a) => single(&a, &a.target, scale::run),
        Command::Attack(a) => attack::run(&a),
        Command::Compare(a) => compare::run(&a),
        Command::Cluster(a) => cluster::run(&a),
        Command::Hub(a) => hub::run(&a),
    };
    std::process::exit(status);
}

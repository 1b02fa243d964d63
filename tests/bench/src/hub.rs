//! `natter-bench hub`: the hub alone, no sockets, no threads (see
//! `natter_sim::hub_bench`). It times the hub's side of routing room
//! messages (per message and per delivery) and the shards' side of taking
//! the deliveries (per delivery, writing nothing to sockets), and divides
//! one by the other: how many I/O threads one hub can feed before it
//! saturates. Wall times are noisy on a shared machine; run it under
//! `valgrind --tool=callgrind` for instruction counts (BENCHMARKS.md).

use std::time::{Duration, Instant};

use natter_sim::hub_bench::{HubBench, HubBenchSpec, Routed};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct HubArgs {
    /// I/O threads (shards) the sessions are dealt to.
    #[arg(long, default_value_t = 16)]
    shards: u16,
    /// Guest sessions in all.
    #[arg(long, default_value_t = 16_000)]
    sessions: usize,
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Messages the hub takes per turn (sends, then their completions).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Room messages routed after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Route only: leave out the shards' side (for a profile of the hub).
    #[arg(long)]
    hub_only: bool,
    /// Print JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
}

struct Figures {
    routed: Routed,
    setup: Duration,
    hub: Duration,
    shards: Duration,
    written: u64,
}

pub(crate) fn run(a: &HubArgs) -> i32 {
    let spec = HubBenchSpec { shards: a.shards, sessions: a.sessions, room_size: a.room_size, batch: a.batch };
    let t = Instant::now();
    let mut bench = HubBench::new(spec);
    let setup = t.elapsed();
    let mut mail = Vec::new();
    // Warm-up: one message per room, so every table and buffer is grown.
    bench.route(spec.rooms(), &mut mail);
    bench.feed_shards(&mut mail);
    let before = bench.delivered();
    let f = measure(&mut bench, a, setup);
    let expected = a.messages as u64 * bench.deliveries_per_message();
    let mut clean = f.routed.deliveries == expected;
    if !a.hub_only {
        clean &= bench.delivered() - before == expected;
    }
    print(a, &f);
    if !clean {
        eprintln!("lost deliveries: {} routed, {} expected", f.routed.deliveries, expected);
    }
    i32::from(!clean)
}

/// The measured loop, apart so that a profile can collect it alone
/// (`valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='natter_bench::hub::measure'`).
#[inline(never)]
fn measure(bench: &mut HubBench, a: &HubArgs, setup: Duration) -> Figures {
    let mut mail = Vec::new();
    let mut f = Figures { routed: Routed::default(), setup, hub: Duration::ZERO, shards: Duration::ZERO, written: 0 };
    let mut left = a.messages;
    while left > 0 {
        let turn = left.min(a.batch);
        left -= turn;
        let t = Instant::now();
        let r = bench.route(turn, &mut mail);
        f.hub += t.elapsed();
        add(&mut f.routed, r);
        if a.hub_only {
            mail.clear();
            continue;
        }
        let t = Instant::now();
        f.written += bench.feed_shards(&mut mail);
        f.shards += t.elapsed();
    }
    f
}

fn add(total: &mut Routed, r: Routed) {
    total.messages += r.messages;
    total.deliveries += r.deliveries;
    total.batches += r.batches;
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n.max(1) as f64
}

fn print(a: &HubArgs, f: &Figures) {
    let hub_msg = ns_per(f.hub, f.routed.messages);
    let hub_del = ns_per(f.hub, f.routed.deliveries);
    let shard_del = ns_per(f.shards, f.routed.deliveries);
    let feeds = if a.hub_only { 0.0 } else { shard_del / hub_del };
    if a.json {
        let v = serde_json::json!({
            "shards": a.shards, "sessions": a.sessions, "room_size": a.room_size, "batch": a.batch,
            "messages": f.routed.messages, "deliveries": f.routed.deliveries, "batches": f.routed.batches,
            "setup_s": f.setup.as_secs_f64(), "hub_ns_per_message": hub_msg, "hub_ns_per_delivery": hub_del,
            "shard_ns_per_delivery": shard_del, "bytes_written": f.written, "io_threads_one_hub_feeds": feeds,
        });
        println!("{v}");
        return;
    }
    println!(
        "## hub: {} sessions on {} shards in rooms of {}, {} messages, {} a hub turn\n",
        a.sessions, a.shards, a.room_size, f.routed.messages, a.batch
    );
    println!("| figure | value |\n|---|---|");
    println!("| set-up | {:.2} s |", f.setup.as_secs_f64());
    println!("| deliveries | {} in {} shard batches |", f.routed.deliveries, f.routed.batches);
    println!("| hub, per routed message | {hub_msg:.0} ns |");
    println!("| hub, per delivery | {hub_del:.1} ns |");
    if !a.hub_only {
        println!("| shard, per delivery (no syscalls) | {shard_del:.1} ns |");
        println!("| I/O threads one hub feeds (shard / hub per delivery) | {feeds:.1} |");
    }
}

//! `natter-bench`: load over real sockets on loopback, speaking the real
//! protocol, with a check that nothing is lost, doubled or reordered.
//!
//! `natter-bench fanout --http 127.0.0.1:8080 --clients 1000 --room-size 100
//! --senders 1 --rate 20`: guest clients in rooms, senders at a fixed rate,
//! a warm-up, a measured window and a drain. The send time travels in the
//! message text, so latency is measured on this process's monotonic clock.
//! The server must run with `--rate`/`--burst` above the senders' rate.

mod compare;
mod proc;
mod wsclient;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mio::{Events, Interest, Poll, Token};

use wsclient::{json_str, json_u64, Client, Frame};

#[derive(Parser)]
#[command(about = "Load generator for Natter")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Rooms of guests, a few senders per room at a fixed rate.
    Fanout(FanoutArgs),
    /// Starts each runtime binary in turn, runs the fan-out against it and
    /// prints one table with ratios against the first.
    Compare(compare::CompareArgs),
}

#[derive(clap::Args, Clone)]
pub(crate) struct FanoutArgs {
    /// The server's HTTP address.
    #[arg(long)]
    pub(crate) http: SocketAddr,
    /// The server's PID, for its CPU and memory figures.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    pub(crate) measure: f64,
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

fn main() {
    match Cli::parse().scenario {
        Scenario::Compare(args) => std::process::exit(compare::run(&args)),
        Scenario::Fanout(args) => {
            let report = fanout(&args);
            if args.json {
                println!("{}", report.to_json());
            } else {
                report.print();
            }
            if report.lost > 0 || report.duplicated > 0 || report.reordered > 0 {
                std::process::exit(1);
            }
        }
    }
}

/// What one fan-out run measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) clients: usize,
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) deliveries_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) server_cpu_s: Option<f64>,
    pub(crate) server_rss_kib: Option<u64>,
    pub(crate) server_peak_rss_kib: Option<u64>,
    pub(crate) self_cpu_s: f64,
    pub(crate) measure_s: f64,
}

impl Report {
    pub(crate) fn cpu_per_million(&self) -> Option<f64> {
        let window_deliveries = self.deliveries_per_s * self.measure_s;
        self.server_cpu_s.filter(|_| window_deliveries > 0.0).map(|c| c / window_deliveries * 1e6)
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "clients": self.clients, "sent": self.sent, "expected": self.expected, "delivered": self.delivered,
            "lost": self.lost, "duplicated": self.duplicated, "reordered": self.reordered,
            "deliveries_per_s": self.deliveries_per_s.round(),
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p999_us": self.p999_us, "max_us": self.max_us,
            "server_cpu_s": self.server_cpu_s, "server_cpu_s_per_million": self.cpu_per_million(),
            "server_rss_kib": self.server_rss_kib, "server_peak_rss_kib": self.server_peak_rss_kib,
            "self_cpu_s": self.self_cpu_s, "measure_s": self.measure_s,
        })
        .to_string()
    }

    fn print(&self) {
        println!("clients            {}", self.clients);
        println!("messages sent      {}", self.sent);
        println!("deliveries         {} of {} expected", self.delivered, self.expected);
        println!("lost / dup / order {} / {} / {}", self.lost, self.duplicated, self.reordered);
        println!("deliveries/s       {:.0}", self.deliveries_per_s);
        println!(
            "latency p50/p99/p99.9/max  {} / {} / {} / {} µs",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        );
        if let Some(cpu) = self.server_cpu_s {
            println!(
                "server CPU         {cpu:.2} s in the window, {:.2} s per million deliveries",
                self.cpu_per_million().unwrap_or(0.0)
            );
        }
        if let (Some(rss), Some(peak)) = (self.server_rss_kib, self.server_peak_rss_kib) {
            println!("server RSS         {rss} KiB (peak {peak} KiB)");
        }
        println!("load generator CPU {:.2} s in the window", self.self_cpu_s);
        if self.self_cpu_s > 0.9 * self.measure_s {
            println!("WARNING: the load generator used nearly a whole core: it, not the server, may be the bottleneck");
        }
    }
}

/// Per-client receive state.
#[derive(Default)]
struct Member {
    joined: bool,
    last_seq: u64,
    received: u64,
}

pub(crate) fn fanout(a: &FanoutArgs) -> Report {
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(4096);
    let rooms = a.clients.div_ceil(a.room_size);
    // One source address holds about 28,000 connections.
    let spread = a.clients.div_ceil(20_000);
    let mut clients: Vec<Client> = Vec::with_capacity(a.clients);
    let mut members: Vec<Member> = (0..a.clients).map(|_| Member::default()).collect();
    let run = std::process::id();
    for i in 0..a.clients {
        let mut c = Client::connect(a.http, wsclient::local_addr_for(i, spread)).expect("connect");
        poll.registry().register(&mut c.stream, Token(i), Interest::READABLE | Interest::WRITABLE).expect("register");
        c.queue_upgrade("/ws");
        c.queue_text(format!(r#"{{"type":"hello","name":"b{run}x{i}"}}"#).as_bytes());
        clients.push(c);
    }
    let start = Instant::now();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut latencies: Vec<u32> = Vec::new();
    let mut joined = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Set up: wait until everyone is in its room.
    while joined < a.clients {
        assert!(Instant::now() < deadline, "only {joined} of {} clients joined in 60 s", a.clients);
        poll.poll(&mut events, Some(Duration::from_millis(50))).expect("poll");
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            if c.flush().is_err() {
                panic!("client {i} failed while connecting");
            }
            let m = &mut members[i];
            let mut welcomed = false;
            let r = c.read(&mut scratch, |f| {
                if let Frame::Text(t) = f {
                    if wsclient::find(t, b"\"type\":\"welcome\"").is_some() {
                        welcomed = true;
                    }
                    if !m.joined && wsclient::find(t, b"\"type\":\"ok\"").is_some() {
                        m.joined = true;
                        m.last_seq = json_u64(t, "seq").unwrap_or(0);
                    }
                }
            });
            if let Err(e) = r {
                panic!("client {i}: {e}");
            }
            if welcomed {
                c.queue_text(format!(r#"{{"type":"join","room":"r{}x{run}"}}"#, i / a.room_size).as_bytes());
                let _ = c.flush();
            }
        }
        joined = members.iter().filter(|m| m.joined).count();
    }
    let setup = start.elapsed();
    // Senders: the first `senders` clients of each room.
    let senders: Vec<usize> = (0..rooms)
        .flat_map(|r| (0..a.senders.min(a.room_size)).map(move |k| r * a.room_size + k))
        .filter(|&i| i < a.clients)
        .collect();
    let room_members = |i: usize| -> u64 {
        let r = i / a.room_size;
        (a.clients.min((r + 1) * a.room_size) - r * a.room_size) as u64
    };
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(a.warmup);
    let measure_end = warm_end + Duration::from_secs_f64(a.measure);
    let drain_end = measure_end + Duration::from_secs_f64(a.drain);
    // Stagger senders across the first interval so sends are spread out.
    let mut next_send: Vec<Instant> =
        (0..senders.len()).map(|k| t0 + interval.mul_f64(k as f64 / senders.len().max(1) as f64)).collect();
    let mut sent_count: Vec<u64> = vec![0; senders.len()];
    let mut sent_total = 0u64;
    let mut expected = 0u64;
    let mut in_window = 0u64;
    let mut duplicated = 0u64;
    let mut reordered = 0u64;
    let mut cpu_start = None;
    let mut self_cpu_start = 0.0;
    let mut cpu_end = None;
    let mut self_cpu_end = 0.0;
    let mut mem = (None, None);
    let mut by_sender: HashMap<usize, usize> = HashMap::new();
    for (k, &i) in senders.iter().enumerate() {
        by_sender.insert(i, k);
    }
    loop {
        let now = Instant::now();
        if cpu_start.is_none() && now >= warm_end {
            cpu_start = Some(a.pid.and_then(proc::cpu_seconds));
            self_cpu_start = proc::self_cpu_seconds();
        }
        if cpu_end.is_none() && now >= measure_end {
            cpu_end = Some(a.pid.and_then(proc::cpu_seconds));
            self_cpu_end = proc::self_cpu_seconds();
            mem = a.pid.map_or((None, None), proc::rss_kib);
        }
        if now >= drain_end {
            break;
        }
        if now < measure_end {
            for (k, &i) in senders.iter().enumerate() {
                while next_send[k] <= now {
                    let t_us = next_send[k].duration_since(t0).as_micros() as u64;
                    let text = format!(
                        r#"{{"type":"send","room":"r{}x{run}","text":"{k} {} {t_us}"}}"#,
                        i / a.room_size,
                        sent_count[k]
                    );
                    clients[i].queue_text(text.as_bytes());
                    sent_count[k] += 1;
                    sent_total += 1;
                    expected += room_members(i);
                    next_send[k] += interval;
                }
                if clients[i].wants_write() {
                    let _ = clients[i].flush();
                }
            }
        }
        let next = next_send.iter().min().copied().unwrap_or(drain_end).min(drain_end);
        let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5));
        poll.poll(&mut events, Some(wait)).expect("poll");
        let now_us = t0.elapsed().as_micros() as u64;
        let (w0, w1) =
            (warm_end.duration_since(t0).as_micros() as u64, measure_end.duration_since(t0).as_micros() as u64);
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            if ev.is_writable() && c.wants_write() {
                let _ = c.flush();
            }
            let m = &mut members[i];
            let _ = c.read(&mut scratch, |f| {
                let t = match f {
                    Frame::Text(t) => t,
                    Frame::Close(code) => return eprintln!("client {i} was closed by the server with {code}"),
                    Frame::Other => return,
                };
                let Some(text) = json_str(t, "text") else { return };
                if wsclient::find(t, b"\"type\":\"message\"").is_none() {
                    return;
                }
                let Some(seq) = json_u64(t, "seq") else { return };
                if seq == m.last_seq + 1 {
                    m.last_seq = seq;
                } else if seq <= m.last_seq {
                    duplicated += 1;
                    return;
                } else {
                    reordered += 1;
                    m.last_seq = seq;
                }
                m.received += 1;
                let mut parts = text.split(|&b| b == b' ');
                let sent_us =
                    parts.nth(2).and_then(|p| std::str::from_utf8(p).ok()).and_then(|p| p.parse::<u64>().ok());
                if let Some(sent_us) = sent_us {
                    if (w0..w1).contains(&sent_us) {
                        in_window += 1;
                        latencies.push(now_us.saturating_sub(sent_us).min(u64::from(u32::MAX)) as u32);
                    }
                }
            });
        }
    }
    let delivered: u64 = members.iter().map(|m| m.received).sum();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        u64::from(latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)])
    };
    let server_cpu_s = match (cpu_start.flatten(), cpu_end.flatten()) {
        (Some(s), Some(e)) => Some(e - s),
        _ => None,
    };
    eprintln!("set-up of {} clients took {:.1} s", a.clients, setup.as_secs_f64());
    Report {
        clients: a.clients,
        sent: sent_total,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated,
        reordered,
        deliveries_per_s: in_window as f64 / a.measure,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().copied().map_or(0, u64::from),
        server_cpu_s,
        server_rss_kib: mem.0,
        server_peak_rss_kib: mem.1,
        self_cpu_s: self_cpu_end - self_cpu_start,
        measure_s: a.measure,
    }
}

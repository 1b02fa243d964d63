//! The runtime comparison: each binary started in turn on the same scenario,
//! the server pinned to one core and this process to the other, one table.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{fanout, FanoutArgs, Report};

#[derive(clap::Args, Clone)]
pub(crate) struct CompareArgs {
    /// Runtime binaries, comma-separated; the first is the baseline.
    #[arg(long, default_value = "natter-mio,natter-tokio,natter-smol")]
    bins: String,
    /// Where the binaries are.
    #[arg(long, default_value = "target/release")]
    dir: String,
    /// `--threads` for the servers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The CPU the server is pinned to (`taskset`); empty for none.
    #[arg(long, default_value = "0")]
    server_cpu: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    #[arg(long, default_value_t = 1)]
    senders: usize,
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    measure: f64,
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
}

struct Server {
    child: Child,
    http: SocketAddr,
    _data: DataDir,
}

/// A fresh data directory, removed afterwards.
struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(binary: &str, a: &CompareArgs) -> Server {
    let data = DataDir(std::env::temp_dir().join(format!("natter-bench-{}-{binary}", std::process::id())));
    let _ = std::fs::remove_dir_all(&data.0);
    let path = format!("{}/{binary}", a.dir);
    let server_args = [
        "--http",
        "127.0.0.1:0",
        "--line",
        "127.0.0.1:0",
        "--data",
        &data.0.to_string_lossy(),
        "--threads",
        &a.threads.to_string(),
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--log",
        "warn",
    ]
    .map(str::to_owned);
    let mut cmd = if a.server_cpu.is_empty() {
        Command::new(&path)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &a.server_cpu, &path]);
        c
    };
    let mut child = cmd
        .args(&server_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {path}: {e} (build with cargo build --release --bins)"));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("listening line");
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{binary}: no listening line, got {line:?}"));
    Server { child, http, _data: data }
}

fn stop(mut server: Server) {
    // SIGTERM by PID, then wait: the server closes its sessions and exits.
    let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    for _ in 0..100 {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// Runs the comparison; returns the exit status (1 if anything was lost).
pub(crate) fn run(a: &CompareArgs) -> i32 {
    let mut rows: Vec<(String, Report)> = Vec::new();
    for binary in a.bins.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let server = start(binary, a);
        let args = FanoutArgs {
            http: server.http,
            pid: Some(server.child.id()),
            clients: a.clients,
            room_size: a.room_size,
            senders: a.senders,
            rate: a.rate,
            warmup: a.warmup,
            measure: a.measure,
            drain: a.drain,
            json: false,
        };
        eprintln!(
            "{binary}: {} clients in rooms of {}, {} sender(s) at {}/s",
            a.clients, a.room_size, a.senders, a.rate
        );
        let report = fanout(&args);
        stop(server);
        rows.push((binary.to_string(), report));
    }
    print_table(a, &rows);
    i32::from(rows.iter().any(|(_, r)| r.lost > 0 || r.duplicated > 0 || r.reordered > 0))
}

fn print_table(a: &CompareArgs, rows: &[(String, Report)]) {
    println!(
        "fan-out: {} clients, rooms of {}, {} sender(s) per room at {}/s, --threads {}, {} s measured",
        a.clients, a.room_size, a.senders, a.rate, a.threads, a.measure
    );
    println!(
        "| runtime | deliveries/s | ratio | p50 ms | p99 ms | p99.9 ms | max ms | CPU s/M deliveries | ratio | RSS MiB | lost/dup/order | load gen CPU s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    let base = rows.first().map(|(_, r)| (r.deliveries_per_s, r.cpu_per_million()));
    for (name, r) in rows {
        let rate_ratio = base.map_or(1.0, |(d, _)| if d > 0.0 { r.deliveries_per_s / d } else { 0.0 });
        let cpu = r.cpu_per_million();
        let cpu_ratio = match (cpu, base.and_then(|(_, c)| c)) {
            (Some(c), Some(b)) if b > 0.0 => format!("{:.2}x", c / b),
            _ => "-".into(),
        };
        println!(
            "| {name} | {:.0} | {rate_ratio:.2}x | {:.2} | {:.2} | {:.2} | {:.2} | {} | {cpu_ratio} | {:.1} | {}/{}/{} | {:.2} |",
            r.deliveries_per_s,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.p999_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            cpu.map_or("-".into(), |c| format!("{c:.2}")),
            r.server_rss_kib.unwrap_or(0) as f64 / 1024.0,
            r.lost,
            r.duplicated,
            r.reordered,
            r.self_cpu_s,
        );
    }
}

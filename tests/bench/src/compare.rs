//! The runtime comparison: each binary started in turn, fresh, for each
//! scenario, in two configurations, and one table per scenario and
//! configuration with ratios against the first binary.
//!
//! `pinned` puts the server on one core (`taskset`, `--threads 1`) and this
//! process on the other, so that server CPU figures are the server's alone
//! and the generator never competes with it. `all` leaves the server its
//! default threads on every core, as it would run in production; the
//! generator then shares the cores with it, so those figures are the pair's.
//! A fresh server per run keeps one scenario's leftovers (memory, rooms,
//! stored messages) out of the next one's figures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::report::{Row, Table};
use crate::{fanout, idle, private, ramp, scale, storm, Titled};

const SCENARIOS: [&str; 6] = ["fanout", "ramp", "private", "idle", "storm", "scale"];

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct CompareArgs {
    /// Runtime binaries, comma-separated; the first is the baseline.
    #[arg(long, default_value = "natter-mio,natter-tokio,natter-smol")]
    bins: String,
    /// Where the binaries are.
    #[arg(long, default_value = "target/release")]
    dir: String,
    /// Scenarios to run, comma-separated.
    #[arg(long, default_value = "fanout,ramp,private,idle,storm,scale")]
    scenarios: String,
    /// Configurations, comma-separated: `pinned` (server on --server-cpu with
    /// --threads, this process on --bench-cpu) and `all` (server on every
    /// core with its default threads, this process unpinned).
    #[arg(long, default_value = "pinned,all")]
    configs: String,
    /// `--threads` for the server in the pinned configuration.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs for the server in the pinned configuration (`taskset -c`).
    #[arg(long, default_value = "0")]
    server_cpu: String,
    /// CPUs for this process in the pinned configuration.
    #[arg(long, default_value = "1")]
    bench_cpu: String,
    /// The servers' `--heartbeat` in the scenarios that hold idle sessions
    /// (`idle`, `scale`): short, so that they see pings. The others run
    /// with the server's default, as it would serve: at the fan-out's load
    /// a 5 s heartbeat adds a ping and a pong for every hundred deliveries,
    /// which `natter-floor` beside it does not have.
    #[arg(long, default_value_t = 5)]
    heartbeat: u32,
    /// A smoke run: small counts and short windows (about 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Extra arguments for one scenario, `SCENARIO=ARGS` (`--set 'scale=--hold 30'`); repeatable.
    #[arg(long = "set", value_name = "SCENARIO=ARGS")]
    set: Vec<String>,
    /// Print the tables as JSON at the end as well.
    #[arg(long)]
    json: bool,
}

/// Smaller counts and windows for `--quick`.
fn quick_args(scenario: &str) -> &'static str {
    match scenario {
        "fanout" => "--clients 200 --warmup 1 --measure 2 --drain 2",
        "ramp" => {
            "--clients 200 --start-rate 100 --factor 4 --max-steps 4 --refine 1 --warmup 0.5 --measure 1.5 --drain 3"
        }
        "private" => "--pairs 10 --rate 50 --warmup 0.5 --measure 2 --drain 3",
        "idle" => "--sessions 500 --hold 5",
        "storm" => "--sessions 1000",
        "scale" => "--sessions 2000 --hold 5",
        _ => "",
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Pinned,
    All,
}

impl Config {
    fn parse(s: &str) -> Config {
        match s {
            "pinned" => Config::Pinned,
            "all" => Config::All,
            _ => panic!("unknown configuration {s:?}: pinned or all"),
        }
    }
}

/// A running server; stopped (SIGTERM by PID) when dropped, a panic included.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) http: SocketAddr,
    /// Its `--data` directory, removed once it stopped.
    data: std::path::PathBuf,
}

/// What every benchmarked server is started with: loopback listeners, and
/// the limits that would measure themselves rather than the server lifted.
pub(crate) fn base_args(heartbeat: Option<u32>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--http",
        "127.0.0.1:0",
        "--line",
        "127.0.0.1:0",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        // Every load client comes from 127.0.0.1: the per-address abuse
        // limits would measure themselves, not the server.
        "--peer-session-rate",
        "1000000000",
        "--user-session-rate",
        "1000000000",
        "--register-rate",
        "1000000000",
        "--log",
        "warn",
        // Every load generator connection comes from loopback.
        "--max-connections-per-ip",
        "1000000",
    ]
    .map(str::to_owned)
    .into();
    if let Some(heartbeat) = heartbeat {
        args.extend(["--heartbeat".into(), heartbeat.to_string()]);
    }
    args
}

/// Starts `cmd` (the binary, or `taskset` before it) with `args` and waits
/// for its listening line; `data` is its `--data` directory (or an empty
/// one to remove), `name` names it in a panic.
pub(crate) fn launch(mut cmd: Command, args: &[String], data: std::path::PathBuf, name: &str) -> Server {
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e} (build with cargo build --release --bins)"));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("listening line");
    let http = line.split_whitespace().find_map(|w| w.strip_prefix("http=")).and_then(|a| a.parse().ok());
    let Some(http) = http else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{name}: no listening line, got {line:?}");
    };
    Server { child, http, data }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM by PID, then wait: the server closes its sessions and exits.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.data);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("server {} did not stop within 15 s of SIGTERM: killing it", self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Parses one scenario's arguments as its subcommand would.
#[derive(Parser)]
struct Only<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

struct Comparison<'a> {
    a: &'a CompareArgs,
    bins: Vec<&'a str>,
    tables: Vec<Table>,
    faults: Vec<String>,
    runs: usize,
}

impl Comparison<'_> {
    fn start(&mut self, binary: &str, config: Config, scenario: &str) -> Server {
        self.runs += 1;
        let data = std::env::temp_dir().join(format!("natter-bench-{}-{}-{binary}", std::process::id(), self.runs));
        let _ = std::fs::remove_dir_all(&data);
        let path = format!("{}/{binary}", self.a.dir);
        let holds_idle_sessions = matches!(scenario, "idle" | "scale");
        let mut args = base_args(holds_idle_sessions.then_some(self.a.heartbeat));
        args.extend(["--data".into(), data.to_string_lossy().into_owned()]);
        let cmd = match config {
            Config::Pinned => {
                args.extend(["--threads".into(), self.a.threads.to_string()]);
                let mut c = Command::new("taskset");
                c.args(["-c", &self.a.server_cpu, &path]);
                c
            }
            Config::All => Command::new(&path),
        };
        launch(cmd, &args, data, binary)
    }

    /// Runs scenario `name` against every binary; one table.
    fn scenario<A, R>(&mut self, name: &str, config: Config, run: fn(&A) -> R)
    where
        A: clap::Args + Titled,
        R: Row,
    {
        let mut table: Option<Table> = None;
        let mut details = Vec::new();
        for binary in self.bins.clone() {
            let mut server = self.start(binary, config, name);
            let mut argv: Vec<String> = vec![
                name.into(),
                "--http".into(),
                server.http.to_string(),
                "--pid".into(),
                server.child.id().to_string(),
            ];
            if self.a.quick {
                argv.extend(quick_args(name).split_whitespace().map(str::to_owned));
            }
            for s in &self.a.set {
                if let Some(extra) = s.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                    argv.extend(extra.split_whitespace().map(str::to_owned));
                }
            }
            let args = Only::<A>::try_parse_from(&argv).unwrap_or_else(|e| e.exit()).args;
            let t = table.get_or_insert_with(|| Table::of::<R>(format!("{}; {}", args.title(), self.describe(config))));
            eprintln!("== {name} on {binary} ({config:?}), pid {}", server.child.id());
            let began = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| run(&args)));
            let exited = server.child.try_wait().ok().flatten();
            match outcome {
                Ok(r) => {
                    if !r.clean() {
                        self.faults.push(format!("{name} on {binary} ({config:?})"));
                    }
                    t.push_row(binary, &r);
                    details.extend(r.detail(binary));
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    self.faults.push(format!("{name} on {binary} ({config:?}) failed: {why}"));
                    t.note(format!("{binary}: the run failed: {why}"));
                }
            }
            if let Some(status) = exited {
                self.faults.push(format!("{binary} exited during {name}: {status}"));
                t.note(format!("{binary}: the server exited during the run ({status})"));
            }
            eprintln!("== {name} on {binary} took {:.0} s", began.elapsed().as_secs_f64());
            drop(server);
        }
        if let Some(t) = table {
            println!("{}", t.render());
            for d in &details {
                println!("{}", d.render());
            }
            self.tables.push(t);
            self.tables.extend(details);
        }
    }

    fn describe(&self, config: Config) -> String {
        match config {
            Config::Pinned => format!(
                "server on CPU {} with --threads {}, load generator on CPU {}",
                self.a.server_cpu, self.a.threads, self.a.bench_cpu
            ),
            Config::All => "server on all cores with its default --threads, load generator unpinned".into(),
        }
    }
}

/// Sets this process's CPUs (`taskset -a -p`): threads started later inherit them.
fn pin_self(cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset could not pin this process to CPUs {cpus}");
}

/// Every online CPU, as `taskset -c` takes it.
fn all_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online").map_or_else(|_| "0-1023".into(), |s| s.trim().into())
}

/// Runs the comparison; returns the exit status (1 if anything was lost,
/// doubled or reordered, or a run failed).
pub(crate) fn run(a: &CompareArgs) -> i32 {
    let bins: Vec<&str> = a.bins.split(',').map(str::trim).filter(|b| !b.is_empty()).collect();
    let scenarios: Vec<&str> = a.scenarios.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    for s in &scenarios {
        assert!(SCENARIOS.contains(s), "unknown scenario {s:?}: one of {}", SCENARIOS.join(","));
    }
    for s in &a.set {
        let name = s.split('=').next().unwrap_or("");
        assert!(SCENARIOS.contains(&name), "--set {s:?}: SCENARIO=ARGS with one of {}", SCENARIOS.join(","));
    }
    let configs: Vec<Config> =
        a.configs.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Config::parse).collect();
    let mut c = Comparison { a, bins, tables: Vec::new(), faults: Vec::new(), runs: 0 };
    let began = Instant::now();
    for &config in &configs {
        match config {
            Config::Pinned => pin_self(&a.bench_cpu),
            Config::All => pin_self(&all_cpus()),
        }
        for &s in &scenarios {
            match s {
                "fanout" => c.scenario(s, config, fanout::run),
                "ramp" => c.scenario(s, config, ramp::run),
                "private" => c.scenario(s, config, private::run),
                "idle" => c.scenario(s, config, idle::run),
                "storm" => c.scenario(s, config, storm::run),
                "scale" => c.scenario(s, config, scale::run),
                _ => unreachable!("checked above"),
            }
        }
    }
    eprintln!("comparison took {:.0} s", began.elapsed().as_secs_f64());
    if a.json {
        println!("{}", serde_json::Value::Array(c.tables.iter().map(Table::to_json).collect()));
    }
    if c.faults.is_empty() {
        0
    } else {
        println!("FAILED: {}", c.faults.join("; "));
        1
    }
}

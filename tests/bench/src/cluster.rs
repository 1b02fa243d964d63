//! Several nodes as one (`natter-bench cluster`): one runtime binary in three
//! set-ups in one run, the same fan-out on each, side by side:
//!
//! - one node on SQLite (`--data`), the baseline;
//! - one node on PostgreSQL (`--database`);
//! - two nodes on one PostgreSQL database and one Redis (`--redis`), each
//!   room's senders and first half of its members on the first node, the
//!   other half on the second: half of every message's deliveries cross
//!   from node to node through Redis, and their latency is shown apart.
//!
//! Then the private-message scenario against one node on PostgreSQL: each
//! message is stored there before its `ok`, so its rate is the database's.
//!
//! It is a subcommand of its own rather than a `compare` configuration:
//! `compare` sets one server beside another (binaries, CPU placements), and
//! its rows are binaries; here the rows are storage set-ups of one binary,
//! one of them two servers, and the run needs a PostgreSQL and a Redis. It
//! starts private ones with tests/services/ under temporary directories and
//! stops them by PID (the scripts' own `stop`) when it ends, a panic included.
//! A fresh database per set-up keeps one run's rows out of the next one's.
//!
//! Nothing is pinned: the servers and the generator share the cores. CPU
//! per million deliveries is every node's CPU, summed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::compare::{base_args, launch, Server};
use crate::fanout::{Node, OpenArgs, PhaseReport, Rig};
use crate::private::{self, PrivateArgs};
use crate::report::{col, ratio, text, Cell, Col, Row, Table};
use crate::Target;

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ClusterArgs {
    /// The runtime binary.
    #[arg(long, default_value = "natter-mio")]
    bin: String,
    /// Where it is.
    #[arg(long, default_value = "target/release")]
    dir: String,
    /// tests/services, whose scripts start the private PostgreSQL and Redis.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../services"))]
    services: PathBuf,
    /// Fan-out clients (guests), in all.
    #[arg(long, default_value_t = 400)]
    clients: usize,
    #[arg(long, default_value_t = 20)]
    room_size: usize,
    /// Senders per room (all on the first node).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 8.0)]
    measure: f64,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Pairs of users for the private scenario on PostgreSQL (0: skip it).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Private messages per second per user.
    #[arg(long, default_value_t = 20.0)]
    private_rate: f64,
    /// The servers' `--heartbeat` (default: the server's own).
    #[arg(long)]
    heartbeat: Option<u32>,
    /// Print the tables as JSON at the end as well.
    #[arg(long)]
    json: bool,
}

/// A private PostgreSQL or Redis (tests/services/NAME in a directory of
/// its own under /tmp, which the PostgreSQL server's user can reach),
/// stopped by the script, by PID, and its directory removed when dropped.
struct Service {
    script: PathBuf,
    dir: PathBuf,
    /// What `start` printed: the URL.
    url: String,
}

impl Service {
    fn start(services: &Path, name: &str) -> Service {
        let script = services.join(name);
        let dir = PathBuf::from(format!("/tmp/natter-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory under /tmp");
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let service = Service { script, dir, url: String::from_utf8_lossy(&out.stdout).trim().to_string() };
        assert!(out.status.success() && !service.url.is_empty(), "{name} did not start");
        service
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").arg(&self.dir).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new database on the PostgreSQL server at `url` (`.../natter`), by
/// `psql`, for one set-up; its URL.
fn new_database(url: &str, name: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    let out = Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql (PostgreSQL's client)");
    assert!(out.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{base}/{name}")
}

/// One set-up's fan-out figures.
struct SetupRow {
    phase: PhaseReport,
    /// Whether half the deliveries crossed nodes (else no cross-node figures).
    split: bool,
}

impl Row for SetupRow {
    fn columns() -> Vec<Col> {
        vec![
            ratio("deliveries/s"),
            col("p50 ms"),
            col("p99 ms"),
            col("cross-node p50 ms"),
            col("cross-node p99 ms"),
            ratio("CPU s/M deliveries"),
            text("lost/dup/order"),
            text("load gen CPU"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        let p = &self.phase;
        let (all, cross) = (p.latency.ms(), p.cross_latency.ms());
        let split = |v: f64| if self.split { Cell::num(v, 2) } else { Cell::None };
        vec![
            Cell::num(p.deliveries_per_s, 0),
            Cell::num(all.p50, 2),
            Cell::num(all.p99, 2),
            split(cross.p50),
            split(cross.p99),
            Cell::opt(p.cpu_per_million(), 2),
            Cell::text(p.integrity.summary()),
            p.generator_cell(),
        ]
    }

    fn clean(&self) -> bool {
        self.phase.integrity.clean()
    }

    fn notes(&self) -> Vec<String> {
        self.phase.notes()
    }
}

/// The run: starts and stops servers, services and databases.
struct Run<'a> {
    a: &'a ClusterArgs,
    postgres: Service,
    redis: Service,
    started: usize,
    /// Set-ups where something was lost, doubled or reordered.
    faults: Vec<String>,
}

impl Run<'_> {
    /// Adds `r` as row `name` of `table`, noting a fault.
    fn push<R: Row>(&mut self, table: &mut Table, name: &str, r: &R) {
        if !r.clean() {
            self.faults.push(format!("{name} ({})", table.title));
        }
        table.push_row(name, r);
    }

    /// A node with `storage` (`--data DIR` or `--database URL`) and `extra`.
    fn node(&mut self, storage: Option<&str>, extra: &[&str]) -> Server {
        self.started += 1;
        let data = std::env::temp_dir().join(format!("natter-bench-cluster-{}-{}", std::process::id(), self.started));
        let _ = std::fs::remove_dir_all(&data);
        let mut args = base_args(self.a.heartbeat);
        match storage {
            Some(url) => args.extend(["--database".into(), url.into()]),
            None => args.extend(["--data".into(), data.to_string_lossy().into_owned()]),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let path = format!("{}/{}", self.a.dir, self.a.bin);
        launch(Command::new(&path), &args, data, &self.a.bin)
    }

    fn database(&self, setup: &str) -> String {
        new_database(&self.postgres.url, &format!("natter_bench_{}_{setup}", std::process::id()))
    }

    /// The fan-out on `first`, with half of each room on `second` if given.
    fn fanout(&self, first: &Server, second: Option<&Server>) -> SetupRow {
        let target = Target { http: first.http, pid: Some(first.child.id()), json: false };
        let node = second.map(|s| Node { http: s.http, pid: Some(s.child.id()) });
        let open = OpenArgs { in_flight: 200, sources: 0 };
        let a = self.a;
        let mut rig = Rig::open_split(&target, node, a.clients, a.room_size, a.senders, &open);
        SetupRow { phase: rig.run(a.rate, a.warmup, a.measure, a.drain), split: second.is_some() }
    }

    fn fanout_table(&mut self) -> Table {
        let a = self.a;
        let title = format!(
            "fan-out on {}: {} clients, rooms of {}, {} sender(s) per room at {}/s, {} s measured; servers and \
             load generator unpinned",
            a.bin, a.clients, a.room_size, a.senders, a.rate, a.measure
        );
        let mut table = Table::of::<SetupRow>(title).first("set-up");
        eprintln!("== fan-out, one node on SQLite");
        let node = self.node(None, &[]);
        let row = self.fanout(&node, None);
        self.push(&mut table, "1 node, SQLite", &row);
        drop(node);
        eprintln!("== fan-out, one node on PostgreSQL");
        let db = self.database("one");
        let node = self.node(Some(&db), &[]);
        let row = self.fanout(&node, None);
        self.push(&mut table, "1 node, PostgreSQL", &row);
        drop(node);
        eprintln!("== fan-out, two nodes on PostgreSQL and Redis");
        let db = self.database("two");
        let redis = self.redis.url.clone();
        let first = self.node(Some(&db), &["--redis", &redis]);
        let second = self.node(Some(&db), &["--redis", &redis]);
        let row = self.fanout(&first, Some(&second));
        self.push(&mut table, "2 nodes, PostgreSQL + Redis", &row);
        table
    }

    fn private_table(&mut self) -> Table {
        eprintln!("== private messages, one node on PostgreSQL");
        let db = self.database("private");
        let node = self.node(Some(&db), &[]);
        let args = PrivateArgs {
            target: Target { http: node.http, pid: Some(node.child.id()), json: false },
            pairs: self.a.pairs,
            rate: self.a.private_rate,
            warmup: self.a.warmup,
            measure: self.a.measure,
            drain: 15.0,
            register_parallel: 4,
            open: OpenArgs { in_flight: 200, sources: 0 },
        };
        let report = private::run(&args);
        let title = format!("{}; on {}", crate::Titled::title(&args), self.a.bin);
        let mut table = Table::of::<private::Report>(title).first("set-up");
        self.push(&mut table, "1 node, PostgreSQL", &report);
        table
    }
}

/// Runs the set-ups; returns the exit status (1 if anything was lost,
/// doubled or reordered).
pub(crate) fn run(a: &ClusterArgs) -> i32 {
    let began = Instant::now();
    let mut run = Run {
        a,
        postgres: Service::start(&a.services, "postgres"),
        redis: Service::start(&a.services, "redis"),
        started: 0,
        faults: Vec::new(),
    };
    let mut tables = vec![run.fanout_table()];
    if a.pairs > 0 {
        tables.push(run.private_table());
    }
    eprintln!("cluster run took {:.0} s", began.elapsed().as_secs_f64());
    for t in &tables {
        println!("{}", t.render());
    }
    if a.json {
        println!("{}", serde_json::Value::Array(tables.iter().map(Table::to_json).collect()));
    }
    if run.faults.is_empty() {
        0
    } else {
        println!("FAILED: lost, doubled or reordered in {}", run.faults.join("; "));
        1
    }
}

//! Several nodes of one runtime binary as one server: one PostgreSQL
//! database and one Redis, both private instances that tests/run starts
//! (`NATTER_TEST_DATABASE` is the PostgreSQL server's base URL,
//! `NATTER_TEST_REDIS_DIR` the Redis instance's directory, see
//! tests/services/).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::server::{new_database, Server};

/// Cases share one Redis; a case that stops it runs alone.
static REDIS: RwLock<()> = RwLock::new(());

/// How a cluster holds the shared Redis.
enum Hold {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// Nodes sharing a new database and the test Redis.
pub struct Cluster {
    _redis: Hold,
    /// The nodes, each a [`Server`] of its own.
    pub nodes: Vec<Server>,
    /// The shared database's URL.
    pub database: String,
    /// The Redis URL.
    pub redis: String,
}

/// The private Redis's directory (tests/services/redis).
pub fn redis_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("NATTER_TEST_REDIS_DIR").expect(
            "cluster tests need NATTER_TEST_REDIS_DIR and NATTER_TEST_DATABASE (tests/run starts both services)",
        ),
    )
}

impl Cluster {
    /// `n` nodes of `bin` on a new database.
    pub fn start(bin: &str, n: usize, extra_args: &[&str]) -> Cluster {
        let hold = Hold::Shared(REDIS.read().unwrap_or_else(|e| e.into_inner()));
        Cluster::start_holding(hold, bin, n, extra_args)
    }

    /// As [`Cluster::start`], with the Redis to itself: no other case runs
    /// meanwhile, so it may stop and start it ([`Cluster::stop_redis`]).
    pub fn start_alone(bin: &str, n: usize, extra_args: &[&str]) -> Cluster {
        let hold = Hold::Alone(REDIS.write().unwrap_or_else(|e| e.into_inner()));
        Cluster::start_holding(hold, bin, n, extra_args)
    }

    /// Stops the test Redis (only in a cluster started alone).
    pub fn stop_redis(&self) {
        assert!(matches!(self._redis, Hold::Alone(_)), "stopping Redis needs Cluster::start_alone");
        redis_script(&["stop"]);
    }

    /// Starts the test Redis again, on its port.
    pub fn start_redis(&self) {
        let port = std::fs::read_to_string(redis_dir().join("port")).expect("the Redis dir's port");
        redis_script(&["start", port.trim()]);
    }

    fn start_holding(hold: Hold, bin: &str, n: usize, extra_args: &[&str]) -> Cluster {
        let base = std::env::var("NATTER_TEST_DATABASE").expect(
            "cluster tests need NATTER_TEST_DATABASE and NATTER_TEST_REDIS_DIR (tests/run starts both services)",
        );
        let database = new_database(&base);
        let redis = std::fs::read_to_string(redis_dir().join("url")).expect("the Redis dir's url").trim().to_string();
        let nodes = (0..n).map(|_| Server::start_node(bin, &database, &redis, extra_args)).collect();
        Cluster { _redis: hold, nodes, database, redis }
    }
}

/// tests/services/redis ACTION DIR [ARGS].
fn redis_script(args: &[&str]) {
    let script = crate::server::workspace_root().join("tests/services/redis");
    let dir = redis_dir();
    let mut cmd = Command::new(script);
    cmd.arg(args[0]).arg(&dir).args(&args[1..]).stdout(Stdio::null());
    let status = cmd.status().expect("run tests/services/redis");
    assert!(status.success(), "tests/services/redis {args:?} failed");
}

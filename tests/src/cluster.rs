//! Several nodes of one runtime binary as one server: one PostgreSQL
//! database and one Redis, both private instances that tests/run starts
//! (`NATTER_TEST_DATABASE` is the PostgreSQL server's base URL,
//! `NATTER_TEST_REDIS_DIR` the Redis instance's directory, see
//! tests/services/).

use std::path::PathBuf;

use crate::server::{new_database, Server};

/// Nodes sharing a new database and the test Redis.
pub struct Cluster {
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
        let base = std::env::var("NATTER_TEST_DATABASE").expect(
            "cluster tests need NATTER_TEST_DATABASE and NATTER_TEST_REDIS_DIR (tests/run starts both services)",
        );
        let database = new_database(&base);
        let redis = std::fs::read_to_string(redis_dir().join("url")).expect("the Redis dir's url").trim().to_string();
        let nodes = (0..n).map(|_| Server::start_node(bin, &database, &redis, extra_args)).collect();
        Cluster { nodes, database, redis }
    }
}

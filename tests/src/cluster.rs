//! Several nodes of one runtime binary as one server: one PostgreSQL
//! database and one Redis, both private instances that tests/run starts
//! (`NATTER_TEST_DATABASE` is the PostgreSQL server's base URL,
//! `NATTER_TEST_REDIS_DIR` the Redis instance's directory, see
//! tests/services/).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
    /// The PostgreSQL server of this cluster's own, if it has one (last:
    /// it stops after the nodes).
    pub postgres: Option<PrivatePostgres>,
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

    /// As [`Cluster::start`], on a PostgreSQL server of its own, which the
    /// case may stop and start again (`c.postgres.as_ref().unwrap()`) and
    /// which stops with the cluster.
    pub fn start_on_private_postgres(bin: &str, n: usize, extra_args: &[&str]) -> Cluster {
        let hold = Hold::Shared(REDIS.read().unwrap_or_else(|e| e.into_inner()));
        let postgres = PrivatePostgres::start();
        Cluster::start_on(hold, &postgres.base.clone(), Some(postgres), bin, n, extra_args)
    }

    /// The private PostgreSQL server (only in a cluster started on one).
    pub fn postgres(&self) -> &PrivatePostgres {
        self.postgres.as_ref().expect("Cluster::start_on_private_postgres")
    }

    /// Another node of `bin` on the cluster's database, reaching its Redis
    /// at `redis` (the cluster's, or a [`SlowLink`] to it).
    pub fn add_node(&mut self, bin: &str, redis: &str, extra_args: &[&str]) -> usize {
        self.nodes.push(Server::start_node(bin, &self.database, redis, extra_args));
        self.nodes.len() - 1
    }

    fn start_holding(hold: Hold, bin: &str, n: usize, extra_args: &[&str]) -> Cluster {
        let base = std::env::var("NATTER_TEST_DATABASE").expect(
            "cluster tests need NATTER_TEST_DATABASE and NATTER_TEST_REDIS_DIR (tests/run starts both services)",
        );
        Cluster::start_on(hold, &base, None, bin, n, extra_args)
    }

    fn start_on(
        hold: Hold,
        base: &str,
        postgres: Option<PrivatePostgres>,
        bin: &str,
        n: usize,
        extra_args: &[&str],
    ) -> Cluster {
        let database = new_database(base);
        let redis = std::fs::read_to_string(redis_dir().join("url")).expect("the Redis dir's url").trim().to_string();
        let nodes = (0..n).map(|_| Server::start_node(bin, &database, &redis, extra_args)).collect();
        Cluster { _redis: hold, nodes, database, redis, postgres }
    }
}

/// A PostgreSQL server of one case's own (tests/services/postgres in a
/// temporary directory under /tmp, which the server's user can reach), for
/// a case that stops it: the others share the one tests/run starts. It is
/// stopped by PID when dropped.
pub struct PrivatePostgres {
    dir: TempDir,
    port: String,
    /// `postgres://natter@127.0.0.1:PORT`, for [`new_database`].
    pub base: String,
}

impl PrivatePostgres {
    /// Starts one on a free port (a second or two: `initdb` runs).
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new().prefix("natter-pg-case.").tempdir_in("/tmp").expect("a temp dir in /tmp");
        assert!(postgres_script(dir.path(), &["start"]), "tests/services/postgres start failed");
        let port = std::fs::read_to_string(dir.path().join("port")).expect("the PostgreSQL dir's port");
        let port = port.trim().to_string();
        let base = format!("postgres://natter@127.0.0.1:{port}");
        PrivatePostgres { dir, port, base }
    }

    /// A new database on it, for `--database`.
    pub fn new_database(&self) -> String {
        new_database(&self.base)
    }

    /// Stops it (fast shutdown: its clients are disconnected).
    pub fn stop(&self) {
        assert!(postgres_script(self.dir.path(), &["stop"]), "tests/services/postgres stop failed");
    }

    /// Starts it again, on its port, with its data.
    pub fn restart(&self) {
        assert!(postgres_script(self.dir.path(), &["start", &self.port]), "tests/services/postgres start failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // No assert: this may run while a failed case unwinds.
        postgres_script(self.dir.path(), &["stop"]);
    }
}

/// tests/services/postgres ACTION DIR [ARGS]: whether it succeeded.
fn postgres_script(dir: &std::path::Path, args: &[&str]) -> bool {
    let script = crate::server::workspace_root().join("tests/services/postgres");
    let mut cmd = Command::new(script);
    cmd.arg(args[0]).arg(dir).args(&args[1..]).stdout(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
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

/// A TCP relay on loopback that holds everything the server sends for
/// `delay` before passing it on (what the client sends goes at once): a
/// busy or distant Redis. Stops accepting when dropped; the connections it
/// relays end with their client.
pub struct SlowLink {
    /// `redis://127.0.0.1:PORT`, the relay's end.
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl SlowLink {
    /// A relay to the Redis at `url` (`redis://HOST:PORT`).
    pub fn start(url: &str, delay: Duration) -> SlowLink {
        let target = url.trim_start_matches("redis://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay port");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let port = listener.local_addr().expect("the relay's address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => relay(client, &target, delay),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SlowLink { url: format!("redis://127.0.0.1:{port}"), stop }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Relays `client` to `target`: client to server at once, server to client
/// each chunk `delay` after it came (chunks keep their order and pace).
fn relay(client: TcpStream, target: &str, delay: Duration) {
    let Ok(server) = TcpStream::connect(target) else { return };
    let _ = client.set_nonblocking(false);
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (held, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut server_in = server;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_in.read(&mut buf) {
            if held.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut client_out = client;
    std::thread::spawn(move || {
        for (at, chunk) in due {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if client_out.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = client_out.shutdown(Shutdown::Both);
    });
}

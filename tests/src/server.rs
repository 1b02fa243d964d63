//! Starting, restarting and stopping a server binary.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::http::{http, HttpResponse};
use crate::line::LineClient;
use crate::ws::WsClient;
use crate::{uniq, PASSWORD};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM (the contract says 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The path of a runtime binary in the cargo target dir: `$CARGO_TARGET_DIR`
/// (or `<workspace>/target`), profile `$NATTER_PROFILE` (or `debug`).
pub fn binary_path(bin: &str) -> PathBuf {
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        None => root.join("target"),
    };
    let profile = std::env::var("NATTER_PROFILE").unwrap_or_else(|_| "debug".to_string());
    let path = target.join(&profile).join(bin);
    if path.is_file() {
        return path;
    }
    // The test executable lives in <target>/<profile>/deps/: a target dir set
    // in .cargo/config.toml is found this way too.
    if std::env::var_os("NATTER_PROFILE").is_none() {
        if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf)) {
            if dir.join(bin).is_file() {
                return dir.join(bin);
            }
        }
    }
    panic!(
        "server binary {bin} not found at {}: build it first with cargo build --bins \
         (for a release build: cargo build --release --bins and NATTER_PROFILE=release)",
        path.display()
    );
}

/// A command for `bin` with every inherited `NATTER_*` variable removed, so
/// that only what a test sets reaches the server's configuration.
fn command(bin: &str) -> Command {
    let mut cmd = Command::new(binary_path(bin));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATTER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `--threads N` from `NATTER_TEST_THREADS` unless the case sets its own:
/// the suite runs once with the server's default (on a small machine one
/// I/O thread with the hub in it) and once with several I/O threads and the
/// hub on its own thread, so that both topologies are tested end to end.
fn test_threads(args: &[String]) -> Vec<String> {
    match std::env::var("NATTER_TEST_THREADS") {
        Ok(n) if !args.iter().any(|a| a == "--threads") => vec!["--threads".into(), n],
        _ => Vec::new(),
    }
}

/// A registered user with a fresh login token.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub token: String,
}

/// A running server on 127.0.0.1 with port 0 and a temporary data dir.
pub struct Server {
    bin: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: TempDir,
    /// `--database` when the suite runs against PostgreSQL
    /// (`NATTER_TEST_DATABASE`): a database of this server's own.
    database: Option<String>,
    child: Option<Child>,
    stdout_thread: Option<JoinHandle<()>>,
    stdout_rest: Arc<Mutex<String>>,
    /// The listening line exactly as printed (without the newline).
    pub listening_line: String,
    /// The HTTP + WebSocket address.
    pub http: SocketAddr,
    /// The line-protocol address.
    pub line: SocketAddr,
}

impl Server {
    /// Starts `bin` with `--http 127.0.0.1:0 --line 127.0.0.1:0 --data <tempdir>`
    /// and `extra_args`, and waits for its listening line.
    pub fn start(bin: &str, extra_args: &[&str]) -> Server {
        Server::start_with_env(bin, extra_args, &[])
    }

    /// Like [`Server::start`], with `NATTER_*` environment variables. When
    /// `NATTER_TEST_DATABASE` names a PostgreSQL server (`postgres://user@host:port`),
    /// the server gets a new database of its own there with `--database`.
    pub fn start_with_env(bin: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let database = std::env::var("NATTER_TEST_DATABASE").ok().map(|base| new_database(&base));
        Server::start_in(bin, extra_args, env, database, |_| {})
    }

    /// Like [`Server::start_with_env`], on the embedded SQLite store always,
    /// after `prepare` ran on the `--data` directory's path (which does not
    /// exist yet), e.g. to mount a small file system there.
    pub fn start_prepared(
        bin: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&std::path::Path),
    ) -> Server {
        Server::start_in(bin, extra_args, env, None, prepare)
    }

    /// A cluster node: `bin` on the shared PostgreSQL database `database`
    /// and the Redis at `redis`, with `extra_args`.
    pub fn start_node(bin: &str, database: &str, redis: &str, extra_args: &[&str]) -> Server {
        let mut args = vec!["--redis", redis];
        args.extend_from_slice(extra_args);
        Server::start_in(bin, &args, &[], Some(database.to_string()), |_| {})
    }

    /// A single node (no `--redis`) of `bin` on the PostgreSQL database
    /// `database`, with `extra_args`.
    pub fn start_on_database(bin: &str, database: &str, extra_args: &[&str]) -> Server {
        Server::start_in(bin, extra_args, &[], Some(database.to_string()), |_| {})
    }

    fn start_in(
        bin: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        database: Option<String>,
        prepare: impl FnOnce(&std::path::Path),
    ) -> Server {
        let dir = tempfile::Builder::new().prefix("natter-e2e-").tempdir().expect("create a temp dir");
        let mut server = Server {
            bin: bin.to_string(),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            dir,
            database,
            child: None,
            stdout_thread: None,
            stdout_rest: Arc::new(Mutex::new(String::new())),
            listening_line: String::new(),
            http: "0.0.0.0:0".parse().unwrap(),
            line: "0.0.0.0:0".parse().unwrap(),
        };
        prepare(&server.data_dir());
        server.spawn();
        server
    }

    /// The `--data` directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file that collects the server's standard error.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open the server log");
        let mut cmd = command(&self.bin);
        cmd.arg("--http")
            .arg("127.0.0.1:0")
            .arg("--line")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(self.data_dir())
            .args(self.database.iter().flat_map(|url| ["--database", url.as_str()]))
            .args(&self.args)
            .args(test_threads(&self.args))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        let stdout = child.stdout.take().expect("piped stdout");
        let rest = Arc::new(Mutex::new(String::new()));
        self.stdout_rest = rest.clone();
        let (tx, rx) = mpsc::channel();
        self.stdout_thread = Some(std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            match reader.read_line(&mut first) {
                Ok(n) if n > 0 => {
                    let _ = tx.send(first);
                }
                _ => return,
            }
            let mut more = String::new();
            let _ = reader.read_to_string(&mut more);
            rest.lock().unwrap().push_str(&more);
        }));
        self.child = Some(child);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} printed no listening line within {START_TIMEOUT:?}\n{}", self.bin, self.log_tail(40))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.wait_for_exit(Duration::from_secs(2));
                panic!("{} exited ({status:?}) without printing its listening line\n{}", self.bin, self.log_tail(40))
            }
        };
        let line = line.trim_end_matches('\n').trim_end_matches('\r').to_string();
        let (http, line_addr) = parse_listening_line(&line).unwrap_or_else(|| {
            panic!("bad listening line {line:?}: want `natter listening http=IP:PORT line=IP:PORT`")
        });
        self.listening_line = line;
        self.http = http;
        self.line = line_addr;
    }

    /// Everything the server printed on stdout after its listening line, as
    /// far as it has been read (complete once the process has exited).
    pub fn stdout_after_listening(&self) -> String {
        self.stdout_rest.lock().unwrap().clone()
    }

    /// The last `n` lines of the server's standard error.
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "---- last {} lines of {} stderr ({}) ----\n{}\n---- end of log ----",
            lines.len() - start,
            self.bin,
            self.log_path().display(),
            lines[start..].join("\n")
        )
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if let Some(t) = self.stdout_thread.take() {
                    let _ = t.join();
                }
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout` for the server to exit by itself (after a
    /// signal sent with [`signal`](Self::signal)); panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_for_exit(timeout) {
            Some(status) => status,
            None => panic!("{} did not exit within {timeout:?}\n{}", self.bin, self.log_tail(40)),
        }
    }

    /// Sends `signal` (`TERM`, `INT`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` and waits (at most 15 s) for the server to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        match self.wait_for_exit(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!("{} did not exit within {STOP_TIMEOUT:?} of SIG{signal}\n{}", self.bin, self.log_tail(40))
            }
        }
    }

    /// SIGKILL (`Child::kill`), as a machine that dies: nothing of the
    /// server runs after it, nothing is said to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
    }

    /// SIGTERM, then wait (at most 15 s) for the exit status.
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.signal_and_wait("TERM")
    }

    /// Stops the server with SIGTERM (it must exit 0) and starts it again
    /// with the same arguments and data dir; the ports may change.
    /// If the server has already exited (after [`wait_exit`](Self::wait_exit)),
    /// this only starts it again.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.sigterm_and_wait();
            assert!(status.success(), "{} exited with {status} on SIGTERM\n{}", self.bin, self.log_tail(40));
        }
        self.spawn();
    }

    // ---- HTTP API ----

    /// Any HTTP request to this server.
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http(self.http, method, path, headers, body)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpResponse {
        self.http("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
    }

    /// `POST /api/register`.
    pub fn register(&self, user: &str, password: &str) -> HttpResponse {
        self.post_json("/api/register", &json!({"user": user, "password": password}))
    }

    /// `POST /api/login`.
    pub fn try_login(&self, user: &str, password: &str) -> HttpResponse {
        self.post_json("/api/login", &json!({"user": user, "password": password}))
    }

    /// Logs in and returns the token; panics unless the answer is 200.
    pub fn login(&self, user: &str, password: &str) -> String {
        let resp = self.try_login(user, password);
        assert_eq!(resp.status, 200, "login {user}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["user"], user, "login {user}: {body}");
        body["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("login {user}: no token in {body}"))
            .to_string()
    }

    /// `POST /api/logout` with `Authorization: Bearer <token>`.
    pub fn logout(&self, token: &str) -> HttpResponse {
        let auth = format!("Bearer {token}");
        self.http("POST", "/api/logout", &[("Authorization", &auth)], b"")
    }

    /// Registers a fresh user named after `prefix` and logs it in.
    pub fn account(&self, prefix: &str) -> Account {
        let name = uniq(prefix);
        let resp = self.register(&name, PASSWORD);
        assert_eq!(resp.status, 201, "register {name}: {}", resp.text());
        let token = self.login(&name, PASSWORD);
        Account { name, password: PASSWORD.to_string(), token }
    }

    // ---- clients ----

    /// A guest WebSocket session named after `prefix`, past `welcome`.
    pub fn guest(&self, prefix: &str) -> WsClient {
        WsClient::guest(self, prefix)
    }

    /// A WebSocket session of `account` (hello with its token), past `welcome`.
    pub fn session(&self, account: &Account) -> WsClient {
        WsClient::user(self, account)
    }

    /// A fresh registered user and one WebSocket session of it.
    pub fn user(&self, prefix: &str) -> (Account, WsClient) {
        let account = self.account(prefix);
        let ws = self.session(&account);
        (account, ws)
    }

    /// A line-protocol guest named after `prefix`, past `* welcome`.
    pub fn line_guest(&self, prefix: &str) -> LineClient {
        LineClient::guest(self, prefix)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Parses `natter listening http=IP:PORT line=IP:PORT`.
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("natter listening http=")?;
    let (http, line_part) = rest.split_once(" line=")?;
    let http: SocketAddr = http.parse().ok()?;
    let line_addr: SocketAddr = line_part.parse().ok()?;
    Some((http, line_addr))
}

/// The outcome of a run that is expected to end by itself.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin` with exactly `args` and `env` (inherited `NATTER_*` removed) in
/// a temporary working directory and waits at most `timeout` for it to exit.
pub fn run_to_exit(bin: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Exited {
    let dir = tempfile::Builder::new().prefix("natter-e2e-run-").tempdir().expect("create a temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command(bin)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{bin} {args:?} did not exit within {timeout:?}; stderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exited {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Creates a database of its own on the PostgreSQL server at `base`
/// (`postgres://user@host:port`, as tests/services/postgres prints it
/// without the database) and returns its URL.
pub fn new_database(base: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = base.trim_end_matches('/');
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("natter_e2e_{}_{n}", std::process::id());
    let out = Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql (NATTER_TEST_DATABASE needs PostgreSQL's client)");
    assert!(out.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{base}/{name}")
}

//! Flags, `NATTER_*` environment variables and a TOML file, resolved into
//! [`Settings`]: a flag beats the environment, which beats the file, which
//! beats the default (PROTOCOL.md, "Running a server").

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use natter_core::store::InboxBound;

use crate::store::{PostgresOptions, SqliteOptions, SyncMode};
use clap::{Arg, ArgAction, Command};

/// Everything a runtime binary needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP and WebSocket listener.
    pub http: SocketAddr,
    /// Line-protocol listener.
    pub line: SocketAddr,
    /// Directory of the embedded database.
    pub data: PathBuf,
    /// `postgres://` URL, when given.
    pub database: Option<String>,
    /// `redis://` URL, when given.
    pub redis: Option<String>,
    /// I/O threads.
    pub threads: usize,
    /// Log filter (`--log`), else `RUST_LOG`, else `info`.
    pub log: Option<String>,
    /// Password hashes that may wait for a hashing thread; more are refused
    /// at once (503 with `Retry-After`) rather than left waiting long.
    pub password_queue: usize,
    /// How long a storage transaction that writes may wait for more requests
    /// before it commits (`--commit-window`).
    pub commit_window: Duration,
    /// What the core enforces.
    pub core: natter_core::Config,
    /// How the embedded database trades safety for speed.
    pub sqlite: SqliteOptions,
    /// The PostgreSQL store's pool and client-id retention (the same
    /// `--id-retention` and `--max-ids` as SQLite's), used with `--database`.
    pub postgres: PostgresOptions,
}

/// Why parsing stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigExit {
    /// `--help` or `--version`: print this on standard output, exit 0.
    Info(String),
    /// A bad flag, value or file: print this one line on standard error, exit 2.
    Bad(String),
}

/// `(flag, value name, help)`; every flag but `--config` can also come from
/// the environment and the file. Switches have no value name.
const FLAGS: &[(&str, Option<&str>, &str)] = &[
    ("http", Some("ADDR"), "HTTP + WebSocket listener [default: 0.0.0.0:8080]"),
    ("line", Some("ADDR"), "line-protocol listener [default: 0.0.0.0:8480]"),
    ("data", Some("DIR"), "directory of the embedded SQLite database [default: ./natter-data]"),
    ("database", Some("URL"), "postgres://... : use PostgreSQL instead of SQLite"),
    ("redis", Some("URL"), "redis://... : join the cluster that shares this Redis (needs --database)"),
    ("database-pool", Some("N"), "PostgreSQL connections this node may open, at most [default: 4]"),
    (
        "database-timeout",
        Some("SECS"),
        "time to connect to PostgreSQL before a storage request fails as unavailable [default: 5]",
    ),
    ("threads", Some("N"), "I/O threads [default: 1 on up to 2 cores, else one fewer than the cores]"),
    ("heartbeat", Some("SECS"), "heartbeat_s in welcome; silence past twice this closes a WebSocket [default: 30]"),
    ("no-guests", None, "refuse guest hello and nickname logins"),
    ("token-ttl", Some("SECS"), "token lifetime [default: 86400]"),
    ("max-frame", Some("BYTES"), "largest WebSocket frame or message; past it close 1009 [default: 65536]"),
    ("max-text", Some("BYTES"), "largest message text [default: 4096]"),
    ("max-line", Some("BYTES"), "largest line-protocol line [default: 4096]"),
    (
        "max-queue",
        Some("BYTES"),
        "unsent bytes per connection before it is closed as a slow consumer [default: 4194304]",
    ),
    ("rate", Some("N"), "messages per second per connection [default: 20]"),
    ("burst", Some("N"), "burst of the rate limit [default: 40]"),
    ("max-rooms", Some("N"), "rooms per user [default: 100]"),
    ("max-connections", Some("N"), "TCP connections per server, both ports [default: 100000]"),
    (
        "max-connections-per-ip",
        Some("N"),
        "TCP connections from one client address (an IPv6 /64), both ports; loopback counts too [default: 256]",
    ),
    ("handshake-timeout", Some("SECS"), "time from connect to welcome [default: 10]"),
    ("line-idle", Some("SECS"), "silence that closes a line session [default: 600]"),
    ("echo", None, "also serve GET /echo, a WebSocket echo for conformance suites (a test aid)"),
    ("login-rate", Some("N"), "failed or unfinished logins per client address per minute [default: 10]"),
    ("account-login-rate", Some("N"), "failed or unfinished logins per account per minute [default: 20]"),
    ("register-rate", Some("N"), "registrations per client address per minute [default: 10]"),
    ("name-probe-rate", Some("N"), "guest names refused as taken per client address per minute [default: 20]"),
    ("user-session-rate", Some("N"), "sessions opened per user per minute [default: 30]"),
    ("peer-session-rate", Some("N"), "sessions opened per client address per minute [default: 60]"),
    ("presence-grace", Some("MS"), "a registered user's offline waits this long for a new session [default: 2000]"),
    (
        "node-timeout",
        Some("MS"),
        "in a cluster, silence after which a node counts as dead; nodes beat 5 times in it [default: 5000]",
    ),
    ("password-queue", Some("N"), "password hashes that may wait for a hashing thread [default: 16 per thread]"),
    (
        "inbox-per-sender",
        Some("N"),
        "unacknowledged private messages a registered user may hold from one sender [default: 1000]",
    ),
    (
        "inbox-per-recipient",
        Some("N"),
        "unacknowledged private messages a registered user may hold in all [default: 10000]",
    ),
    ("query-rate", Some("N"), "rooms, who, history and conversations requests per second per session, bursts of 4x [default: 10]"),
    ("no-guest-private", None, "guests may not send private messages to registered users"),
    (
        "sync",
        Some("MODE"),
        "full: an ok survives a power cut; normal: faster, the last commits can be lost if the machine goes down [default: full]",
    ),
    (
        "commit-window",
        Some("MS"),
        "a storage commit waits up to this long after its first message for more to share it (one fsync for \
         several); 0: commit at once [default: 5]",
    ),
    ("id-retention", Some("SECS"), "how long client message ids are remembered [default: 86400]"),
    ("max-ids", Some("N"), "most client message ids remembered; past it the oldest go first [default: 10000000]"),
    (
        "metrics-token",
        Some("TOKEN"),
        "GET /metrics then needs Authorization: Bearer TOKEN, else 401 (better from the environment or the file \
         than on the command line) [default: none, /metrics is open]",
    ),
    (
        "allowed-origin",
        Some("ORIGIN"),
        "a page origin (scheme://host[:port]) that may open a WebSocket; repeatable, comma-separated in the \
         environment; an upgrade with another Origin gets 403 [default: any origin]",
    ),
    ("log", Some("FILTER"), "log level or tracing filter, e.g. info or natter=debug [default: RUST_LOG, else info]"),
];

/// Flags that may be given more than once; in the environment their values
/// are comma-separated, in the file a list or a comma-separated string.
const REPEATABLE: &[&str] = &["allowed-origin"];

fn command(binary: &'static str) -> Command {
    let mut cmd = Command::new(binary)
        .version(env!("CARGO_PKG_VERSION"))
        .about("Natter chat server: WebSocket and line-protocol chat with stored history")
        .after_help("Every flag can also be set as NATTER_<FLAG> (upper case, - becomes _) or as a key of the --config file.\nA flag beats the environment, which beats the file.")
        .arg(Arg::new("config").long("config").value_name("FILE").help("TOML file whose keys are the flag names"));
    for &(name, value, help) in FLAGS {
        let arg = Arg::new(name).long(name).help(help);
        cmd = cmd.arg(match value {
            Some(v) if REPEATABLE.contains(&name) => arg.value_name(v).action(ArgAction::Append),
            Some(v) => arg.value_name(v).action(ArgAction::Set),
            None => arg.action(ArgAction::SetTrue),
        });
    }
    cmd
}

/// Resolves the settings from `args` (the first is the program name), the
/// environment as `env` returns it, and the `--config` file.
pub fn parse<I, F>(binary: &'static str, args: I, env: F) -> Result<Settings, ConfigExit>
where
    I: IntoIterator<Item = OsString>,
    F: Fn(&str) -> Option<String>,
{
    let matches = command(binary).try_get_matches_from(args).map_err(clap_exit)?;
    let file = match matches.get_one::<String>("config").cloned().or_else(|| env("NATTER_CONFIG")) {
        Some(path) => read_file(&path)?,
        None => BTreeMap::new(),
    };
    let value = |name: &str| -> Result<Option<String>, ConfigExit> {
        let is_switch = FLAGS.iter().any(|(n, v, _)| *n == name && v.is_none());
        if matches.value_source(name) == Some(ValueSource::CommandLine) {
            if REPEATABLE.contains(&name) {
                return Ok(matches.get_many::<String>(name).map(|v| v.cloned().collect::<Vec<_>>().join(",")));
            }
            return Ok(if is_switch { Some("true".into()) } else { matches.get_one::<String>(name).cloned() });
        }
        let env_name = format!("NATTER_{}", name.to_uppercase().replace('-', "_"));
        if let Some(v) = env(&env_name) {
            return Ok(Some(v));
        }
        Ok(file.get(name).cloned())
    };
    let settings = settings(&value)?;
    validate(&settings)?;
    Ok(settings)
}

/// `--help` and `--version` as information, anything else clap refused as a
/// one-line error.
fn clap_exit(e: clap::Error) -> ConfigExit {
    match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ConfigExit::Info(e.to_string()),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            ConfigExit::Bad(format!("{first} (see --help)"))
        }
    }
}

/// A flag's text from the command line, the environment or the file.
type Lookup<'a> = &'a dyn Fn(&str) -> Result<Option<String>, ConfigExit>;

fn settings(value: Lookup<'_>) -> Result<Settings, ConfigExit> {
    let core = core_config(value)?;
    let s = SqliteOptions::default();
    let sqlite = SqliteOptions {
        sync: sync_mode(&value("sync")?)?,
        id_retention: secs(&value("id-retention")?, "id-retention", s.id_retention)?,
        max_ids: number(&value("max-ids")?, "max-ids", s.max_ids)?,
    };
    let p = PostgresOptions::default();
    let postgres = PostgresOptions {
        pool_size: number(&value("database-pool")?, "database-pool", p.pool_size)?,
        connect_timeout: secs(&value("database-timeout")?, "database-timeout", p.connect_timeout)?,
        id_retention: sqlite.id_retention,
        max_ids: sqlite.max_ids,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Settings {
        http: address(&value("http")?, "http", "0.0.0.0:8080")?,
        line: address(&value("line")?, "line", "0.0.0.0:8480")?,
        data: PathBuf::from(value("data")?.unwrap_or_else(|| "./natter-data".into())),
        database: url(value("database")?, "database", &["postgres://", "postgresql://"])?,
        redis: url(value("redis")?, "redis", &["redis://", "rediss://"])?,
        threads: number(&value("threads")?, "threads", default_threads(cores))?,
        log: value("log")?,
        password_queue: number(&value("password-queue")?, "password-queue", crate::store::DEFAULT_PASSWORD_QUEUE)?,
        commit_window: millis(&value("commit-window")?, "commit-window", crate::store::DEFAULT_COMMIT_WINDOW)?,
        core,
        sqlite,
        postgres,
    })
}

/// I/O threads when `--threads` is not given. With more than one, the hub
/// and storage get threads of their own and every message crosses threads
/// twice; on two cores those four threads and the kernel's network work
/// fight over the cores (the benchmark held a third of `--threads 1`'s
/// fan-out rate), so a small machine runs everything on one I/O thread and
/// leaves the other core to storage and the kernel. On more cores one is
/// left to the hub and storage threads.
pub fn default_threads(cores: usize) -> usize {
    if cores <= 2 {
        1
    } else {
        cores - 1
    }
}

/// The core's limits; what no flag sets keeps the core's default.
fn core_config(value: Lookup<'_>) -> Result<natter_core::Config, ConfigExit> {
    let d = natter_core::Config::default();
    Ok(natter_core::Config {
        heartbeat: secs(&value("heartbeat")?, "heartbeat", d.heartbeat)?,
        no_guests: switch(&value("no-guests")?, "no-guests")?,
        token_ttl: secs(&value("token-ttl")?, "token-ttl", d.token_ttl)?,
        max_frame: number(&value("max-frame")?, "max-frame", d.max_frame)?,
        max_text: number(&value("max-text")?, "max-text", d.max_text)?,
        max_line: number(&value("max-line")?, "max-line", d.max_line)?,
        max_queue: number(&value("max-queue")?, "max-queue", d.max_queue)?,
        rate: number(&value("rate")?, "rate", d.rate)?,
        burst: number(&value("burst")?, "burst", d.burst)?,
        max_rooms: number(&value("max-rooms")?, "max-rooms", d.max_rooms)?,
        max_connections: number(&value("max-connections")?, "max-connections", d.max_connections)?,
        max_connections_per_ip: number(
            &value("max-connections-per-ip")?,
            "max-connections-per-ip",
            d.max_connections_per_ip,
        )?,
        handshake_timeout: secs(&value("handshake-timeout")?, "handshake-timeout", d.handshake_timeout)?,
        line_idle: secs(&value("line-idle")?, "line-idle", d.line_idle)?,
        echo: switch(&value("echo")?, "echo")?,
        login_rate: number(&value("login-rate")?, "login-rate", d.login_rate)?,
        inbox: InboxBound {
            per_sender: number(&value("inbox-per-sender")?, "inbox-per-sender", d.inbox.per_sender)?,
            per_recipient: number(&value("inbox-per-recipient")?, "inbox-per-recipient", d.inbox.per_recipient)?,
        },
        query_rate: number(&value("query-rate")?, "query-rate", d.query_rate)?,
        no_guest_private: switch(&value("no-guest-private")?, "no-guest-private")?,
        guest_secret: d.guest_secret,
        account_login_rate: number(&value("account-login-rate")?, "account-login-rate", d.account_login_rate)?,
        register_rate: number(&value("register-rate")?, "register-rate", d.register_rate)?,
        name_probe_rate: number(&value("name-probe-rate")?, "name-probe-rate", d.name_probe_rate)?,
        user_session_rate: number(&value("user-session-rate")?, "user-session-rate", d.user_session_rate)?,
        peer_session_rate: number(&value("peer-session-rate")?, "peer-session-rate", d.peer_session_rate)?,
        presence_grace: millis(&value("presence-grace")?, "presence-grace", d.presence_grace)?,
        store_backlog: d.store_backlog,
        // Set at start (node.rs) from `--redis`, with a random node id.
        cluster: d.cluster,
        cluster_check: d.cluster_check,
        node: d.node,
        node_beat: node_timeout(&value("node-timeout")?, d.node_timeout)?.0,
        node_timeout: node_timeout(&value("node-timeout")?, d.node_timeout)?.1,
        allowed_origins: origins(&value("allowed-origin")?)?,
        metrics_token: secret(value("metrics-token")?, "metrics-token")?,
    })
}

/// Most PostgreSQL connections one node may hold: the storage thread uses
/// one at a time, and the server's connections are shared by every node.
const MAX_DATABASE_POOL: u32 = 64;

/// The longest `--commit-window`.
const MAX_COMMIT_WINDOW: Duration = Duration::from_millis(1000);

/// What each value allows alone cannot say: ranges, and flags that need others.
fn validate(settings: &Settings) -> Result<(), ConfigExit> {
    if settings.threads == 0 || settings.threads > 1024 {
        return Err(ConfigExit::Bad("invalid value for --threads: from 1 to 1024".into()));
    }
    // Every write's `ok` may wait this long: more would be a server that
    // seems stuck, not a faster one.
    if settings.commit_window > MAX_COMMIT_WINDOW {
        return Err(ConfigExit::Bad(format!(
            "invalid value for --commit-window: from 0 to {} (milliseconds)",
            MAX_COMMIT_WINDOW.as_millis()
        )));
    }
    if settings.redis.is_some() && settings.database.is_none() {
        return Err(ConfigExit::Bad("--redis needs --database: cluster nodes share one PostgreSQL".into()));
    }
    // Every node holds this many sessions on a server whose own limit
    // (`max_connections`, 100 by default) is shared by all the nodes.
    if settings.postgres.pool_size > MAX_DATABASE_POOL {
        return Err(ConfigExit::Bad(format!("invalid value for --database-pool: from 1 to {MAX_DATABASE_POOL}")));
    }
    for (name, v) in [
        ("rate", settings.core.rate as usize),
        ("burst", settings.core.burst as usize),
        ("max-frame", settings.core.max_frame),
        ("max-queue", settings.core.max_queue),
        ("max-line", settings.core.max_line),
        ("max-connections-per-ip", settings.core.max_connections_per_ip),
        ("heartbeat", settings.core.heartbeat.as_secs() as usize),
        ("inbox-per-sender", settings.core.inbox.per_sender as usize),
        ("query-rate", settings.core.query_rate as usize),
        ("inbox-per-recipient", settings.core.inbox.per_recipient as usize),
        ("max-ids", settings.sqlite.max_ids as usize),
        // A limit of 0 would refuse every login, registration or session.
        ("login-rate", settings.core.login_rate as usize),
        ("account-login-rate", settings.core.account_login_rate as usize),
        ("register-rate", settings.core.register_rate as usize),
        ("user-session-rate", settings.core.user_session_rate as usize),
        ("peer-session-rate", settings.core.peer_session_rate as usize),
        ("password-queue", settings.password_queue),
        ("database-pool", settings.postgres.pool_size as usize),
        ("database-timeout", settings.postgres.connect_timeout.as_secs() as usize),
    ] {
        if v == 0 {
            return Err(ConfigExit::Bad(format!("invalid value for --{name}: must be at least 1")));
        }
    }
    Ok(())
}

fn read_file(path: &str) -> Result<BTreeMap<String, String>, ConfigExit> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigExit::Bad(format!("cannot read --config {path}: {e}")))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigExit::Bad(format!("bad --config {path}: {}", e.message())))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !FLAGS.iter().any(|(n, _, _)| *n == key) {
            return Err(ConfigExit::Bad(format!("bad --config {path}: unknown key {key}")));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) if REPEATABLE.contains(&key.as_str()) => {
                let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                texts
                    .ok_or_else(|| ConfigExit::Bad(format!("bad --config {path}: {key} must be a list of strings")))?
                    .join(",")
            }
            other => return Err(ConfigExit::Bad(format!("bad --config {path}: {key} = {other} is not a plain value"))),
        };
        out.insert(key, text);
    }
    Ok(out)
}

fn bad(name: &str, v: &str, why: &str) -> ConfigExit {
    ConfigExit::Bad(format!("invalid value '{v}' for --{name}: {why}"))
}

fn number<T: std::str::FromStr>(v: &Option<String>, name: &str, default: T) -> Result<T, ConfigExit> {
    match v {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| bad(name, v, "expected a whole number")),
    }
}

fn secs(v: &Option<String>, name: &str, default: Duration) -> Result<Duration, ConfigExit> {
    number(v, name, default.as_secs()).map(Duration::from_secs)
}

fn millis(v: &Option<String>, name: &str, default: Duration) -> Result<Duration, ConfigExit> {
    number(v, name, default.as_millis() as u64).map(Duration::from_millis)
}

/// The node timeout and the beat it implies: five beats per timeout, so a
/// node is counted dead only after several beats in a row were lost.
fn node_timeout(v: &Option<String>, default: Duration) -> Result<(Duration, Duration), ConfigExit> {
    let timeout = millis(v, "node-timeout", default)?;
    if timeout < Duration::from_millis(100) {
        return Err(bad("node-timeout", v.as_deref().unwrap_or_default(), "at least 100"));
    }
    Ok((timeout / 5, timeout))
}

fn switch(v: &Option<String>, name: &str) -> Result<bool, ConfigExit> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(_) => Err(bad(name, v.as_deref().unwrap_or_default(), "expected 1, true, yes, 0, false or no")),
    }
}

fn sync_mode(v: &Option<String>) -> Result<SyncMode, ConfigExit> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("full") => Ok(SyncMode::Full),
        Some("normal") => Ok(SyncMode::Normal),
        Some(_) => Err(bad("sync", v.as_deref().unwrap_or_default(), "expected full or normal")),
    }
}

fn address(v: &Option<String>, name: &str, default: &str) -> Result<SocketAddr, ConfigExit> {
    let text = v.as_deref().unwrap_or(default);
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad(name, text, "expected IP:PORT or HOST:PORT"))
}

/// A secret flag: printable ASCII without spaces, so that it fits in a
/// header as sent. A bad value is not echoed in the error.
fn secret(v: Option<String>, name: &str) -> Result<Option<natter_core::Secret>, ConfigExit> {
    match v {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(natter_core::Secret::new(v))),
        Some(_) => Err(ConfigExit::Bad(format!(
            "invalid value for --{name}: expected printable ASCII without spaces (value not shown)"
        ))),
    }
}

/// `--allowed-origin`: each one `http://` or `https://` and a host with an
/// optional port, kept in lower case without a trailing `/`.
fn origins(v: &Option<String>) -> Result<Vec<String>, ConfigExit> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for origin in v.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        let plain = |h: &str| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ', '*']);
        if !host.is_some_and(plain) {
            return Err(bad("allowed-origin", &origin, "expected scheme://host[:port], e.g. https://chat.example.com"));
        }
        out.push(origin);
    }
    Ok(out)
}

fn url(v: Option<String>, name: &str, schemes: &[&str]) -> Result<Option<String>, ConfigExit> {
    match v {
        Some(u) if !schemes.iter().any(|s| u.starts_with(s)) => {
            Err(bad(name, &u, &format!("expected a URL starting with {}", schemes[0])))
        }
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigExit> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args = std::iter::once("natter-test").chain(args.iter().copied()).map(OsString::from);
        parse("natter-test", args, |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_match_the_protocol() {
        let s = run(&[], &[]).unwrap();
        assert_eq!(s.http, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.line, "0.0.0.0:8480".parse().unwrap());
        assert_eq!(s.data, PathBuf::from("./natter-data"));
        assert_eq!(s.core, natter_core::Config::default());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "max-frame = 100\nrate = 7\nburst = 9\nno-guests = true\n").unwrap();
        let f = file.to_str().unwrap();
        let s =
            run(&["--config", f, "--max-frame", "300"], &[("NATTER_MAX_FRAME", "200"), ("NATTER_RATE", "8")]).unwrap();
        assert_eq!(s.core.max_frame, 300);
        assert_eq!(s.core.rate, 8);
        assert_eq!(s.core.burst, 9);
        assert!(s.core.no_guests);
        let s = run(&["--config", f], &[("NATTER_NO_GUESTS", "No")]).unwrap();
        assert!(!s.core.no_guests, "the environment beats the file for switches too");
    }

    #[test]
    fn switches_from_the_environment() {
        for yes in ["1", "true", "YES", "True"] {
            assert!(run(&[], &[("NATTER_NO_GUESTS", yes)]).unwrap().core.no_guests);
        }
        for no in ["0", "false", "NO"] {
            assert!(!run(&[], &[("NATTER_NO_GUESTS", no)]).unwrap().core.no_guests);
        }
        assert!(matches!(run(&[], &[("NATTER_NO_GUESTS", "maybe")]), Err(ConfigExit::Bad(_))));
        assert!(run(&["--echo"], &[]).unwrap().core.echo);
    }

    #[test]
    fn commit_window_from_flag_env_and_file_and_its_bound() {
        assert_eq!(run(&[], &[]).unwrap().commit_window, crate::store::DEFAULT_COMMIT_WINDOW);
        assert_eq!(run(&["--commit-window", "0"], &[]).unwrap().commit_window, Duration::ZERO);
        let s = run(&[], &[("NATTER_COMMIT_WINDOW", "7")]).unwrap();
        assert_eq!(s.commit_window, Duration::from_millis(7));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "commit-window = 9\n").unwrap();
        let s = run(&["--config", file.to_str().unwrap()], &[]).unwrap();
        assert_eq!(s.commit_window, Duration::from_millis(9));
        assert_eq!(run(&["--commit-window", "1000"], &[]).unwrap().commit_window, Duration::from_secs(1));
        match run(&["--commit-window", "1001"], &[]) {
            Err(ConfigExit::Bad(e)) => assert!(e.contains("--commit-window"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn abuse_limits_from_flags_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "register-rate = 3\nname-probe-rate = 4\npassword-queue = 8\n").unwrap();
        let f = file.to_str().unwrap();
        let s = run(
            &["--config", f, "--account-login-rate", "5", "--presence-grace", "250"],
            &[("NATTER_USER_SESSION_RATE", "6"), ("NATTER_PEER_SESSION_RATE", "7")],
        )
        .unwrap();
        assert_eq!((s.core.register_rate, s.core.name_probe_rate, s.core.account_login_rate), (3, 4, 5),);
        assert_eq!((s.core.user_session_rate, s.core.peer_session_rate, s.password_queue), (6, 7, 8));
        assert_eq!(s.core.presence_grace, Duration::from_millis(250));
        let s = run(&["--node-timeout", "1500"], &[]).unwrap();
        assert_eq!((s.core.node_beat, s.core.node_timeout), (Duration::from_millis(300), Duration::from_millis(1500)));
        assert!(run(&["--node-timeout", "99"], &[]).is_err(), "a timeout shorter than a few beats is refused");
        assert_eq!(run(&[], &[]).unwrap().password_queue, crate::store::DEFAULT_PASSWORD_QUEUE);
    }

    #[test]
    fn postgres_options_from_flags_env_and_file() {
        let s = run(&[], &[]).unwrap();
        assert_eq!(s.postgres, PostgresOptions::default());
        assert_eq!((s.postgres.pool_size, s.postgres.connect_timeout), (4, Duration::from_secs(5)));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "database-pool = 2\nid-retention = 60\n").unwrap();
        let f = file.to_str().unwrap();
        let s = run(&["--config", f, "--max-ids", "9"], &[("NATTER_DATABASE_TIMEOUT", "3")]).unwrap();
        assert_eq!(
            s.postgres,
            PostgresOptions {
                pool_size: 2,
                connect_timeout: Duration::from_secs(3),
                id_retention: Duration::from_secs(60),
                max_ids: 9,
            }
        );
        for bad in [["--database-pool", "0"], ["--database-pool", "65"], ["--database-timeout", "0"]] {
            match run(&bad, &[]) {
                Err(ConfigExit::Bad(line)) => assert!(line.contains(&bad[0][2..]) && !line.contains('\n'), "{line}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_default_threads_leave_small_machines_one_io_thread_and_big_ones_a_core_for_the_hub() {
        let by_cores: Vec<usize> = [1, 2, 3, 4, 16].into_iter().map(default_threads).collect();
        assert_eq!(by_cores, [1, 1, 2, 3, 15]);
        let given = run(&["--threads", "2"], &[]).unwrap();
        assert_eq!(given.threads, 2);
    }

    #[test]
    fn bad_input_is_one_line() {
        for args in [
            &["--max-frame", "big"][..],
            &["--nope"],
            &["--http", "nowhere"],
            &["--threads", "0"],
            &["--user-session-rate", "0"],
            &["--password-queue", "0"],
            &["--database", "mysql://x"],
            &["--redis", "redis://x"],
        ] {
            match run(args, &[]) {
                Err(ConfigExit::Bad(msg)) => assert!(!msg.contains('\n'), "{msg}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert!(matches!(run(&["--config", "/nonexistent/x.toml"], &[]), Err(ConfigExit::Bad(_))));
        assert!(matches!(run(&["--help"], &[]), Err(ConfigExit::Info(_))));
    }

    #[test]
    fn allowed_origins_repeat_and_split_on_commas() {
        assert!(run(&[], &[]).unwrap().core.allowed_origins.is_empty(), "any origin by default");
        let s = run(&["--allowed-origin", "https://A.example/", "--allowed-origin", "http://b.example:8080"], &[]);
        assert_eq!(s.unwrap().core.allowed_origins, ["https://a.example", "http://b.example:8080"]);
        let s = run(&[], &[("NATTER_ALLOWED_ORIGIN", "https://a.example, https://b.example")]).unwrap();
        assert_eq!(s.core.allowed_origins, ["https://a.example", "https://b.example"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "allowed-origin = [\"https://c.example\"]\n").unwrap();
        let s = run(&["--config", file.to_str().unwrap()], &[]).unwrap();
        assert_eq!(s.core.allowed_origins, ["https://c.example"]);
        for bad in ["example.com", "https://", "https://a.example/path", "ftp://a.example", "*"] {
            assert!(matches!(run(&["--allowed-origin", bad], &[]), Err(ConfigExit::Bad(_))), "{bad}");
        }
    }

    #[test]
    fn the_metrics_token_comes_from_anywhere_and_is_never_shown() {
        assert_eq!(run(&[], &[]).unwrap().core.metrics_token, None, "open by default");
        let s = run(&[], &[("NATTER_METRICS_TOKEN", "tok-123")]).unwrap();
        assert_eq!(s.core.metrics_token, Some(natter_core::Secret::new("tok-123")));
        assert!(!format!("{s:?}").contains("tok-123"), "Debug output hides it");
        match run(&["--metrics-token", "has space"], &[]) {
            Err(ConfigExit::Bad(m)) => assert!(!m.contains("has space"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "max-frames = 100\n").unwrap();
        assert!(
            matches!(run(&["--config", file.to_str().unwrap()], &[]), Err(ConfigExit::Bad(m)) if m.contains("max-frames"))
        );
    }
}

//! Flags, environment and config file (PROTOCOL.md "Running a server").

use std::net::TcpListener;
use std::time::Duration;

use natter_tests::{json, run_to_exit, ty, uniq, Server, WsClient};

/// Runs `bin` with port-0 listeners, a fresh data dir and `extra`, expecting
/// a bad-flag exit: status 2, one line on stderr, nothing on stdout.
fn expect_bad_flag(bin: &str, extra: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut args = vec!["--http", "127.0.0.1:0", "--line", "127.0.0.1:0", "--data", data];
    args.extend_from_slice(extra);
    expect_exit_2(bin, &args, env);
}

fn expect_exit_2(bin: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = run_to_exit(bin, args, env, Duration::from_secs(10));
    let what = format!("{bin} {args:?} env {env:?}");
    assert_eq!(out.status.code(), Some(2), "{what}: exit status; stderr {:?}", out.stderr);
    assert_eq!(out.stdout, "", "{what}: nothing on stdout");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {:?}", out.stderr);
}

/// The `heartbeat_s` a guest's welcome reports.
fn heartbeat_of(s: &Server) -> u64 {
    let mut ws = WsClient::connect(s);
    let w = ws.hello_guest(&uniq("hb"));
    assert_eq!(ty(&w), "welcome", "{w}");
    w["heartbeat_s"].as_u64().unwrap_or_else(|| panic!("{w}"))
}

fn guest_allowed(s: &Server) -> bool {
    let mut ws = WsClient::connect(s);
    let reply = ws.hello_guest(&uniq("g"));
    match ty(&reply) {
        "welcome" => true,
        _ => {
            assert_eq!(reply["code"], "guests_disabled", "{reply}");
            false
        }
    }
}

/// The value of the counter `name` on `/metrics`.
fn counter(s: &Server, name: &str) -> f64 {
    let text = s.http("GET", "/metrics", &[], b"").text();
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.and_then(|l| l.rsplit_once(' ')).and_then(|(_, v)| v.parse().ok()).unwrap_or_else(|| panic!("{name}: {text}"))
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("natter.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

natter_tests::cases! {
    fn a_bad_flag_exits_2_with_one_line_on_stderr(bin) {
        expect_bad_flag(bin, &["--no-such-flag"], &[]);
        expect_bad_flag(bin, &["--heartbeat", "soon"], &[]);
        expect_bad_flag(bin, &["--max-frame", "-5"], &[]);
        expect_bad_flag(bin, &["--rate"], &[]);
        expect_bad_flag(bin, &["stray-argument"], &[]);
        expect_exit_2(bin, &["--http", "not-an-address", "--line", "127.0.0.1:0"], &[]);
    }

    fn a_bad_environment_value_exits_2(bin) {
        expect_bad_flag(bin, &[], &[("NATTER_NO_GUESTS", "maybe")]);
        expect_bad_flag(bin, &[], &[("NATTER_HEARTBEAT", "soon")]);
    }

    fn durability_and_bounds_flags_are_checked(bin) {
        expect_bad_flag(bin, &["--sync", "sometimes"], &[]);
        expect_bad_flag(bin, &["--inbox-per-sender", "0"], &[]);
        expect_bad_flag(bin, &["--query-rate", "-1"], &[]);
        expect_bad_flag(bin, &[], &[("NATTER_SYNC", "fast")]);
        expect_bad_flag(bin, &["--commit-window", "1001"], &[]);
        expect_bad_flag(bin, &[], &[("NATTER_COMMIT_WINDOW", "soon")]);
        // Both modes run, and the database they write is the server user's only.
        for mode in ["normal", "full"] {
            // --sync and the file modes are the embedded store's.
            let s = Server::start_prepared(bin, &["--sync", mode], &[], |_| {});
            let (_, mut a) = s.user("ann");
            a.join(&uniq("r"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let dir = s.data_dir();
                assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o077, 0, "{}", dir.display());
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
                }
            }
        }
    }

    fn messages_sent_together_share_one_commit_within_the_commit_window(bin) {
        // A window far longer than sending five messages takes: they are
        // stored in one transaction, and each `ok` still comes once it is.
        let s = Server::start(bin, &["--commit-window", "1000"]);
        let mut ann = WsClient::guest(&s, "ann");
        let room = uniq("r");
        ann.join(&room);
        let (commits, ops) = (counter(&s, "natter_store_commits_total"), counter(&s, "natter_store_batched_ops_total"));
        let texts: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        let seqs = ann.say_many(&room, &texts, 5);
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(counter(&s, "natter_store_commits_total") - commits, 1.0, "one commit for the five");
        assert!(counter(&s, "natter_store_batched_ops_total") - ops >= 5.0);
        let history = ann.ok("history", json!({ "room": room, "limit": 10 }));
        let stored: Vec<&str> = history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(stored, texts);
    }

    fn a_bad_config_file_exits_2(bin) {
        let dir = tempfile::tempdir().unwrap();
        let bad_value = config_file(&dir, "max-frame = \"big\"\n");
        expect_bad_flag(bin, &["--config", &bad_value], &[]);
        let missing = dir.path().join("missing.toml");
        expect_bad_flag(bin, &["--config", missing.to_str().unwrap()], &[]);
        let not_toml = dir.path().join("broken.toml");
        std::fs::write(&not_toml, "this is [not toml").unwrap();
        expect_bad_flag(bin, &["--config", not_toml.to_str().unwrap()], &[]);
    }

    fn an_address_in_use_exits_2(bin) {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        expect_exit_2(bin, &["--http", &addr, "--line", "127.0.0.1:0", "--data", data], &[]);
        expect_exit_2(bin, &["--http", "127.0.0.1:0", "--line", &addr, "--data", data], &[]);
    }

    fn an_unusable_data_dir_exits_2(bin) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let under_file = file.join("data");
        expect_exit_2(
            bin,
            &["--http", "127.0.0.1:0", "--line", "127.0.0.1:0", "--data", under_file.to_str().unwrap()],
            &[],
        );
    }

    fn a_bad_database_url_exits_2(bin) {
        expect_bad_flag(bin, &["--database", "mysql://nowhere/db"], &[]);
        // --redis needs --database.
        expect_bad_flag(bin, &["--redis", "redis://127.0.0.1:1"], &[]);
    }

    fn any_thread_count_serves_the_same_protocol(bin) {
        for threads in ["1", "3"] {
            let s = Server::start(bin, &["--threads", threads]);
            let room = uniq("room");
            let mut a = s.guest("alice");
            let mut b = s.guest("bob");
            a.join(&room);
            b.join(&room);
            let mut line = s.line_guest("telnet");
            line.send_line(&format!("/join {room}"));
            let who = line.name.clone();
            b.wait_for(|v| natter_tests::is_presence(v, &room, &who, "join"));
            a.say(&room, "hello");
            let m = b.wait_for(|v| natter_tests::is_message_in(v, &room));
            assert_eq!(m["text"], "hello", "--threads {threads}: {m}");
            line.wait_exact(&format!("[{room}] {}: hello", a.user));
        }
    }

    fn switches_come_from_the_environment(bin) {
        for (value, allowed) in [
            ("1", false),
            ("true", false),
            ("YES", false),
            ("True", false),
            ("0", true),
            ("false", true),
            ("No", true),
        ] {
            let s = Server::start_with_env(bin, &[], &[("NATTER_NO_GUESTS", value)]);
            assert_eq!(guest_allowed(&s), allowed, "NATTER_NO_GUESTS={value}");
        }
    }

    fn flags_come_from_the_environment(bin) {
        let s = Server::start_with_env(bin, &[], &[("NATTER_MAX_TEXT", "100")]);
        let mut ws = s.guest("alice");
        let room = uniq("room");
        ws.join(&room);
        ws.say(&room, &"x".repeat(100));
        assert_eq!(ws.error("send", json!({"room": room, "text": "x".repeat(101)})), "too_long");
        let s = Server::start_with_env(bin, &[], &[("NATTER_HEARTBEAT", "7")]);
        assert_eq!(heartbeat_of(&s), 7);
    }

    fn flags_beat_the_environment_which_beats_the_config_file(bin) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(&dir, "heartbeat = 5\nno-guests = true\n");
        let s = Server::start(bin, &["--config", &config]);
        assert_eq!(heartbeat_of_registered(&s), 5, "from the file");
        assert!(!guest_allowed(&s), "no-guests = true in the file");
        drop(s);
        let s = Server::start_with_env(
            bin,
            &["--config", &config],
            &[("NATTER_HEARTBEAT", "6"), ("NATTER_NO_GUESTS", "false")],
        );
        assert_eq!(heartbeat_of(&s), 6, "the environment beats the file");
        drop(s);
        let s = Server::start_with_env(
            bin,
            &["--config", &config, "--heartbeat", "7"],
            &[("NATTER_HEARTBEAT", "6"), ("NATTER_NO_GUESTS", "false")],
        );
        assert_eq!(heartbeat_of(&s), 7, "the flag beats the environment");
    }
}

/// Like [`heartbeat_of`] for a server without guests.
fn heartbeat_of_registered(s: &Server) -> u64 {
    let (_, ws) = s.user("hb");
    ws.welcome["heartbeat_s"].as_u64().unwrap_or_else(|| panic!("{}", ws.welcome))
}

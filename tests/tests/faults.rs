//! Fault tests: misbehaving clients and failing storage cost their own
//! connection or request at most, and a normal pair of clients chatting
//! beside them loses nothing. Bounded in count and time, loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use natter_tests::raw_ws::RawWs;
use natter_tests::{json, seq, ty, uniq, Server, Value, WsClient};

/// A sender and a receiver in one room: `chat` sends `n` messages and checks
/// that each got its `ok` and that the receiver got all of them, in order,
/// with gapless `seq`.
struct Pair {
    a: WsClient,
    b: WsClient,
    room: String,
}

impl Pair {
    fn join(server: &Server) -> Pair {
        let room = uniq("pair");
        let mut a = WsClient::guest(server, "pa");
        let mut b = WsClient::guest(server, "pb");
        a.ok("join", json!({"room": room}));
        b.ok("join", json!({"room": room}));
        b.clear(Duration::from_millis(200));
        Pair { a, b, room }
    }

    fn chat(&mut self, n: usize, tag: &str) {
        let mut seqs = Vec::new();
        for i in 0..n {
            let ok = self.a.ok("send", json!({"room": self.room, "text": format!("{tag} {i}")}));
            seqs.push(seq(&ok));
        }
        let got = self.b.collect(n, |v| ty(v) == "message" && v["room"] == self.room.as_str());
        let got_seqs: Vec<u64> = got.iter().map(seq).collect();
        assert_eq!(got_seqs, seqs, "the receiver must get every acknowledged message, in order");
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v["text"], format!("{tag} {i}"));
        }
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0] + 1, "seq has a gap");
        }
    }
}

/// Whether the server has closed `stream` (EOF or reset) within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

/// A tiny xorshift generator: reproducible "random" bytes with no crate.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = natter_tests::http::http(server.http, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// A small tmpfs mounted at a path, unmounted when dropped. Needs root.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until it refuses more bytes.
fn fill_disk(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0x55u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

natter_tests::cases! {
    fn clients_that_never_read_are_closed_and_a_chatting_pair_loses_nothing(bin) {
        let server = Server::start(
            bin,
            &["--max-queue", "65536", "--max-text", "65536", "--max-frame", "131072", "--rate", "100000", "--burst", "100000"],
        );
        let mut pair = Pair::join(&server);
        let mut silent = Vec::new();
        for _ in 0..4 {
            let mut s = RawWs::connect(server.http, "/ws");
            s.request(json!({"type": "hello", "name": uniq("deaf"), "ref": "h"}));
            s.request(json!({"type": "join", "room": pair.room, "ref": "j"}));
            silent.push(s);
        }
        // 200 messages of 60 KB: 12 MB, more than the kernel's socket
        // buffers and the 64 KiB outbox hold for a client that never reads.
        let pad = "x".repeat(60_000);
        for i in 0..200 {
            let ok = pair.a.ok("send", json!({"room": pair.room, "text": format!("{i} {pad}")}));
            // The receiver keeps up, message by message.
            let got = pair.b.collect(1, |v| ty(v) == "message" && v["room"] == pair.room.as_str());
            assert_eq!(seq(&got[0]), seq(&ok));
            assert!(got[0]["text"].as_str().unwrap_or_default().starts_with(&format!("{i} ")));
        }
        for mut s in silent {
            let end = s.read_until_closed(Duration::from_secs(10));
            assert!(end.ended(), "a client that never reads must be closed");
            assert!(end.texts.len() < 200, "a client that never reads cannot have got everything");
        }
        assert!(metric(&server, "natter_slow_consumer_closes_total") >= 4.0);
        pair.chat(10, "after");
    }

    fn a_flood_of_unfinished_handshakes_is_closed_and_the_server_keeps_serving(bin) {
        // The flood comes from one address, as the pair does: let it all in.
        let server = Server::start(
            bin,
            &["--handshake-timeout", "1", "--rate", "100000", "--burst", "100000", "--max-connections-per-ip", "1000"],
        );
        let mut flood: Vec<TcpStream> = Vec::new();
        for i in 0..300 {
            let addr = if i % 3 == 2 { server.line } else { server.http };
            let mut s = TcpStream::connect(addr).expect("connect");
            match i % 3 {
                // Half an HTTP head, never finished.
                0 => s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr").unwrap(),
                // A finished upgrade and no hello.
                1 => s
                    .write_all(
                        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    )
                    .unwrap(),
                // A line connection that says nothing.
                _ => {}
            }
            flood.push(s);
        }
        let mut pair = Pair::join(&server);
        pair.chat(20, "during");
        let t0 = Instant::now();
        for (i, s) in flood.iter_mut().enumerate() {
            assert!(closed_within(s, Duration::from_secs(6)), "flood connection {i} still open after {:?}", t0.elapsed());
        }
        pair.chat(5, "after");
    }

    fn thousands_of_connections_dropped_mid_frame_cost_only_themselves(bin) {
        let server = Server::start(bin, &["--rate", "100000", "--burst", "100000"]);
        let mut pair = Pair::join(&server);
        let addr = server.http;
        let workers: Vec<_> = (0..4)
            .map(|w| {
                thread::spawn(move || {
                    for i in 0..500 {
                        let mut s = TcpStream::connect(addr).expect("connect");
                        let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                            .to_vec();
                        // A masked text frame announcing 200 bytes, cut after a few.
                        req.extend_from_slice(&[0x81, 0x80 | 126, 0, 200, 1, 2, 3, 4]);
                        req.extend_from_slice(b"{\"type\":\"hel");
                        let cut = (w * 500 + i) % req.len();
                        let _ = s.write_all(&req[..cut.max(1)]);
                        drop(s);
                    }
                })
            })
            .collect();
        for round in 0..5 {
            pair.chat(10, &format!("round{round}"));
        }
        for w in workers {
            w.join().expect("worker");
        }
        pair.chat(10, "after");
        let open = natter_tests::eventually(Duration::from_secs(5), "the dropped connections to be gone", || {
            let n = metric(&server, "natter_connections{transport=\"http\"}");
            // The pair and the metrics request itself.
            (n <= 3.0).then_some(n)
        });
        assert!(open <= 3.0);
    }

    fn random_bytes_on_both_ports_harm_no_one_else(bin) {
        let server = Server::start(bin, &["--rate", "100000", "--burst", "100000"]);
        let mut pair = Pair::join(&server);
        let targets: Vec<(SocketAddr, bool)> = (0..16).map(|i| (if i % 2 == 0 { server.http } else { server.line }, i % 4 == 0)).collect();
        let workers: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(i, (addr, upgrade_first))| {
                thread::spawn(move || {
                    let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                    let deadline = Instant::now() + Duration::from_millis(1500);
                    while Instant::now() < deadline {
                        let Ok(mut s) = TcpStream::connect(addr) else { continue };
                        if upgrade_first {
                            let _ = s.write_all(
                                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                            );
                        }
                        let mut buf = vec![0u8; 4096];
                        for _ in 0..8 {
                            noise.fill(&mut buf);
                            if s.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for round in 0..6 {
            pair.chat(10, &format!("noise{round}"));
        }
        for w in workers {
            w.join().expect("worker");
        }
        pair.chat(10, "after");
        let health = natter_tests::http::http(server.http, "GET", "/healthz", &[], b"");
        assert_eq!(health.status, 200);
    }

    fn a_full_disk_gives_unavailable_and_nothing_unstored_is_acknowledged(bin) {
        let mut disk: Option<Tmpfs> = None;
        let server = Server::start_prepared(bin, &["--rate", "100000", "--burst", "100000"], &[], |data| {
            disk = Tmpfs::mount(data, "3m");
        });
        // Root can write to any file, so a full disk is the failure to stage;
        // mounting one needs root (as CI and the project's machines run).
        let disk = disk.expect("this test mounts a 3 MiB tmpfs as the data directory: run it as root");
        let room = uniq("disk");
        let mut a = WsClient::guest(&server, "da");
        a.ok("join", json!({"room": room}));
        let mut acked: Vec<u64> = vec![seq(&a.ok("send", json!({"room": room, "text": "before"})))];
        let filler = fill_disk(&disk.0);
        let text = "y".repeat(4000);
        let mut refused = 0;
        for i in 0..2000 {
            let r = a.request("send", json!({"room": room, "text": format!("{i} {text}")}));
            match ty(&r) {
                "ok" => acked.push(seq(&r)),
                "error" => {
                    assert_eq!(r["code"], "unavailable", "{r}");
                    refused += 1;
                    if refused >= 5 {
                        break;
                    }
                }
                other => panic!("unexpected reply {other}: {r}"),
            }
        }
        assert!(refused > 0, "a full disk must make sends fail with unavailable");
        std::fs::remove_file(&filler).expect("free the disk");
        // Storage recovers: sends are acknowledged again.
        let after = natter_tests::eventually(Duration::from_secs(10), "storage to recover", || {
            let r = a.request("send", json!({"room": room, "text": "after"}));
            (ty(&r) == "ok").then(|| seq(&r))
        });
        acked.push(after);
        // Everything acknowledged is stored, in order, with no gap and
        // nothing else.
        let mut stored: Vec<u64> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut q = json!({"room": room, "limit": 500});
            if let Some(b) = before {
                q["before"] = json!(b);
            }
            let h = a.ok("history", q);
            let msgs: Vec<Value> = h["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            before = Some(seq(&msgs[0]));
            stored.splice(0..0, msgs.iter().map(seq));
        }
        assert_eq!(stored, acked, "stored messages must be exactly the acknowledged ones");
        drop(server);
        drop(disk);
    }
}

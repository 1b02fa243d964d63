//! The Redis link against a private Redis (`tests/services/redis`), with the
//! feature `redis-tests` and `NATTER_TEST_REDIS_DIR` naming the instance's
//! directory (tests/run starts one). Without the feature this file is empty.
#![cfg(feature = "redis-tests")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_core::Metrics;
use natter_host::bus::{Bus, BusCommand, BusEvent};

/// The tests share one Redis, and one of them restarts it: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn dir() -> PathBuf {
    let dir = std::env::var("NATTER_TEST_REDIS_DIR")
        .expect("the redis-tests feature needs NATTER_TEST_REDIS_DIR (tests/services/redis start DIR)");
    PathBuf::from(dir)
}

fn url() -> String {
    std::fs::read_to_string(dir().join("url")).expect("DIR/url").trim().to_string()
}

fn port() -> String {
    std::fs::read_to_string(dir().join("port")).expect("DIR/port").trim().to_string()
}

fn script(args: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/services/redis");
    let status =
        Command::new(root).args(args).stdout(std::process::Stdio::null()).status().expect("run tests/services/redis");
    assert!(status.success(), "tests/services/redis {args:?}");
}

fn bus(node: &str) -> (Bus, Receiver<BusEvent>) {
    let (tx, rx) = channel();
    let tx = std::sync::Mutex::new(tx);
    let sink = Arc::new(move |e: BusEvent| {
        let _ = tx.lock().unwrap().send(e);
    });
    (Bus::start(&url(), node, sink, Arc::new(Metrics::default())).expect("bus"), rx)
}

/// The next event that `pred` accepts, within `within`.
fn wait_for(rx: &Receiver<BusEvent>, within: Duration, mut pred: impl FnMut(&BusEvent) -> bool) -> BusEvent {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no matching bus event within {within:?}"),
        }
    }
}

fn topic(name: &str) -> String {
    format!("test:{name}:{}", std::process::id())
}

#[test]
fn a_publish_reaches_a_subscribed_node_and_not_an_unsubscribed_one() {
    let _one_at_a_time = serial();
    let (a, _a_events) = bus("a1");
    let (b, b_events) = bus("b1");
    wait_for(&b_events, Duration::from_secs(5), |e| *e == BusEvent::Up);
    let t = topic("room");
    b.send(BusCommand::Subscribe(t.clone()));
    // Subscribing takes at most a read slice; publish until it lands.
    let end = Instant::now() + Duration::from_secs(5);
    let got = loop {
        a.send(BusCommand::Publish { topic: t.clone(), payload: b"hello".to_vec() });
        match b_events.recv_timeout(Duration::from_millis(100)) {
            Ok(BusEvent::Message { topic, payload }) => break (topic, payload),
            _ => assert!(Instant::now() < end, "never delivered"),
        }
    };
    assert_eq!(got, (t.clone(), b"hello".to_vec()));
    b.send(BusCommand::Unsubscribe(t.clone()));
    std::thread::sleep(Duration::from_millis(200));
    while b_events.try_recv().is_ok() {}
    a.send(BusCommand::Publish { topic: t, payload: b"gone".to_vec() });
    assert!(b_events.recv_timeout(Duration::from_millis(500)).is_err(), "delivered after unsubscribe");
    a.stop();
    b.stop();
}

#[test]
fn a_killed_subscription_is_reported_down_then_up_with_its_topics() {
    let _one_at_a_time = serial();
    let (a, _a_events) = bus("a2");
    let (b, b_events) = bus("b2");
    wait_for(&b_events, Duration::from_secs(5), |e| *e == BusEvent::Up);
    let t = topic("kill");
    b.send(BusCommand::Subscribe(t.clone()));
    std::thread::sleep(Duration::from_millis(200));
    let killed = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port(), "CLIENT", "KILL", "TYPE", "pubsub"])
        .output()
        .expect("redis-cli");
    assert!(killed.status.success());
    wait_for(&b_events, Duration::from_secs(10), |e| *e == BusEvent::Down);
    wait_for(&b_events, Duration::from_secs(10), |e| *e == BusEvent::Up);
    a.send(BusCommand::Publish { topic: t.clone(), payload: b"again".to_vec() });
    let e = wait_for(&b_events, Duration::from_secs(5), |e| matches!(e, BusEvent::Message { .. }));
    assert_eq!(e, BusEvent::Message { topic: t, payload: b"again".to_vec() });
    a.stop();
    b.stop();
}

#[test]
fn redis_restarting_is_down_then_up_again() {
    let _one_at_a_time = serial();
    let (b, b_events) = bus("b3");
    wait_for(&b_events, Duration::from_secs(5), |e| *e == BusEvent::Up);
    let port = port();
    let dir = dir();
    let dir = dir.to_str().unwrap();
    script(&["stop", dir]);
    wait_for(&b_events, Duration::from_secs(10), |e| *e == BusEvent::Down);
    script(&["start", dir, &port]);
    wait_for(&b_events, Duration::from_secs(15), |e| *e == BusEvent::Up);
    b.stop();
}

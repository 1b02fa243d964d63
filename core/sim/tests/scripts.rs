//! Scripts as the `core` fuzz target runs them. A crash the fuzzer finds
//! is pasted here as a named test (`cargo fuzz fmt core ARTIFACT` prints
//! the input as Rust); these keep the interpreter itself exercised.

use natter_sim::script::*;

fn knobs(remote_hub: bool) -> Knobs {
    Knobs {
        remote_hub,
        max_queue: 2000,
        max_frame: 4000,
        max_text: 200,
        max_line: 200,
        rate: 40,
        burst: 40,
        max_rooms: 3,
        // 12 connections, 3 per address.
        max_connections: 47,
        no_guests: false,
        token_ttl_s: 3,
    }
}

fn request(conn: u8, req: Req) -> Op {
    Op::Request { conn, req, reference: Some(conn), fragments: conn, mask: [1, 2, 3, 4] }
}

/// Every kind of client, every request kind, slow and failing storage,
/// stalled readers, hang-ups and a shutdown.
fn busy() -> Vec<Op> {
    let mut ops = vec![
        Op::OpenHttp { shard: false },
        Op::OpenHttp { shard: true },
        Op::OpenLine { shard: false },
        Op::OpenHttp { shard: true },
        Op::Upgrade { conn: 0, to: UpgradeTo::Ws },
        Op::Upgrade { conn: 1, to: UpgradeTo::WsToken(0) },
        Op::Http { conn: 3, call: HttpCall::Login { user: 1, good_password: true }, close: false },
        Op::StoreIdle,
        request(0, Req::HelloGuest { name: 3 }),
        request(1, Req::HelloToken { token: 1 }),
        Op::Line { conn: 2, line: LineCmd::Password { user: 2, register: false, good_password: true }, crlf: true },
        Op::StoreIdle,
    ];
    for round in 0..12u8 {
        let conn = round % 3;
        ops.push(request(conn, Req::Join { room: round % 3, since: (round % 4 == 0).then_some(0) }));
        ops.push(request(conn, Req::SendRoom { room: round % 3, text: format!("m{round}"), id: Some(round % 2) }));
        ops.push(request(conn, Req::SendUser { to: (round + 1) % 5, text: "psst".into(), id: None }));
        ops.push(Op::Line { conn: 2, line: LineCmd::Say(format!("hi {round}")), crlf: false });
        ops.push(Op::Write { conn, n: u16::from(round) * 7 });
        if round % 5 == 2 {
            ops.push(Op::StoreFail { kind: Fail::Busy });
        }
        if round % 4 == 3 {
            ops.push(Op::StorePasswordFirst);
            ops.push(request(conn, Req::History { room: Some(1), with: 0, before: None, limit: Some(5) }));
            ops.push(request(conn, Req::Who { room: None, limit: Some(3) }));
        }
        ops.push(Op::StoreDone { n: round });
        ops.push(Op::Advance { ms: 250 });
    }
    ops.extend([
        Op::Frame { conn: 0, kind: FrameKind::Ping, fin: true, payload: Blob(b"p".to_vec()), mask: [0; 4] },
        Op::Raw { conn: 1, bytes: Blob(vec![0x81, 0xff, 0, 0]) },
        Op::PeerClosed { conn: 2 },
        Op::AdvanceSecs { s: 40 },
        Op::Shutdown,
    ]);
    ops
}

#[test]
fn a_busy_script_keeps_every_promise_with_the_hub_in_the_shard() {
    let ran = run(&Input { knobs: knobs(false), ops: busy() });
    assert!(ran.events > 100 && ran.stored > 20, "{ran:?}");
}

#[test]
fn a_busy_script_keeps_every_promise_with_the_hub_apart() {
    let ran = run(&Input { knobs: knobs(true), ops: busy() });
    assert!(ran.events > 100 && ran.stored > 20, "{ran:?}");
}

/// Found by the `core` fuzz target (a timeout): with a 128-byte queue, the
/// `101` of a `?token=` upgrade alone passed the bound, the session closed as
/// a slow consumer, and the switch to WebSocket then reopened it: a session
/// the hub thought gone, with a linger deadline in the past, on which the
/// shard's timer loop spun for ever.
#[test]
fn regression_a_101_past_the_queue_bound_closes_the_session_for_good() {
    let knobs = Knobs {
        remote_hub: true,
        max_queue: 0,
        max_frame: 0,
        max_text: 0,
        max_line: 0,
        rate: 0,
        burst: 48,
        max_rooms: 2,
        max_connections: 10,
        no_guests: false,
        token_ttl_s: 3599,
    };
    let ops = vec![
        Op::OpenHttp { shard: false },
        Op::OpenHttp { shard: true },
        Op::Upgrade { conn: 0, to: UpgradeTo::WsToken(0) },
        Op::Upgrade { conn: 1, to: UpgradeTo::Ws },
    ];
    run(&Input { knobs, ops });
}

//! The hub benchmark's smoke (`natter-bench hub` runs it in full): a small
//! load, checking only that every delivery was produced and written. No
//! timing.

use natter_sim::hub_bench::{HubBench, HubBenchSpec};

#[test]
fn every_member_session_gets_every_message_of_its_room() {
    let spec = HubBenchSpec { shards: 4, sessions: 120, room_size: 30, batch: 3 };
    let mut bench = HubBench::new(spec);
    let mut mail = Vec::new();
    let before = bench.delivered();
    let routed = bench.route(10, &mut mail);
    assert_eq!(routed.messages, 10);
    assert_eq!(routed.deliveries, 10 * 30);
    let written = bench.feed_shards(&mut mail);
    assert!(mail.is_empty());
    assert_eq!(bench.delivered() - before, 10 * 30, "the shards queued every delivery");
    assert!(written > 10 * 30 * 20, "every delivery written: {written} bytes");
    // A second round goes on where the first stopped.
    let routed = bench.route(7, &mut mail);
    assert_eq!(routed.deliveries, 7 * 30);
    bench.feed_shards(&mut mail);
}

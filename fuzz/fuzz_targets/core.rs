//! The whole core, as `natter_sim::script` drives it: a node in either
//! topology (one shard with its hub, or two shards and a hub apart with
//! shuffled mail), clients doing anything a runtime could see, storage
//! slow, failing or reordered, time moving. The checks are the script's
//! and the simulation's. A crash becomes a regression test: paste the
//! input `cargo fuzz fmt core ARTIFACT` prints into
//! core/sim/tests/scripts.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_sim::script::{run, Input};

fuzz_target!(|input: Input| {
    run(&input);
});

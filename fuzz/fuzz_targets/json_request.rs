//! The JSON request decoder over arbitrary bytes: no panic, a `ref` or `id`
//! it keeps is within the limit, and a decoded request has a `type`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_core::fuzzing::{json_request, MAX_REF};

fuzz_target!(|data: &[u8]| {
    let d = json_request(data);
    if let Some(r) = &d.reference {
        assert!(r.chars().count() <= MAX_REF);
    }
    if let Some(id) = &d.send_id {
        assert!(id.chars().count() <= MAX_REF);
    }
    if d.request.is_ok() {
        assert!(d.kind.is_some(), "{d:?}");
        assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| v.is_object()));
    }
});

//! The HTTP request parser over arbitrary bytes: no panic, the consumed
//! count stays within the input, and the consumed prefix alone parses to
//! the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_core::fuzzing::http_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = http_request(data) {
        assert!(req.consumed <= data.len(), "consumed {} of {}", req.consumed, data.len());
        assert!(req.body_len < req.consumed, "a body of {} in {}", req.body_len, req.consumed);
        assert!(!req.path.contains('?'));
        assert_eq!(http_request(&data[..req.consumed]), Ok(Some(req)));
    }
});

//! The WebSocket frame decoder, strict (`/echo`) or lenient (`/ws`), over a
//! byte stream cut into reads, with a small message limit, fed the way a
//! session feeds it (unconsumed bytes carried over). Checks: no panic,
//! consumed counts within the buffer, messages and held fragments within
//! the limit, strict text is UTF-8, pings are small, and the same events
//! and verdict whether the bytes come in reads or at once.
//!
//! Input: flags (bit 0: lenient), the limit (u16 LE, mod 2048), a count `n`
//! (mod 8), `n` read sizes (cycled), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_core::fuzzing::{split_reads, WsDecoder, WsEvent};

/// Decodes what it can of `buf`; returns the bytes left, or the close code.
fn feed(d: &mut WsDecoder, buf: &[u8], max: usize, lenient: bool, out: &mut Vec<WsEvent>) -> Result<usize, u16> {
    let mut used = 0;
    loop {
        let rest = &buf[used..];
        let (n, event) = d.decode(rest, max)?;
        assert!(n <= rest.len(), "consumed {n} of {}", rest.len());
        assert!(d.buffered() <= max, "holds {} over a limit of {max}", d.buffered());
        match event {
            Some(e) => {
                match &e {
                    WsEvent::Text(t) | WsEvent::Binary(t) => assert!(t.len() <= max),
                    WsEvent::Ping(p) => assert!(p.len() <= 125),
                    _ => {}
                }
                if let (WsEvent::Text(t), false) = (&e, lenient) {
                    assert!(std::str::from_utf8(t).is_ok(), "the strict decoder passed invalid UTF-8");
                }
                out.push(e);
            }
            None if n == 0 => return Ok(rest.len()),
            None => {}
        }
        used += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, max_lo, max_hi, n, rest @ ..] = data else { return };
    let lenient = flags & 1 == 1;
    let max = usize::from(u16::from_le_bytes([*max_lo, *max_hi]) % 2048);
    let n = usize::from(n % 8).min(rest.len());
    let (reads, stream) = rest.split_at(n);

    let mut whole_events = Vec::new();
    let whole = feed(&mut WsDecoder::new(lenient), stream, max, lenient, &mut whole_events);

    let mut chunked_events = Vec::new();
    let mut d = WsDecoder::new(lenient);
    let mut rbuf = Vec::new();
    let mut chunked = Ok(0);
    for read in split_reads(stream, reads) {
        rbuf.extend_from_slice(read);
        match feed(&mut d, &rbuf, max, lenient, &mut chunked_events) {
            Err(code) => {
                chunked = Err(code);
                break;
            }
            Ok(left) => {
                rbuf.drain(..rbuf.len() - left);
                chunked = Ok(left);
            }
        }
    }
    assert_eq!(chunked_events, whole_events, "reads and the whole stream decode differently");
    assert_eq!(chunked, whole, "reads and the whole stream end differently");
});

//! The line splitter over a byte stream cut into reads, fed the way a
//! session feeds it (unconsumed bytes carried over): no panic, consumed
//! counts within the buffer, lines within the limit and without a newline,
//! little held back, and the same lines whether the bytes come in reads or
//! at once.
//!
//! Input: `max_line`, a count `n` (mod 8), `n` read sizes (cycled), then
//! the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_core::fuzzing::{split_reads, Line, LineReader};

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Text(Vec<u8>),
    TooLong,
}

/// Runs `reader` over `buf` as a session does; returns the bytes left over.
fn feed(reader: &mut LineReader, buf: &[u8], max: usize, out: &mut Vec<Out>) -> usize {
    let mut used = 0;
    while used < buf.len() {
        let rest = &buf[used..];
        let (n, line) = reader.next_line(rest, max);
        assert!(n <= rest.len(), "consumed {n} of {}", rest.len());
        match line {
            Some(Line::Text(t)) => {
                assert!(t.len() <= max, "a line of {} over {max}", t.len());
                assert!(!t.contains(&b'\n'));
                assert!(n > t.len());
                out.push(Out::Text(t.to_vec()));
            }
            Some(Line::TooLong) => out.push(Out::TooLong),
            None => {}
        }
        if n == 0 {
            break;
        }
        used += n;
    }
    buf.len() - used
}

fuzz_target!(|data: &[u8]| {
    let [max, n, rest @ ..] = data else { return };
    let max = usize::from(*max);
    let n = usize::from(n % 8).min(rest.len());
    let (reads, stream) = rest.split_at(n);

    let mut whole = Vec::new();
    let whole_left = feed(&mut LineReader::default(), stream, max, &mut whole);

    let mut chunked = Vec::new();
    let mut reader = LineReader::default();
    let mut rbuf: Vec<u8> = Vec::new();
    for read in split_reads(stream, reads) {
        rbuf.extend_from_slice(read);
        let left = feed(&mut reader, &rbuf, max, &mut chunked);
        // What is held back is an incomplete line of at most max + 1 bytes.
        assert!(left <= max + 1, "{left} bytes held over a limit of {max}");
        rbuf.drain(..rbuf.len() - left);
    }
    assert_eq!(chunked, whole, "reads and the whole stream split differently");
    assert_eq!(rbuf.len(), whole_left);
});

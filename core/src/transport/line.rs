//! Splitting the line port's byte stream into lines, with a bound.

/// One result of [`LineReader::next_line`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A complete line without its `\n` or `\r\n`.
    Text(&'a [u8]),
    /// A line longer than the limit; its bytes are dropped.
    TooLong,
}

/// State between reads: whether the rest of an oversized line is being skipped.
#[derive(Debug, Default)]
pub(crate) struct LineReader {
    skipping: bool,
}

impl LineReader {
    /// Takes the next line from the front of `buf`. Returns the bytes consumed
    /// and the line, or `(n, None)` when the rest is an incomplete line (of
    /// which `n` bytes may be dropped because the line is already too long).
    pub(crate) fn next_line<'a>(&mut self, buf: &'a [u8], max_line: usize) -> (usize, Option<Line<'a>>) {
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                if std::mem::take(&mut self.skipping) {
                    return (end + 1, None);
                }
                let line = &buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > max_line {
                    (end + 1, Some(Line::TooLong))
                } else {
                    (end + 1, Some(Line::Text(line)))
                }
            }
            // +1: room for the `\r` of a line of exactly `max_line` bytes.
            None if buf.len() > max_line + 1 => {
                let report = !self.skipping;
                self.skipping = true;
                (buf.len(), report.then_some(Line::TooLong))
            }
            None if self.skipping => (buf.len(), None),
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_with_either_ending() {
        let mut r = LineReader::default();
        let buf = b"hi\r\nyou\nrest";
        assert_eq!(r.next_line(buf, 10), (4, Some(Line::Text(b"hi"))));
        assert_eq!(r.next_line(&buf[4..], 10), (4, Some(Line::Text(b"you"))));
        assert_eq!(r.next_line(&buf[8..], 10), (0, None));
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_is_dropped_once() {
        let mut r = LineReader::default();
        assert_eq!(r.next_line(b"abcd\r\n", 4), (6, Some(Line::Text(b"abcd"))));
        assert_eq!(r.next_line(b"abcde\n", 4), (6, Some(Line::TooLong)));
        // An unterminated long line is reported once and skipped to its end.
        assert_eq!(r.next_line(b"abcdefgh", 4), (8, Some(Line::TooLong)));
        assert_eq!(r.next_line(b"ijkl", 4), (4, None));
        assert_eq!(r.next_line(b"mn\nok\n", 4), (3, None));
        assert_eq!(r.next_line(b"ok\n", 4), (3, Some(Line::Text(b"ok"))));
    }
}

//! Splitting the line port's byte stream into lines, with a bound; and
//! rendering text from users so that a terminal shows it rather than obeys it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` as one line a terminal shows as written: line breaks (`\n`,
/// `\r\n`) become spaces, as ever; every other control character is shown
/// rather than sent raw, so that nobody can move another user's cursor,
/// erase their screen or retitle their window (`ESC [ 2 K`, `\r`...).
/// C0 and DEL in caret notation (`^[` for ESC, `^M` for a lone CR, `^?`),
/// C1 (U+0080 to U+009F: `CSI` and `NEL` among them) and the Unicode line
/// and paragraph separators as `\u009b`, `\u2028`. Tab stays. The stored
/// text, and what WebSocket clients get, is unchanged.
pub(crate) fn visible_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => out.push(' '),
            '\r' if chars.peek() == Some(&'\n') => {}
            c if (c as u32) < 0x20 && c != '\t' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\u{7f}' => out.push_str("^?"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

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
    fn control_characters_are_shown_not_sent() {
        assert!(matches!(visible_line("plain text, tab\there, ünïcödé"), Cow::Borrowed(_)));
        assert_eq!(visible_line("\u{1b}[2K\rfake"), "^[[2K^Mfake");
        assert_eq!(visible_line("two\nlines\r\nthree"), "two lines three");
        assert_eq!(visible_line("\u{0}\u{7}\u{8}\u{1f}\u{7f}"), "^@^G^H^_^?");
        assert_eq!(visible_line("\u{9b}31m\u{85}\u{80}\u{9f}"), "\\u009b31m\\u0085\\u0080\\u009f");
        assert_eq!(visible_line("a\u{2028}b\u{2029}c"), "a\\u2028b\\u2029c");
        assert_eq!(visible_line("\u{a0}\u{200b}"), "\u{a0}\u{200b}", "printable, if odd, is kept");
        // Every C0 but tab and the line breaks, and C1, come out printable.
        for c in (0u32..0x20).chain([0x7f]).chain(0x80..0xa0).filter_map(char::from_u32) {
            let shown = visible_line(&c.to_string()).into_owned();
            assert!(shown.chars().all(|s| s == '\t' || s == ' ' || !s.is_control()), "{c:?} -> {shown:?}");
        }
    }

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

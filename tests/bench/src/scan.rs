//! Reading the few fields the load generator needs from a server frame in
//! one pass over its bytes, without building a JSON value: a full parse
//! of every delivery would cost the generator more than the server spends
//! sending it. Only the top level of the object is looked at; nested
//! values are skipped. Strings come back raw (escapes left in): the
//! generator's own texts and refs never need escaping.

/// The top-level fields of one frame that the scenarios read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: &'a [u8],
    pub seq: Option<u64>,
    pub text: Option<&'a [u8]>,
    pub reference: Option<&'a [u8]>,
    pub code: Option<&'a [u8]>,
    pub from: Option<&'a [u8]>,
    pub token: Option<&'a [u8]>,
}

/// Scans `json`, an object, for [`Fields`]. Malformed input gives whatever
/// was read before the fault.
pub fn scan(json: &[u8]) -> Fields<'_> {
    let mut f = Fields::default();
    let mut i = match json.iter().position(|&b| b == b'{') {
        Some(p) => p + 1,
        None => return f,
    };
    loop {
        // A key, or the end of the object.
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b'"') => {}
            _ => return f,
        }
        let Some((key, after)) = string(json, i) else { return f };
        i = skip_ws(json, after);
        if json.get(i) != Some(&b':') {
            return f;
        }
        i = skip_ws(json, i + 1);
        match json.get(i) {
            Some(b'"') => {
                let Some((value, after)) = string(json, i) else { return f };
                match key {
                    b"type" => f.kind = value,
                    b"text" => f.text = Some(value),
                    b"ref" => f.reference = Some(value),
                    b"code" => f.code = Some(value),
                    b"from" => f.from = Some(value),
                    b"token" => f.token = Some(value),
                    _ => {}
                }
                i = after;
            }
            Some(b'0'..=b'9') => {
                let end = i + json[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                if key == b"seq" {
                    f.seq = number(&json[i..end]);
                }
                i = end;
                // A fraction or exponent: skip the rest of the number.
                i += json[i..].iter().take_while(|b| !matches!(b, b',' | b'}')).count();
            }
            Some(_) => i = skip_value(json, i),
            None => return f,
        }
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return f,
        }
    }
}

/// The string starting at the quote `json[at]`: its raw contents and the
/// index after its closing quote.
fn string(json: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let start = at + 1;
    let mut i = start;
    loop {
        i += json.get(i..)?.iter().position(|&b| b == b'"' || b == b'\\')?;
        if json[i] == b'\\' {
            i += 2;
        } else {
            return Some((&json[start..i], i + 1));
        }
    }
}

/// Skips a value that is not a string or a plain number (an object, an
/// array, `true`, `null`, a negative number), nesting and strings included.
fn skip_value(json: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => match string(json, i) {
                Some((_, after)) => {
                    i = after;
                    continue;
                }
                None => return json.len(),
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return i,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// A decimal number of ASCII digits (no sign); `None` if empty, not digits
/// or too large.
pub fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    Some(v)
}

/// The first `N` space-separated decimal numbers of `text`.
pub fn numbers<const N: usize>(text: &[u8]) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut parts = text.split(|&b| b == b' ');
    for slot in &mut out {
        *slot = number(parts.next()?)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_any_order_with_nesting_skipped() {
        let frame =
            br#"{"from":"b1x2","id":"c-1","room":"r0","seq":42,"text":"0 1 2 3","ts":1763836800123,"type":"message"}"#;
        let f = scan(frame);
        assert_eq!(f.kind, b"message");
        assert_eq!(f.seq, Some(42));
        assert_eq!(f.text, Some(&b"0 1 2 3"[..]));
        assert_eq!(f.from, Some(&b"b1x2"[..]));
        let welcome = br#"{"guest":false,"heartbeat_s":5,"rooms":[{"room":"a","seq":9,"read":0}],"session":"s","type":"welcome","user":"u"}"#;
        let f = scan(welcome);
        assert_eq!(f.kind, b"welcome");
        // The nested room's seq is not the frame's.
        assert_eq!(f.seq, None);
    }

    #[test]
    fn escapes_and_odd_values_do_not_derail() {
        let f = scan(
            br#"{ "text" : "a \"q\" b\\", "x": -1.5e3, "y": null, "z": {"seq": 1}, "seq": 7, "type":"ok", "ref":"12"}"#,
        );
        assert_eq!(f.text, Some(&br#"a \"q\" b\\"#[..]));
        assert_eq!(f.seq, Some(7));
        assert_eq!(f.kind, b"ok");
        assert_eq!(f.reference, Some(&b"12"[..]));
        let f = scan(br#"{"code":"rate_limited","message":"slow, down","type":"error"}"#);
        assert_eq!((f.kind, f.code), (&b"error"[..], Some(&b"rate_limited"[..])));
    }

    #[test]
    fn truncated_input_gives_what_was_read() {
        let f = scan(br#"{"type":"message","seq":3,"text":"unterminated"#);
        assert_eq!((f.kind, f.seq, f.text), (&b"message"[..], Some(3), None));
        assert_eq!(scan(b"not json"), Fields::default());
    }

    #[test]
    fn numbers_in_texts() {
        assert_eq!(numbers::<3>(b"1 22 333 rest"), Some([1, 22, 333]));
        assert_eq!(numbers::<3>(b"1 22"), None);
        assert_eq!(numbers::<1>(b"x"), None);
        assert_eq!(number(b"18446744073709551615"), None);
    }
}

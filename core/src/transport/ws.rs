//! WebSocket framing (RFC 6455) on tungstenite's protocol types: the server
//! side of the handshake, frame decoding with reassembly of fragmented
//! messages, and encoding of server frames.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Why the peer's frames end the connection. Each maps to one close code in
/// [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame or message larger than {limit} bytes")]
    TooBig { limit: usize },
    #[error("invalid UTF-8 in a text message or close reason")]
    BadUtf8,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

impl FrameError {
    pub(crate) fn close_code(self) -> CloseCode {
        match self {
            FrameError::TooBig { .. } => CloseCode::Size,
            FrameError::BadUtf8 => CloseCode::Invalid,
            FrameError::Protocol(_) => CloseCode::Protocol,
        }
    }
}

/// A complete message or control frame from the peer. Public only through
/// the `fuzzing` entry points (this module is private).
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A text message, UTF-8 checked unless the decoder is lenient.
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The peer started the closing handshake. `None`: no status code.
    Close(Option<u16>),
}

/// Reassembly state of one connection's incoming frames.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// A fragmented message in progress: whether it is text, and its bytes.
    /// Boxed, like `scan`: both are rare, and every idle WebSocket session
    /// carries a `Decoder`.
    partial: Option<Box<(bool, Vec<u8>)>>,
    /// Hand up text messages with invalid UTF-8 instead of failing the
    /// connection: PROTOCOL.md answers them with a `bad_json` error on `/ws`
    /// and keeps the connection, while `/echo` (strict, the default) keeps
    /// RFC 6455 §8.1's close 1007 for conformance suites.
    lenient_utf8: bool,
    /// A strict text frame whose payload is still arriving: how many of its
    /// payload bytes were checked, and the unfinished character at their end.
    scan: Option<Box<(usize, Vec<u8>)>>,
}

impl Decoder {
    /// A decoder that hands up text with invalid UTF-8 (see `lenient_utf8`).
    pub(crate) fn lenient_utf8() -> Decoder {
        Decoder { lenient_utf8: true, ..Decoder::default() }
    }

    /// Bytes held for a message in progress.
    pub(crate) fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.1.len())
    }

    /// Decodes at most one frame from the front of `buf`. Returns how many
    /// bytes it consumed and the event the frame completed, if any;
    /// `Ok((0, None))` means more bytes are needed.
    pub(crate) fn decode(&mut self, buf: &[u8], max_message: usize) -> Result<(usize, Option<WsEvent>), FrameError> {
        let mut cursor = Cursor::new(buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((0, None)),
            Err(_) => return Err(FrameError::Protocol("reserved opcode")),
        };
        let head = cursor.position() as usize;
        let mask = check_header(&header, len, max_message)?;
        let len = len as usize;
        if buf.len() < head + len {
            // Fail a message that will be too big before its last fragment
            // arrives. Only a continuation adds to it: a control frame
            // between fragments does not (fuzzing).
            let continuation = matches!(header.opcode, OpCode::Data(Data::Continue));
            if continuation && self.buffered() + len > max_message {
                return Err(FrameError::TooBig { limit: max_message });
            }
            self.scan_utf8(header.opcode, &buf[head..], mask)?;
            return Ok((0, None));
        }
        self.scan = None;
        let mut payload = buf[head..head + len].to_vec();
        unmask(&mut payload, mask);
        Ok((head + len, self.frame_event(&header, payload, max_message)?))
    }

    /// The event a whole frame completes, if any.
    fn frame_event(
        &mut self,
        header: &FrameHeader,
        payload: Vec<u8>,
        max_message: usize,
    ) -> Result<Option<WsEvent>, FrameError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Some(WsEvent::Ping(payload))),
            OpCode::Control(Control::Pong) => Ok(Some(WsEvent::Pong)),
            OpCode::Control(Control::Close) => Ok(Some(WsEvent::Close(parse_close(&payload)?))),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(FrameError::Protocol("reserved opcode"))
            }
            OpCode::Data(Data::Continue) => self.continue_message(header.is_final, payload, max_message),
            OpCode::Data(kind) => self.start_message(kind == Data::Text, header.is_final, payload),
        }
    }

    /// A continuation frame: adds to the message in progress.
    fn continue_message(
        &mut self,
        is_final: bool,
        payload: Vec<u8>,
        max_message: usize,
    ) -> Result<Option<WsEvent>, FrameError> {
        let Some((text, mut data)) = self.partial.take().map(|p| *p) else {
            return Err(FrameError::Protocol("continuation without a message"));
        };
        if data.len() + payload.len() > max_message {
            return Err(FrameError::TooBig { limit: max_message });
        }
        // The bytes before are checked already: check from their
        // unfinished character on, not the whole message again.
        let unchecked = data.len() - unfinished_char(&data).len();
        data.extend_from_slice(&payload);
        let strict = text && !self.lenient_utf8;
        if is_final {
            Ok(Some(finish(text, strict, data)?))
        } else {
            check_utf8_prefix(strict, &data[unchecked..])?;
            self.partial = Some(Box::new((text, data)));
            Ok(None)
        }
    }

    /// The first frame of a text or binary message.
    fn start_message(&mut self, text: bool, is_final: bool, payload: Vec<u8>) -> Result<Option<WsEvent>, FrameError> {
        if self.partial.is_some() {
            return Err(FrameError::Protocol("new message inside a fragmented one"));
        }
        let strict = text && !self.lenient_utf8;
        if is_final {
            Ok(Some(finish(text, strict, payload)?))
        } else {
            check_utf8_prefix(strict, &payload)?;
            self.partial = Some(Box::new((text, payload)));
            Ok(None)
        }
    }

    /// Checks the newly arrived part of a strict text frame's payload, so
    /// that invalid UTF-8 fails the connection as soon as it arrives rather
    /// than when the frame is complete (Autobahn 6.4.3 and 6.4.4).
    fn scan_utf8(&mut self, opcode: OpCode, arrived: &[u8], mask: [u8; 4]) -> Result<(), FrameError> {
        let text = match opcode {
            // Not inside a fragmented message: that fails as a protocol
            // error once the frame is whole, whatever its bytes (fuzzing).
            OpCode::Data(Data::Text) => self.partial.is_none(),
            OpCode::Data(Data::Continue) => self.partial.as_ref().is_some_and(|p| p.0),
            _ => false,
        };
        if !text || self.lenient_utf8 {
            return Ok(());
        }
        let (checked, mut bytes) = match self.scan.take() {
            Some(scan) => *scan,
            // A continuation goes on from its message's unfinished character.
            None => (0, self.partial.as_ref().map_or(Vec::new(), |p| unfinished_char(&p.1).to_vec())),
        };
        let new = arrived.get(checked..).unwrap_or_default();
        let start = bytes.len();
        bytes.extend_from_slice(new);
        unmask_from(&mut bytes[start..], mask, checked);
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(FrameError::BadUtf8),
        };
        bytes.drain(..valid);
        self.scan = Some(Box::new((checked + new.len(), bytes)));
        Ok(())
    }
}

/// The rules a frame's header must meet whatever its payload; returns the
/// client's mask.
fn check_header(header: &FrameHeader, len: u64, max_message: usize) -> Result<[u8; 4], FrameError> {
    // RFC 6455 §5.5: "All control frames MUST have a payload length of 125
    // bytes or less and MUST NOT be fragmented."
    let control = matches!(header.opcode, OpCode::Control(_));
    if control && (len > 125 || !header.is_final) {
        return Err(FrameError::Protocol("fragmented or oversized control frame"));
    }
    if len > max_message as u64 {
        return Err(FrameError::TooBig { limit: max_message });
    }
    // §5.2: "If a nonzero value is received and none of the negotiated
    // extensions defines the meaning of such a nonzero value, the receiving
    // endpoint MUST _Fail the WebSocket Connection_."
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    // §5.1: "The server MUST close the connection upon receiving a frame
    // that is not masked."
    header.mask.ok_or(FrameError::Protocol("unmasked client frame"))
}

/// The unfinished character at the end of `data`, which is valid UTF-8 up
/// to it.
fn unfinished_char(data: &[u8]) -> &[u8] {
    let from = data.len().saturating_sub(3);
    match (from..data.len()).rev().find(|&i| data[i] & 0xc0 != 0x80) {
        Some(i) if std::str::from_utf8(&data[i..]).is_err() => &data[i..],
        _ => &[],
    }
}

/// `strict`: fail a text message with invalid UTF-8 rather than hand it up.
fn finish(text: bool, strict: bool, data: Vec<u8>) -> Result<WsEvent, FrameError> {
    if text {
        if strict {
            std::str::from_utf8(&data).map_err(|_| FrameError::BadUtf8)?;
        }
        Ok(WsEvent::Text(data))
    } else {
        Ok(WsEvent::Binary(data))
    }
}

/// Fails a fragmented text message as soon as its bytes so far cannot be the
/// start of valid UTF-8, rather than at its last fragment (Autobahn 6.4).
fn check_utf8_prefix(text: bool, data: &[u8]) -> Result<(), FrameError> {
    if !text {
        return Ok(());
    }
    match std::str::from_utf8(data) {
        Ok(_) => Ok(()),
        Err(e) if e.error_len().is_none() => Ok(()),
        Err(_) => Err(FrameError::BadUtf8),
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::BadUtf8)?;
            Ok(Some(code))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    unmask_from(payload, mask, 0);
}

/// Unmasks a part of a payload that starts `offset` bytes into it.
fn unmask_from(part: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in part.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// One unmasked, unfragmented server frame (RFC 6455 §5.1: a server MUST NOT
/// mask), so the same bytes suit every recipient.
pub(crate) fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Data(Data::Text), payload)
}

pub(crate) fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let mut payload = u16::from(code).to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    encode_frame(OpCode::Control(Control::Close), &payload)
}

/// The `101 Switching Protocols` response for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_response(key: &str) -> Bytes {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    pub(crate) fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let header = FrameHeader { opcode, is_final: fin, mask: Some(mask), ..FrameHeader::default() };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const CONT: OpCode = OpCode::Data(Data::Continue);

    fn decode_all(d: &mut Decoder, mut buf: &[u8]) -> Result<Vec<WsEvent>, FrameError> {
        let mut out = Vec::new();
        loop {
            let (n, ev) = d.decode(buf, 1024)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend(ev);
            buf = &buf[n..];
        }
    }

    #[test]
    fn decodes_a_text_frame_split_at_every_byte() {
        let frame = client_frame(TEXT, true, b"{\"type\":\"ping\"}");
        for cut in 0..frame.len() {
            let mut d = Decoder::default();
            assert_eq!(d.decode(&frame[..cut], 1024).unwrap(), (0, None));
        }
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(&frame, 1024).unwrap(),
            (frame.len(), Some(WsEvent::Text(b"{\"type\":\"ping\"}".to_vec())))
        );
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut buf = client_frame(TEXT, false, b"hel");
        buf.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        buf.extend(client_frame(CONT, true, b"lo"));
        let mut d = Decoder::default();
        assert_eq!(
            decode_all(&mut d, &buf).unwrap(),
            vec![WsEvent::Ping(b"p".to_vec()), WsEvent::Text(b"hello".to_vec())]
        );
    }

    #[test]
    fn enforces_rfc_6455_rules() {
        let mut d = Decoder::default();
        let unmasked = encode_frame(TEXT, b"x");
        assert_eq!(d.decode(&unmasked, 1024), Err(FrameError::Protocol("unmasked client frame")));
        let mut d = Decoder::default();
        assert!(matches!(d.decode(&client_frame(CONT, true, b"x"), 1024), Err(FrameError::Protocol(_))));
        let mut d = Decoder::default();
        let ping = client_frame(OpCode::Control(Control::Ping), false, b"x");
        assert!(matches!(d.decode(&ping, 1024), Err(FrameError::Protocol(_))));
        let mut d = Decoder::default();
        let mut rsv = client_frame(TEXT, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(d.decode(&rsv, 1024), Err(FrameError::Protocol(_))));
        let mut d = Decoder::default();
        let mut reserved = client_frame(TEXT, true, b"x");
        reserved[0] = (reserved[0] & 0xf0) | 0x3;
        assert!(matches!(d.decode(&reserved, 1024), Err(FrameError::Protocol(_))));
        let mut d = Decoder::default();
        let mut two = client_frame(TEXT, false, b"a");
        two.extend(client_frame(TEXT, true, b"b"));
        assert!(matches!(decode_all(&mut d, &two), Err(FrameError::Protocol(_))));
    }

    #[test]
    fn size_limit_applies_to_frames_and_messages() {
        let mut d = Decoder::default();
        assert!(d.decode(&client_frame(TEXT, true, &[b'a'; 1024]), 1024).unwrap().1.is_some());
        assert_eq!(d.decode(&client_frame(TEXT, true, &[b'a'; 1025]), 1024), Err(FrameError::TooBig { limit: 1024 }));
        // Only the header of an oversized frame has arrived: fail at once.
        let head = &client_frame(TEXT, true, &[b'a'; 5000])[..8];
        assert_eq!(Decoder::default().decode(head, 1024), Err(FrameError::TooBig { limit: 1024 }));
        let mut buf = client_frame(TEXT, false, &[b'a'; 600]);
        buf.extend(client_frame(CONT, true, &[b'a'; 600]));
        assert_eq!(decode_all(&mut Decoder::default(), &buf), Err(FrameError::TooBig { limit: 1024 }));
    }

    #[test]
    fn checks_utf8_early_and_at_the_end() {
        let bad = client_frame(TEXT, true, &[0xff, 0xfe]);
        assert_eq!(Decoder::default().decode(&bad, 1024), Err(FrameError::BadUtf8));
        // "€" split across fragments is fine.
        let mut buf = client_frame(TEXT, false, &[0xe2, 0x82]);
        buf.extend(client_frame(CONT, true, &[0xac]));
        assert_eq!(decode_all(&mut Decoder::default(), &buf).unwrap(), vec![WsEvent::Text("€".as_bytes().to_vec())]);
        let early = client_frame(TEXT, false, &[b'a', 0xc0]);
        assert_eq!(Decoder::default().decode(&early, 1024), Err(FrameError::BadUtf8));
    }

    #[test]
    fn invalid_utf8_fails_before_the_rest_of_its_frame_arrives() {
        // Autobahn 6.4.3: "κόσμε", then a code point past U+10FFFF, then the
        // rest of the frame, each part a while after the one before.
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend([0xf4, 0x90, 0x80, 0x80]);
        payload.extend(b"edited");
        let frame = client_frame(TEXT, true, &payload);
        let bad_at = frame.len() - 6 - 4;
        let mut d = Decoder::default();
        for end in 0..=bad_at + 1 {
            assert_eq!(d.decode(&frame[..end], 1024), Ok((0, None)), "{end} bytes");
        }
        // 6.4.4: the second byte of the sequence already makes it invalid.
        assert_eq!(d.decode(&frame[..bad_at + 2], 1024), Err(FrameError::BadUtf8));
        // In a continuation, from a character its message left unfinished.
        let mut d = Decoder::default();
        let first = client_frame(TEXT, false, &[b'a', 0xe2]);
        assert_eq!(d.decode(&first, 1024), Ok((first.len(), None)));
        let cont = client_frame(CONT, true, &[0x82, 0xac, b'b', 0xff, b'c']);
        assert_eq!(d.decode(&cont[..cont.len() - 3], 1024), Ok((0, None)));
        assert_eq!(d.decode(&cont[..cont.len() - 1], 1024), Err(FrameError::BadUtf8));
        // Valid text arriving a byte at a time is not failed, and a lenient
        // decoder waits for the whole frame as before.
        let frame = client_frame(TEXT, true, "a€b𝄞c".as_bytes());
        let mut d = Decoder::default();
        for end in 0..frame.len() {
            assert_eq!(d.decode(&frame[..end], 1024), Ok((0, None)));
        }
        assert_eq!(d.decode(&frame, 1024).unwrap().1, Some(WsEvent::Text("a€b𝄞c".as_bytes().to_vec())));
        let bad = client_frame(TEXT, true, &[0xff, b'a', b'b']);
        assert_eq!(Decoder::lenient_utf8().decode(&bad[..bad.len() - 1], 1024), Ok((0, None)));
    }

    #[test]
    fn a_control_frame_between_fragments_does_not_count_toward_the_limit() {
        // Found by fuzz/fuzz_targets/ws_frames.rs: with 3 of at most 4 bytes
        // of a message held, a ping or close of 2 bytes was failed as too big
        // while it arrived, but passed when it arrived whole.
        let mut buf = client_frame(TEXT, false, b"abc");
        let first = buf.len();
        buf.extend(client_frame(OpCode::Control(Control::Ping), true, b"pi"));
        let mut d = Decoder::default();
        assert_eq!(d.decode(&buf, 4), Ok((first, None)));
        for end in first..buf.len() {
            assert_eq!(d.decode(&buf[first..end], 4), Ok((0, None)), "{end} bytes");
        }
        assert_eq!(d.decode(&buf[first..], 4), Ok((buf.len() - first, Some(WsEvent::Ping(b"pi".to_vec())))));
        let close = client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xe8]);
        assert_eq!(d.decode(&close[..close.len() - 1], 4), Ok((0, None)));
        // A continuation that will not fit fails at once, as before.
        let cont = client_frame(CONT, true, b"de");
        assert_eq!(d.decode(&cont[..cont.len() - 1], 4), Err(FrameError::TooBig { limit: 4 }));
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_fails_the_same_whole_or_in_parts() {
        // Found by fuzz/fuzz_targets/ws_frames.rs: a text frame with invalid
        // UTF-8 inside a fragmented message was failed with 1007 while it
        // arrived, but with 1002 when it arrived whole.
        let mut buf = client_frame(TEXT, false, b"hel");
        let first = buf.len();
        buf.extend(client_frame(TEXT, true, &[b'p', 0xb4, 0xd4, b'j']));
        let mut d = Decoder::default();
        assert_eq!(d.decode(&buf, 1024), Ok((first, None)));
        for end in first..buf.len() {
            assert_eq!(d.decode(&buf[first..end], 1024), Ok((0, None)), "{end} bytes");
        }
        assert_eq!(d.decode(&buf[first..], 1024), Err(FrameError::Protocol("new message inside a fragmented one")));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the clock times this test, not the decoder
    fn many_small_fragments_are_checked_in_linear_time() {
        // Autobahn 9.3.1 sends 4 MiB of text in 64-byte fragments; checking
        // the whole message again at each fragment took seconds there, and
        // takes half a minute for these 2 MB.
        let message = "aé€𝄞".repeat(200_000); // 2 MB; 64-byte fragments cut characters
        let mut buf = Vec::new();
        let mut chunks = message.as_bytes().chunks(64).enumerate().peekable();
        while let Some((i, chunk)) = chunks.next() {
            buf.extend(client_frame(if i == 0 { TEXT } else { CONT }, chunks.peek().is_none(), chunk));
        }
        let start = std::time::Instant::now();
        let (mut at, mut d, mut got) = (0, Decoder::default(), None);
        while got.is_none() {
            let (n, ev) = d.decode(&buf[at..], message.len()).unwrap();
            at += n;
            got = ev;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{:?}", start.elapsed());
        assert_eq!(got, Some(WsEvent::Text(message.into_bytes())));
    }

    #[test]
    fn a_lenient_decoder_hands_up_invalid_utf8_whole() {
        let bad = client_frame(TEXT, true, &[0xff, 0xfe]);
        assert_eq!(Decoder::lenient_utf8().decode(&bad, 1024).unwrap().1, Some(WsEvent::Text(vec![0xff, 0xfe])));
        let mut buf = client_frame(TEXT, false, &[b'a', 0xc0]);
        buf.extend(client_frame(CONT, true, b"b"));
        assert_eq!(
            decode_all(&mut Decoder::lenient_utf8(), &buf).unwrap(),
            vec![WsEvent::Text(vec![b'a', 0xc0, b'b'])]
        );
        // A close reason is still checked: the connection ends either way.
        let close = client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xe8, 0xff]);
        assert_eq!(Decoder::lenient_utf8().decode(&close, 1024), Err(FrameError::BadUtf8));
    }

    #[test]
    fn close_payloads_are_validated() {
        let close = |p: &[u8]| Decoder::default().decode(&client_frame(OpCode::Control(Control::Close), true, p), 1024);
        assert_eq!(close(b"").unwrap().1, Some(WsEvent::Close(None)));
        assert_eq!(close(&[0x03, 0xe8]).unwrap().1, Some(WsEvent::Close(Some(1000))));
        assert!(matches!(close(&[0x03]), Err(FrameError::Protocol(_))));
        assert!(matches!(close(&[0x03, 0xed]), Err(FrameError::Protocol(_))), "1005 may not be sent");
        assert_eq!(close(&[0x03, 0xe8, 0xff]), Err(FrameError::BadUtf8));
    }

    #[test]
    fn server_frames_are_unmasked_and_sized() {
        let f = text_frame(&[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let c = close_frame(CloseCode::Restart, "restart");
        assert_eq!(&c[..4], &[0x88, 9, 0x03, 0xf4]);
        assert!(String::from_utf8_lossy(&accept_response("dGhlIHNhbXBsZSBub25jZQ=="))
            .contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }
}

//! Offline delivery: a registered session's unacknowledged private messages,
//! read from storage in pages after `welcome`.
//!
//! A page costs storage the same whatever the inbox's size, so a user with a
//! huge inbox never holds the store's queue for long: every page is one small
//! request, and other users' requests queue between them. A session gets at
//! most [`ROUND_MESSAGES`] messages (or half its outbound bound in bytes) in
//! one go; the rest waits for its next `ack` (a line session acknowledges
//! each message as it is written), so a client that reads slowly is never
//! made a slow consumer by its own inbox.
//!
//! While a session's inbox is being read or has more to read, live private
//! messages to it are not sent live: they are in the inbox too, after what
//! was read, and come with a later page, so each conversation arrives in
//! `seq` order.

use super::pending::{Pending, PendingKind, Round};
use super::state::InboxRead;
use super::Hub;
use crate::ids::SessionId;
use crate::render::event::private_message;
use crate::store::{InboxMessage, StoreError, StoreOp, StoreValue};
use crate::time::Now;

/// Messages per storage read.
const PAGE: u32 = 200;

/// Most messages sent in one round, before waiting for an `ack`.
const ROUND_MESSAGES: u32 = 1_000;

impl Hub {
    /// Starts reading `sid`'s inbox after `cursor`, with a new round.
    pub(super) fn read_inbox(&mut self, now: Now, sid: SessionId, cursor: u64) {
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        let Some(user) = info.user().map(str::to_owned) else { return };
        info.inbox = InboxRead::Reading;
        self.request_page(now, sid, user, cursor, Round::default());
    }

    fn request_page(&mut self, now: Now, sid: SessionId, user: String, cursor: u64, round: Round) {
        let op = StoreOp::Inbox { user, after: cursor, limit: PAGE };
        self.store(now, op, Pending::untagged(sid, PendingKind::Inbox { cursor, round }));
    }

    /// A session acknowledged something: a paused inbox goes on.
    pub(super) fn resume_inbox(&mut self, now: Now, sid: SessionId) {
        if let Some(InboxRead::Paused { cursor }) = self.state.sessions.get(&sid).map(|i| i.inbox) {
            self.read_inbox(now, sid, cursor);
        }
    }

    /// Sends `sid`'s held echoes now: no page will take them in.
    pub(super) fn send_held_echoes(&mut self, sid: SessionId) {
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        let held = info.extra.as_mut().map(|e| std::mem::take(&mut e.held_echoes)).unwrap_or_default();
        for echo in held {
            if !self.private_fresh(sid, &echo.with, echo.message.seq) {
                continue;
            }
            let (_, event) = private_message(&echo.message, None);
            self.deliver(&[sid], &event);
        }
    }

    pub(super) fn complete_inbox(
        &mut self,
        now: Now,
        sid: SessionId,
        cursor: u64,
        mut round: Round,
        result: Result<StoreValue, StoreError>,
    ) {
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        let Some(user) = info.user().map(str::to_owned) else { return };
        let read = matches!(result, Ok(StoreValue::Inbox { .. }));
        let (messages, next) = match result {
            Ok(StoreValue::Inbox { messages, cursor }) => (messages, cursor),
            // Nothing was acknowledged, so the next session gets them; live
            // messages flow again meanwhile.
            _ => (Vec::new(), cursor),
        };
        let full_page = messages.len() == PAGE as usize;
        let last_page = !full_page || next == cursor;
        let mut none = Vec::new();
        let held = info.extra.as_mut().map_or(&mut none, |e| &mut e.held_echoes);
        let messages = merge_held_echoes(held, messages, last_page);
        let budget = self.config.max_queue / 2;
        for InboxMessage { with, message } in &messages {
            if !self.private_fresh(sid, with, message.seq) {
                continue;
            }
            round.sent += 1;
            round.bytes += message.text.len() + message.from.len() + 128;
            let (to_recipient, echo) = private_message(message, Some(&user));
            let event = if message.sender == user { echo } else { to_recipient };
            self.deliver(&[sid], &event);
        }
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        let missed = info.extra.as_mut().is_some_and(|e| std::mem::take(&mut e.inbox_missed));
        if last_page && read && missed {
            // See `SessionExtra::inbox_missed`: what that page already sent
            // is not sent twice (`Hub::private_fresh`).
            self.request_page(now, sid, user, next, round);
        } else if last_page {
            info.inbox = InboxRead::Done;
        } else if round.sent >= ROUND_MESSAGES || round.bytes >= budget {
            info.inbox = InboxRead::Paused { cursor: next };
            // Echoes go live from here: holding them until an `ack` that
            // may never come would lose them for this session.
            self.send_held_echoes(sid);
        } else {
            self.request_page(now, sid, user, next, round);
        }
    }
}

/// Puts the user's own messages that completed while a page was read (see
/// `SessionExtra::held_echoes`) in their places among `page`: before the
/// first message of the same conversation with a greater `seq`. An echo with
/// no such message stays held for a later page, unless this is the last.
fn merge_held_echoes(held: &mut Vec<InboxMessage>, mut page: Vec<InboxMessage>, last_page: bool) -> Vec<InboxMessage> {
    for echo in std::mem::take(held) {
        match page.iter().position(|m| m.with == echo.with && m.message.seq > echo.message.seq) {
            Some(at) => page.insert(at, echo),
            None if last_page => page.push(echo),
            None => held.push(echo),
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredMessage;

    fn m(with: &str, seq: u64) -> InboxMessage {
        InboxMessage {
            with: with.into(),
            message: StoredMessage {
                seq,
                from: "x".into(),
                to: None,
                sender: "x".into(),
                text: String::new(),
                client_id: None,
                ts: 0,
            },
        }
    }

    fn order(v: &[InboxMessage]) -> Vec<(&str, u64)> {
        v.iter().map(|m| (m.with.as_str(), m.message.seq)).collect()
    }

    #[test]
    fn echoes_go_before_the_next_message_of_their_conversation() {
        let mut held = vec![m("b", 2), m("c", 9)];
        let page = merge_held_echoes(&mut held, vec![m("b", 1), m("c", 1), m("b", 3)], false);
        assert_eq!(order(&page), [("b", 1), ("c", 1), ("b", 2), ("b", 3)]);
        assert_eq!(order(&held), [("c", 9)], "no later message of c in this page: it waits");
        let page = merge_held_echoes(&mut held, vec![m("b", 4)], true);
        assert_eq!(order(&page), [("b", 4), ("c", 9)]);
        assert!(held.is_empty());
    }
}

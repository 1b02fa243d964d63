//! Guests: who they are, and how one comes back.
//!
//! Every guest `welcome` makes a new principal, `name#incarnation.n`, and
//! everything stored for a guest (its messages' client ids, its
//! conversations) hangs on that principal, never on the bare name: a later
//! guest who takes the same name is someone else and inherits nothing.
//!
//! The `welcome` of a WebSocket guest carries a `resume` secret. A `hello`
//! with the same name and that secret proves it is the same guest (a page
//! reload, a dropped connection) and gets the same principal back: a resend
//! with the same client id is recognised, and its conversations go on. The
//! secret is an HMAC of the principal under a key the server draws at start,
//! so it cannot be guessed or made for another name, and it expires with the
//! server process (a restart makes every guest new).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::state::{Name, Online};
use super::Hub;
use crate::ids::SessionId;
use crate::link::{Tag, ToShardInner};
use crate::render::{Failure, Reply, RoomMark};
use crate::time::Now;

/// Bytes of the MAC kept in a `resume` secret: 128 bits.
const MAC_BYTES: usize = 16;

impl Hub {
    /// A guest whose name is free: welcomed, unless it opened too many
    /// sessions lately. `key` is its principal when it proved to be an
    /// earlier guest.
    pub(super) fn open_guest(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        peer: IpAddr,
        name: String,
        key: Option<String>,
    ) {
        match self.limits.open_limited(now.unix_ms, peer, Some(&name)) {
            Some(retry) => self.refuse_open(sid, tag, retry),
            None => {
                self.limits.opened(now.unix_ms, peer, &name);
                self.welcome_guest(sid, tag, name, key);
            }
        }
    }

    fn welcome_guest(&mut self, sid: SessionId, tag: Tag, name: String, key: Option<String>) {
        let key = key.unwrap_or_else(|| {
            self.guests += 1;
            format!("{name}#{}.{}", self.incarnation, self.guests)
        });
        let resume = self.resume_secret(&key);
        match self.state.online.get_mut(name.as_str()) {
            Some(_) => {
                self.state.add_session(&name, sid);
            }
            None => {
                self.announce_online(&name, &key, true);
                // A copy at its size: `format!` leaves up to twice the
                // length spare, and the key stays as long as the guest.
                let online = Online {
                    key: Name::from(key.as_str()),
                    guest: true,
                    sessions: smallvec::smallvec![sid],
                    gone: None,
                };
                self.state.set_online(name.clone(), online);
            }
        }
        let line = self.set_welcomed(sid, &name, None);
        let rooms = self
            .state
            .memberships
            .get(name.as_str())
            .map(|rooms| {
                let mark = |room: &Name| RoomMark { room: room.to_string(), seq: self.state.room_seq(room), read: 0 };
                rooms.iter().map(mark).collect()
            })
            .unwrap_or_default();
        let welcome = Reply::Welcome {
            user: name,
            guest: true,
            session: sid.get().to_string(),
            heartbeat_s: self.config.heartbeat.as_secs(),
            rooms,
            resume: (!line).then_some(resume),
        };
        self.reply(sid, tag, Ok(welcome));
        self.push(sid.shard(), ToShardInner::Welcomed { sid, expires_ms: None });
        self.count_session(line, 1);
    }

    /// Checks a returning guest's `hello`: `Ok(Some(principal))` when the
    /// secret proves it, `Ok(None)` when the secret is stale or wrong (the
    /// guest is welcomed as new), or why the name cannot be had now.
    pub(super) fn guest_name_problem_for_resume(
        &mut self,
        now: Now,
        peer: IpAddr,
        name: &str,
        resume: &str,
    ) -> Result<Option<String>, Failure> {
        let Some(key) = self.resumed_key(name, resume) else {
            return match self.guest_name_problem(now, peer, name) {
                Some(f) => Err(f),
                None => Ok(None),
            };
        };
        // Still online under the same principal: another session of the
        // same guest (the old connection may not be known dead yet).
        if self.state.online.get(name).is_some_and(|o| o.guest && o.key == key) {
            return Ok(Some(key));
        }
        match self.guest_name_problem(now, peer, name) {
            Some(f) => Err(f),
            None => Ok(Some(key)),
        }
    }

    /// The principal a `resume` secret names, if it is genuine and this
    /// server process issued it for `name`.
    fn resumed_key(&self, name: &str, resume: &str) -> Option<String> {
        let (n, mac) = resume.split_once('.')?;
        let n: u64 = n.parse().ok()?;
        let key = format!("{name}#{}.{n}", self.incarnation);
        let mac = hex::decode(mac).ok()?;
        let check = self.guest_mac(&key);
        // Constant time, so the secret cannot be found a byte at a time.
        check.verify_truncated_left(&mac).ok()?;
        (mac.len() == MAC_BYTES && n >= 1 && n <= self.guests).then_some(key)
    }

    fn resume_secret(&self, key: &str) -> String {
        let n = key.rsplit_once('.').map_or("", |(_, n)| n);
        let mac = self.guest_mac(key).finalize().into_bytes();
        format!("{n}.{}", hex::encode(&mac[..MAC_BYTES]))
    }

    fn guest_mac(&self, key: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.config.guest_secret.0).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac
    }
}

//! Scale: about 19,000 WebSocket sessions at once, held, then checked with
//! one message per room. The number is set by the machine, not the server:
//! a process may open 20,000 files here, this generator's own sockets count
//! against it, and one loopback source address gives about 28,000 ports, so
//! the clients are spread over several (127.0.0.2, 127.0.0.3, ...). The
//! measurement is the idle scenario's ([`crate::idle::hold`]) at that size.

use crate::fanout::OpenArgs;
use crate::idle::{hold, Report};
use crate::{Target, Titled};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ScaleArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long, default_value_t = 19_000)]
    pub(crate) sessions: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Seconds the sessions are held.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) hold: f64,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

impl Titled for ScaleArgs {
    fn title(&self) -> String {
        format!(
            "scale: {} concurrent sessions in rooms of {}, held {} s, then one message per room",
            self.sessions, self.room_size, self.hold
        )
    }
}

pub(crate) fn run(a: &ScaleArgs) -> Report {
    let mut open = a.open.clone();
    if open.sources == 0 {
        // Several source addresses even below one's port range: the point is
        // to be ready for more than one address can hold.
        open.sources = 4;
    }
    hold(&a.target, a.sessions, a.room_size, a.hold, &open)
}

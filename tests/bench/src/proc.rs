//! Server and self figures from `/proc`: CPU seconds and resident memory.

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn self_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu(&s)).unwrap_or(0.0)
}

fn stat_cpu(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// `(VmRSS, VmHWM)` of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (None, None) };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The kernel's count of connections dropped because a listen queue was
/// full (`TcpExt: ListenDrops`, machine-wide): each one costs its client a
/// SYN retransmit, a second at first.
pub fn listen_drops() -> Option<u64> {
    netstat_field(&std::fs::read_to_string("/proc/net/netstat").ok()?, "TcpExt:", "ListenDrops")
}

/// A counter of `/proc/net/netstat`: a header line and a value line per prefix.
fn netstat_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (head, values) = (lines.next()?, lines.next()?);
    let at = head.split_whitespace().position(|k| k == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// CPU seconds of each thread of a process: `(thread id, name, seconds)`.
pub type ThreadTimes = Vec<(u32, String, f64)>;

/// CPU seconds of each thread of `pid`.
pub fn thread_cpu(pid: u32) -> ThreadTimes {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let name = stat.find('(').zip(stat.rfind(')')).map_or("?", |(a, b)| &stat[a + 1..b]).to_string();
        if let Some(cpu) = stat_cpu(&stat) {
            out.push((tid, name, cpu));
        }
    }
    out
}

/// Which threads used the CPU between two [`thread_cpu`] readings, busiest
/// first, threads of one name (e.g. `natter-pw-0`, `natter-pw-1`) apart:
/// `natter-store 5.2 s, natter-io-0 3.1 s`.
pub fn thread_breakdown(before: &[(u32, String, f64)], after: &[(u32, String, f64)]) -> String {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, name, cpu)| {
            let start = before.iter().find(|(t, _, _)| t == tid).map_or(0.0, |b| b.2);
            (name.clone(), cpu - start)
        })
        .filter(|(_, c)| *c >= 0.05)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.iter().map(|(n, c)| format!("{n} {c:.1} s")).collect::<Vec<_>>().join(", ")
}

/// VmRSS of `pid` once it stops changing (two readings 100 ms apart agree,
/// or after 3 s): a server just started is still freeing what its start-up
/// used, and a baseline read then would be megabytes too high.
pub fn settled_rss_kib(pid: u32) -> Option<u64> {
    let mut last = rss_kib(pid).0?;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = rss_kib(pid).0?;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// CPU of the server and of this process at one moment, for a window's
/// difference.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    server: Option<f64>,
    own: f64,
    at: std::time::Instant,
}

impl Usage {
    pub fn now(pid: Option<u32>) -> Usage {
        Usage::now_of(pid.as_slice())
    }

    /// The servers' CPU summed (the nodes of a cluster): `None` when one
    /// of them cannot be read, or there are none.
    pub fn now_of(pids: &[u32]) -> Usage {
        let server = if pids.is_empty() { None } else { pids.iter().map(|&p| cpu_seconds(p)).sum::<Option<f64>>() };
        Usage { server, own: self_cpu_seconds(), at: std::time::Instant::now() }
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Usage) -> Window {
        Window {
            server_cpu_s: self.server.zip(later.server).map(|(a, b)| b - a),
            own_cpu_s: later.own - self.own,
            seconds: later.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

/// CPU used over a stretch of wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub server_cpu_s: Option<f64>,
    pub own_cpu_s: f64,
    pub seconds: f64,
}

impl Window {
    /// This process's share of one core over the window.
    pub fn own_share(&self) -> f64 {
        if self.seconds > 0.0 {
            self.own_cpu_s / self.seconds
        } else {
            0.0
        }
    }

    /// Server CPU seconds per million of `count` events in the window.
    pub fn server_per_million(&self, count: f64) -> Option<f64> {
        self.server_cpu_s.filter(|_| count > 0.0).map(|c| c / count * 1e6)
    }

    /// Whether this process used so much of its core that it, not the server,
    /// may have set the pace.
    pub fn generator_saturated(&self) -> bool {
        self.own_share() > GENERATOR_LIMIT
    }
}

/// The share of a core above which the load generator is flagged.
pub const GENERATOR_LIMIT: f64 = 0.85;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "42 (a b) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 100 10";
        assert_eq!(stat_cpu(line), Some(3.0));
    }

    #[test]
    fn netstat_counters() {
        let text = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 42\nIpExt: InNoRoutes\nIpExt: 7\n";
        assert_eq!(netstat_field(text, "TcpExt:", "ListenDrops"), Some(42));
        assert_eq!(netstat_field(text, "IpExt:", "InNoRoutes"), Some(7));
        assert_eq!(netstat_field(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn busiest_threads_first() {
        let before = [(1, "main".to_string(), 1.0), (2, "store".to_string(), 2.0)];
        let after = [(1, "main".to_string(), 1.0), (2, "store".to_string(), 5.0), (3, "io".to_string(), 0.5)];
        assert_eq!(thread_breakdown(&before, &after), "store 3.0 s, io 0.5 s");
    }

    #[test]
    fn window_figures() {
        let w = Window { server_cpu_s: Some(2.0), own_cpu_s: 0.9, seconds: 1.0 };
        assert_eq!(w.server_per_million(4e6), Some(0.5));
        assert!(w.generator_saturated());
        assert_eq!(Window::default().server_per_million(1.0), None);
    }
}

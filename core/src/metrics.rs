//! Counters and gauges for `/metrics`, in Prometheus text format.
//!
//! Plain atomics shared by every thread of a node: the core updates them as it
//! goes and the storage workers add their own. Reading one is never I/O, so the
//! core stays pure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::peers::PeerConns;

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open TCP connections on the HTTP port.
    pub connections_http: AtomicI64,
    /// Open TCP connections on the line port.
    pub connections_line: AtomicI64,
    /// Sessions past `welcome`, by transport.
    pub sessions_ws: AtomicI64,
    /// Line-protocol sessions past `* welcome`.
    pub sessions_line: AtomicI64,
    /// Rooms with at least one member.
    pub rooms: AtomicI64,
    /// Client messages (data frames or lines) received.
    pub messages_received: AtomicU64,
    /// Events delivered, one per recipient session.
    pub messages_delivered: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Connections closed for a full outbound queue.
    pub slow_consumer_closes: AtomicU64,
    /// Messages dropped by the per-connection rate limit.
    pub rate_limited: AtomicU64,
    /// Connections refused at the connection cap.
    pub connections_refused: AtomicU64,
    /// `rooms`, `who`, `history` and `conversations` refused past `--query-rate`.
    pub queries_limited: AtomicU64,
    /// Private messages refused because the recipient's inbox was full.
    pub inbox_full: AtomicU64,
    /// Connections refused at the per-address cap.
    pub connections_refused_per_address: AtomicU64,
    /// Open connections by client address, for `--max-connections-per-ip`.
    /// Not rendered: addresses are the users'.
    pub(crate) per_address: PeerConns,
    /// WebSocket upgrades refused for an `Origin` not in `--allowed-origin`.
    pub origin_refused: AtomicU64,
    /// Logins refused by the per-address or per-account login limit.
    pub limited_logins: AtomicU64,
    /// Registrations refused by the per-address limit.
    pub limited_registrations: AtomicU64,
    /// Guest names refused by the per-address name-probe limit.
    pub limited_name_probes: AtomicU64,
    /// Session opens refused by the per-user or per-address limit.
    pub limited_session_opens: AtomicU64,
    /// `offline`/`online` pairs never sent because the user came back
    /// within the presence grace.
    pub presence_coalesced: AtomicU64,
    /// Password operations refused because the hashing queue was full.
    pub password_refused: AtomicU64,
    /// Password operations dropped before their next step because their
    /// client was gone or the server was stopping.
    pub password_cancelled: AtomicU64,
    /// Storage requests queued and not yet completed.
    pub store_queue_depth: AtomicI64,
    /// Storage requests completed.
    pub store_completed: AtomicU64,
    /// Storage requests that failed.
    pub store_failed: AtomicU64,
    /// Sum of storage latencies, microseconds (with `store_completed`, the mean).
    pub store_latency_us_sum: AtomicU64,
    /// Storage transactions (each holds a batch of requests).
    pub store_batches: AtomicU64,
    /// Storage transactions that wrote: each ends in one commit (with
    /// `--sync full`, one fsync).
    pub store_commits: AtomicU64,
    /// Requests run in storage transactions (with `store_batches`, the mean
    /// batch; password steps run apart and are not counted).
    pub store_batched_ops: AtomicU64,
    /// Storage transactions run again after a deadlock or a lock timeout
    /// (other nodes writing the same rows).
    pub store_busy_retries: AtomicU64,
    /// The database server could not be reached at the last attempt (a
    /// batch, or the idle probe). Stored inverted so that a node without
    /// a database server (SQLite, the simulation) reads as up without
    /// anyone setting it; rendered as `natter_database_up`.
    pub database_down: AtomicBool,
    /// Connections the database pool holds open (PostgreSQL; 0 on SQLite).
    pub database_pool_size: AtomicI64,
    /// Of those, checked out for a batch now.
    pub database_pool_in_use: AtomicI64,
    /// Cluster: messages published on the bus (one per topic).
    pub bus_published: AtomicU64,
    /// Cluster: messages received from the bus.
    pub bus_received: AtomicU64,
    /// Cluster: messages dropped because their `seq` was delivered already.
    pub bus_duplicates: AtomicU64,
    /// Cluster: gaps found (a `seq` past the next, or behind storage).
    pub bus_gaps: AtomicU64,
    /// Cluster: storage reads that filled a gap.
    pub bus_fill_reads: AtomicU64,
    /// Cluster: messages delivered from storage instead of the bus.
    pub bus_filled: AtomicU64,
    /// Cluster: messages not held for want of room, in the sequencer or in
    /// the hub's mailbox (read from storage later).
    pub bus_held_overflow: AtomicU64,
    /// Cluster: catch-up checks of the newest `seq`s (periodic, and after `Up`).
    pub bus_checks: AtomicU64,
    /// Cluster: bytes from the bus that were not a message (the host counts).
    pub bus_decode_errors: AtomicU64,
    /// Cluster: 1 while the bus link is up.
    pub bus_up: AtomicI64,
    /// Cluster: publishes Redis refused, that failed on the way, or that were
    /// dropped while Redis was unreachable or the publish queue full (the
    /// other nodes' periodic check finds what they carried).
    pub bus_publish_errors: AtomicU64,
    /// Cluster: probes of the node's own subscription that did not come
    /// back in time (the subscription is then restarted).
    pub bus_probe_failures: AtomicU64,
    /// Cluster: other nodes this node hears and counts alive.
    pub cluster_peers: AtomicI64,
    /// Cluster: nodes this node declared dead (silent past `node_timeout`).
    pub cluster_peers_lost: AtomicU64,
    /// Cluster: times this node asked every other node for its users.
    pub cluster_syncs: AtomicU64,
    /// Cluster: relayed events (membership, typing, revocation) published
    /// (one per topic).
    pub bus_relayed_sent: AtomicU64,
    /// Cluster: relayed events received from other nodes.
    pub bus_relayed_received: AtomicU64,
    /// Cluster: storage reads of which tokens are still live, after the
    /// link came back (a revocation may have been lost).
    pub bus_token_checks: AtomicU64,
}

impl Metrics {
    /// Open connections from `peer` (not rendered on `/metrics`: addresses
    /// are the users'; for tests and diagnostics).
    pub fn connections_from(&self, peer: std::net::IpAddr) -> u32 {
        self.per_address.count(peer)
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Moves a gauge by `delta`.
    pub fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Exposition(String::with_capacity(2048));
        self.render_connections(&mut out);
        self.render_traffic(&mut out);
        self.render_limits(&mut out);
        self.render_store(&mut out);
        self.render_cluster(&mut out);
        out.0
    }

    /// Connections, sessions and rooms now.
    fn render_connections(&self, out: &mut Exposition) {
        out.metric(
            "natter_connections",
            "gauge",
            "Open TCP connections by transport.",
            &[
                ("{transport=\"http\"}", gauge(&self.connections_http) as f64),
                ("{transport=\"line\"}", gauge(&self.connections_line) as f64),
            ],
        );
        out.metric(
            "natter_sessions",
            "gauge",
            "Sessions past welcome by transport.",
            &[
                ("{transport=\"ws\"}", gauge(&self.sessions_ws) as f64),
                ("{transport=\"line\"}", gauge(&self.sessions_line) as f64),
            ],
        );
        out.metric("natter_rooms", "gauge", "Rooms with at least one member.", &[("", gauge(&self.rooms) as f64)]);
    }

    /// What went in and out.
    fn render_traffic(&self, out: &mut Exposition) {
        out.metric(
            "natter_messages_received_total",
            "counter",
            "Client data messages received.",
            &[("", count(&self.messages_received) as f64)],
        );
        out.metric(
            "natter_messages_delivered_total",
            "counter",
            "Events delivered, one per recipient session.",
            &[("", count(&self.messages_delivered) as f64)],
        );
        out.metric(
            "natter_bytes_in_total",
            "counter",
            "Bytes read from clients.",
            &[("", count(&self.bytes_in) as f64)],
        );
        out.metric(
            "natter_bytes_out_total",
            "counter",
            "Bytes written to clients.",
            &[("", count(&self.bytes_out) as f64)],
        );
        out.metric(
            "natter_slow_consumer_closes_total",
            "counter",
            "Connections closed because their outbound queue was full.",
            &[("", count(&self.slow_consumer_closes) as f64)],
        );
    }

    /// What the limits refused, and work not done.
    fn render_limits(&self, out: &mut Exposition) {
        out.metric(
            "natter_rate_limited_total",
            "counter",
            "Messages dropped by the per-connection rate limit.",
            &[("", count(&self.rate_limited) as f64)],
        );
        out.metric(
            "natter_queries_limited_total",
            "counter",
            "Listings and history reads refused past the per-session query rate.",
            &[("", count(&self.queries_limited) as f64)],
        );
        out.metric(
            "natter_inbox_full_total",
            "counter",
            "Private messages refused because the recipient had too many unacknowledged.",
            &[("", count(&self.inbox_full) as f64)],
        );
        out.metric(
            "natter_connections_refused_total",
            "counter",
            "Connections refused at the connection cap.",
            &[("", count(&self.connections_refused) as f64)],
        );
        out.metric(
            "natter_connections_refused_per_address_total",
            "counter",
            "Connections refused because their address had --max-connections-per-ip open.",
            &[("", count(&self.connections_refused_per_address) as f64)],
        );
        out.metric(
            "natter_origin_refused_total",
            "counter",
            "WebSocket upgrades refused (403) for an Origin not in --allowed-origin.",
            &[("", count(&self.origin_refused) as f64)],
        );
        out.metric(
            "natter_abuse_limited_total",
            "counter",
            "Requests refused by an abuse limit, by limit.",
            &[
                ("{limit=\"login\"}", count(&self.limited_logins) as f64),
                ("{limit=\"register\"}", count(&self.limited_registrations) as f64),
                ("{limit=\"name_probe\"}", count(&self.limited_name_probes) as f64),
                ("{limit=\"session_open\"}", count(&self.limited_session_opens) as f64),
            ],
        );
        out.metric(
            "natter_presence_coalesced_total",
            "counter",
            "Offline and online events not sent because the user came back within the grace.",
            &[("", count(&self.presence_coalesced) as f64)],
        );
        out.metric(
            "natter_password_jobs_dropped_total",
            "counter",
            "Password operations not run, by reason.",
            &[
                ("{reason=\"queue_full\"}", count(&self.password_refused) as f64),
                ("{reason=\"cancelled\"}", count(&self.password_cancelled) as f64),
            ],
        );
    }

    /// Storage: its queue, outcomes, latency and batches.
    fn render_store(&self, out: &mut Exposition) {
        out.metric(
            "natter_store_queue_depth",
            "gauge",
            "Storage requests waiting or in progress.",
            &[("", gauge(&self.store_queue_depth) as f64)],
        );
        out.metric(
            "natter_store_requests_total",
            "counter",
            "Storage requests completed, by outcome.",
            &[
                (
                    "{outcome=\"ok\"}",
                    (count(&self.store_completed) - count(&self.store_failed).min(count(&self.store_completed))) as f64,
                ),
                ("{outcome=\"error\"}", count(&self.store_failed) as f64),
            ],
        );
        out.metric(
            "natter_store_latency_seconds_sum",
            "counter",
            "Total time storage requests took from submission to completion.",
            &[("", count(&self.store_latency_us_sum) as f64 / 1e6)],
        );
        out.metric(
            "natter_store_latency_seconds_count",
            "counter",
            "Storage requests whose latency is in the sum.",
            &[("", count(&self.store_completed) as f64)],
        );
        out.metric(
            "natter_store_batches_total",
            "counter",
            "Storage transactions, each carrying a batch of requests.",
            &[("", count(&self.store_batches) as f64)],
        );
        out.metric(
            "natter_store_commits_total",
            "counter",
            "Storage transactions that wrote, each one commit (with --sync full, one fsync).",
            &[("", count(&self.store_commits) as f64)],
        );
        out.metric(
            "natter_store_batched_ops_total",
            "counter",
            "Storage requests run in those transactions: over natter_store_batches_total, requests per transaction.",
            &[("", count(&self.store_batched_ops) as f64)],
        );
        out.metric(
            "natter_store_busy_retries_total",
            "counter",
            "Storage transactions run again after a deadlock or a lock timeout.",
            &[("", count(&self.store_busy_retries) as f64)],
        );
        self.render_database(out);
    }

    /// The database server: reachable, and its connection pool.
    fn render_database(&self, out: &mut Exposition) {
        out.metric(
            "natter_database_up",
            "gauge",
            "1 while the database answers (always 1 on SQLite).",
            &[("", f64::from(u8::from(!self.database_down.load(Relaxed))))],
        );
        out.metric(
            "natter_database_pool_size",
            "gauge",
            "PostgreSQL connections the pool holds open.",
            &[("", gauge(&self.database_pool_size) as f64)],
        );
        out.metric(
            "natter_database_pool_in_use",
            "gauge",
            "PostgreSQL connections checked out by the storage thread now.",
            &[("", gauge(&self.database_pool_in_use) as f64)],
        );
    }
}

impl Metrics {
    /// The bus between the nodes of a cluster (all zero on a single node).
    fn render_cluster(&self, out: &mut Exposition) {
        out.metric(
            "natter_bus_up",
            "gauge",
            "1 while the cluster bus link is up.",
            &[("", gauge(&self.bus_up) as f64)],
        );
        out.metric(
            "natter_bus_messages_total",
            "counter",
            "Cluster bus messages, by what happened to them.",
            &[
                ("{event=\"published\"}", count(&self.bus_published) as f64),
                ("{event=\"received\"}", count(&self.bus_received) as f64),
                ("{event=\"duplicate_dropped\"}", count(&self.bus_duplicates) as f64),
                ("{event=\"not_held\"}", count(&self.bus_held_overflow) as f64),
                ("{event=\"undecodable\"}", count(&self.bus_decode_errors) as f64),
            ],
        );
        out.metric(
            "natter_bus_gaps_total",
            "counter",
            "Gaps in a room's or conversation's seq found on this node.",
            &[("", count(&self.bus_gaps) as f64)],
        );
        out.metric(
            "natter_bus_catchup_reads_total",
            "counter",
            "Storage reads for the cluster: gap fills and checks of the newest seqs.",
            &[
                ("{read=\"fill\"}", count(&self.bus_fill_reads) as f64),
                ("{read=\"check\"}", count(&self.bus_checks) as f64),
                ("{read=\"tokens\"}", count(&self.bus_token_checks) as f64),
            ],
        );
        out.metric(
            "natter_bus_filled_total",
            "counter",
            "Messages delivered from storage because the bus did not bring them in order.",
            &[("", count(&self.bus_filled) as f64)],
        );
        out.metric(
            "natter_bus_publish_errors_total",
            "counter",
            "Publishes that failed or were dropped; the other nodes' periodic check finds what they carried.",
            &[("", count(&self.bus_publish_errors) as f64)],
        );
        out.metric(
            "natter_bus_relayed_total",
            "counter",
            "Relayed events (membership, typing, revocation): published here, or received from other nodes.",
            &[
                ("{direction=\"sent\"}", count(&self.bus_relayed_sent) as f64),
                ("{direction=\"received\"}", count(&self.bus_relayed_received) as f64),
            ],
        );
        out.metric(
            "natter_bus_probe_failures_total",
            "counter",
            "Probes of the node's own subscription that did not come back in time.",
            &[("", count(&self.bus_probe_failures) as f64)],
        );
        self.render_peers(out);
    }

    /// The other nodes, as this one sees them (all zero on a single node).
    fn render_peers(&self, out: &mut Exposition) {
        out.metric(
            "natter_cluster_peers",
            "gauge",
            "Other nodes this node hears and counts alive.",
            &[("", gauge(&self.cluster_peers) as f64)],
        );
        out.metric(
            "natter_cluster_peers_lost_total",
            "counter",
            "Nodes declared dead after node_timeout without a word; their users went offline here.",
            &[("", count(&self.cluster_peers_lost) as f64)],
        );
        out.metric(
            "natter_cluster_syncs_total",
            "counter",
            "Times this node asked the others for their online users (a node new to it, a missed announcement, a link back up).",
            &[("", count(&self.cluster_syncs) as f64)],
        );
    }
}

/// Prometheus text being written.
struct Exposition(String);

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

/// A gauge's value, never below zero.
fn gauge(v: &AtomicI64) -> i64 {
    v.load(Relaxed).max(0)
}

fn count(v: &AtomicU64) -> u64 {
    v.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.messages_delivered, 3);
        Metrics::gauge(&m.connections_line, 2);
        Metrics::add(&m.store_latency_us_sum, 1_500);
        let text = m.render();
        assert!(text.contains("# TYPE natter_messages_delivered_total counter\nnatter_messages_delivered_total 3\n"));
        assert!(text.contains("natter_connections{transport=\"line\"} 2\n"));
        assert!(text.contains("natter_store_latency_seconds_sum 0.0015\n"));
        assert!(text.contains("natter_database_up 1\n"), "a node without a database server reads as up");
        m.database_down.store(true, Relaxed);
        assert!(m.render().contains("natter_database_up 0\n"));
        Metrics::add(&m.bus_duplicates, 2);
        assert!(text.contains("natter_bus_up 0\n"), "a single node's bus is never up");
        assert!(m.render().contains("natter_bus_messages_total{event=\"duplicate_dropped\"} 2\n"));
        assert!(text.contains("natter_cluster_peers 0\n"));
        assert!(text.contains("natter_cluster_peers_lost_total 0\n"));
        assert!(text.contains("natter_cluster_syncs_total 0\n"));
        Metrics::add(&m.bus_relayed_sent, 4);
        Metrics::add(&m.bus_relayed_received, 1);
        Metrics::add(&m.bus_token_checks, 5);
        let relayed = m.render();
        assert!(relayed.contains("natter_bus_relayed_total{direction=\"sent\"} 4\n"));
        assert!(relayed.contains("natter_bus_relayed_total{direction=\"received\"} 1\n"));
        assert!(relayed.contains("natter_bus_catchup_reads_total{read=\"tokens\"} 5\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

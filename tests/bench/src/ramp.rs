//! The ramp: the fan-out with the rate raised step by step on one set of
//! clients, to find the highest load the server holds. Reusing the clients
//! keeps set-up (thousands of handshakes and joins) out of every step and
//! makes the steps comparable. Each step ends with its own drain, so loss
//! is judged per step.
//!
//! The rate multiplies by `--factor` until a step fails (p99 above the
//! limit, or anything lost, doubled or reordered), then `--refine` steps
//! bisect between the last rate that held and the first that did not.
//! Loss that comes with a server closing slow clients (1008) ends the ramp
//! but is the protocol's answer to overload, not a fault; loss without a
//! close, a duplicate or a reordering is a fault and fails the run.

use crate::fanout::{OpenArgs, PhaseReport, Rig};
use crate::report::{col, ratio, text, Cell, Col, Row, Table};
use crate::{Target, Titled};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RampArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Messages per second per sender at the first step.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) start_rate: f64,
    /// What each step multiplies the rate by until one fails.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) factor: f64,
    /// The ramp stops after the step at or above this rate per sender.
    #[arg(long, default_value_t = 5000.0)]
    pub(crate) max_rate: f64,
    /// Bisecting steps after the first failure.
    #[arg(long, default_value_t = 2)]
    pub(crate) refine: usize,
    /// A step holds while its p99 stays at or under this.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) p99_ms: f64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    #[arg(long, default_value_t = 4.0)]
    pub(crate) measure: f64,
    /// Longest drain per step (it ends once everything arrived).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain: f64,
    /// At most this many steps in all.
    #[arg(long, default_value_t = 12)]
    pub(crate) max_steps: usize,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

impl Titled for RampArgs {
    fn title(&self) -> String {
        format!(
            "ramp: {} clients, rooms of {}, {} sender(s) per room from {}/s x{} (then {} bisecting steps), \
             holds while p99 <= {} ms and nothing is lost; {} s per step measured",
            self.clients,
            self.room_size,
            self.senders,
            self.start_rate,
            self.factor,
            self.refine,
            self.p99_ms,
            self.measure
        )
    }
}

/// Why a step did not hold; `None` if it held.
fn failure(p: &PhaseReport, p99_limit_ms: f64) -> Option<String> {
    let i = &p.integrity;
    let p99 = p.latency.ms().p99;
    if p.gone > 0 {
        Some(format!("{} closed ({})", p.gone, p.gone_reasons))
    } else if !i.clean() {
        Some(format!("lost/dup/order {}", i.summary()))
    } else if p99 > p99_limit_ms {
        Some(format!("p99 {p99:.1} ms"))
    } else {
        None
    }
}

pub(crate) struct Report {
    pub(crate) steps: Vec<PhaseReport>,
    /// Per step: `None` if it held, else why not.
    pub(crate) failures: Vec<Option<String>>,
    /// Why the ramp ended.
    pub(crate) stop: String,
}

impl Report {
    /// The held step with the most deliveries a second.
    pub(crate) fn best(&self) -> Option<&PhaseReport> {
        self.steps
            .iter()
            .zip(&self.failures)
            .filter(|(_, f)| f.is_none())
            .map(|(s, _)| s)
            .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))
    }
}

impl Row for Report {
    fn columns() -> Vec<Col> {
        vec![
            ratio("held deliveries/s"),
            col("rate/sender"),
            col("p99 ms"),
            ratio("CPU s/M deliveries"),
            text("load gen CPU"),
            col("steps"),
            text("stopped by"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        let best = self.best();
        vec![
            Cell::num(best.map_or(0.0, |b| b.deliveries_per_s), 0),
            Cell::opt(best.map(|b| b.rate), 0),
            Cell::opt(best.map(|b| b.latency.ms().p99), 2),
            Cell::opt(best.and_then(PhaseReport::cpu_per_million), 2),
            best.map_or(Cell::None, PhaseReport::generator_cell),
            Cell::num(self.steps.len() as f64, 0),
            Cell::text(self.stop.clone()),
        ]
    }

    /// Duplicates and reorderings anywhere, and loss without a close, are faults.
    fn clean(&self) -> bool {
        self.steps.iter().all(|s| {
            let i = &s.integrity;
            i.duplicated == 0 && i.reordered == 0 && (i.lost() == 0 || s.gone > 0)
        })
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = self.best().map(PhaseReport::notes).unwrap_or_default();
        if self.best().is_some_and(|b| b.window.generator_saturated()) {
            notes.push("at the top step the load generator was near a whole core: the ceiling may be its own".into());
        }
        notes
    }

    fn detail(&self, name: &str) -> Option<Table> {
        let mut t = Table::new(
            format!("ramp steps, {name}"),
            vec![
                col("rate/sender"),
                col("offered/s"),
                col("deliveries/s"),
                col("p50 ms"),
                col("p99 ms"),
                col("p99.9 ms"),
                col("max ms"),
                col("CPU s/M"),
                text("lost/dup/order"),
                col("late"),
                text("load gen CPU"),
                text("verdict"),
            ],
        )
        .first("step");
        for (k, (s, f)) in self.steps.iter().zip(&self.failures).enumerate() {
            let l = s.latency.ms();
            t.push(
                &(k + 1).to_string(),
                vec![
                    Cell::num(s.rate, 0),
                    Cell::num(s.offered, 0),
                    Cell::num(s.deliveries_per_s, 0),
                    Cell::num(l.p50, 2),
                    Cell::num(l.p99, 2),
                    Cell::num(l.p999, 2),
                    Cell::num(l.max, 2),
                    Cell::opt(s.cpu_per_million(), 2),
                    Cell::text(s.integrity.summary()),
                    Cell::num(s.late as f64, 0),
                    s.generator_cell(),
                    Cell::text(f.clone().unwrap_or_else(|| "held".into())),
                ],
            );
        }
        Some(t)
    }
}

pub(crate) fn run(a: &RampArgs) -> Report {
    assert!(a.factor > 1.0, "--factor must be above 1");
    let mut rig = Rig::open(&a.target, a.clients, a.room_size, a.senders, &a.open);
    let mut report = Report { steps: Vec::new(), failures: Vec::new(), stop: String::new() };
    let mut step = |rate: f64, report: &mut Report| -> bool {
        let p = rig.run(rate, a.warmup, a.measure, a.drain);
        let f = failure(&p, a.p99_ms);
        eprintln!(
            "ramp step {}: {rate:.0}/s per sender, {:.0} deliveries/s, p99 {:.2} ms, {}",
            report.steps.len() + 1,
            p.deliveries_per_s,
            p.latency.ms().p99,
            f.as_deref().unwrap_or("held")
        );
        let held = f.is_none();
        report.stop = match &f {
            Some(why) => format!("{why} at {rate:.0}/s"),
            None => String::new(),
        };
        report.steps.push(p);
        report.failures.push(f);
        held
    };
    // Up by the factor until a step fails.
    let (mut lo, mut hi) = (0.0, None);
    let mut rate = a.start_rate;
    while report.steps.len() < a.max_steps {
        if step(rate, &mut report) {
            lo = rate;
            if rate >= a.max_rate {
                report.stop = format!("--max-rate {} held", a.max_rate);
                break;
            }
            rate = (rate * a.factor).min(a.max_rate);
        } else {
            hi = Some(rate);
            break;
        }
    }
    let first_failure = report.stop.clone();
    // Then bisect, unless the server closed clients (the set is no longer whole).
    if let Some(mut hi) = hi {
        for _ in 0..a.refine {
            if report.steps.len() >= a.max_steps || report.steps.iter().any(|s| s.gone > 0) {
                break;
            }
            let mid = (lo + hi) / 2.0;
            if step(mid, &mut report) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        report.stop = first_failure;
    } else if report.stop.is_empty() {
        report.stop = format!("--max-steps {}", a.max_steps);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Integrity;

    fn phase(rate: f64, dps: f64, p99_us: u64, integrity: Integrity, gone: usize) -> PhaseReport {
        let mut p = PhaseReport { rate, deliveries_per_s: dps, integrity, gone, ..PhaseReport::default() };
        p.latency.record(p99_us);
        p
    }

    #[test]
    fn steps_fail_on_latency_loss_and_closes() {
        let clean = Integrity { expected: 10, delivered: 10, ..Integrity::default() };
        let lossy = Integrity { expected: 10, delivered: 9, ..Integrity::default() };
        assert_eq!(failure(&phase(1.0, 1.0, 10_000, clean, 0), 50.0), None);
        assert_eq!(failure(&phase(1.0, 1.0, 60_000, clean, 0), 50.0).as_deref(), Some("p99 60.0 ms"));
        assert_eq!(failure(&phase(1.0, 1.0, 10_000, lossy, 0), 50.0).as_deref(), Some("lost/dup/order 1/0/0"));
        assert!(failure(&phase(1.0, 1.0, 10_000, lossy, 2), 50.0).unwrap().starts_with("2 closed"));
    }

    #[test]
    fn best_is_the_fastest_held_step_and_loss_with_closes_is_no_fault() {
        let clean = Integrity { expected: 10, delivered: 10, ..Integrity::default() };
        let lossy = Integrity { expected: 10, delivered: 9, ..Integrity::default() };
        let r = Report {
            steps: vec![
                phase(50.0, 5e3, 1_000, clean, 0),
                phase(100.0, 1e4, 90_000, clean, 0),
                phase(75.0, 7e3, 2_000, lossy, 1),
            ],
            failures: vec![None, Some("p99".into()), Some("closed".into())],
            stop: "p99".into(),
        };
        assert_eq!(r.best().map(|b| b.rate), Some(50.0));
        assert!(r.clean());
        let faulty = Report {
            steps: vec![phase(50.0, 5e3, 1_000, lossy, 0)],
            failures: vec![Some("lost".into())],
            stop: String::new(),
        };
        assert!(!faulty.clean());
        assert!(faulty.best().is_none());
    }
}

//! Latency percentiles and delivery accounting shared by the scenarios.
//!
//! Latencies go into a log-linear histogram rather than a vector: a ramp
//! step at a million deliveries a second would otherwise push and sort
//! millions of samples; a bucket is 1/64 of its power of two wide, so a
//! percentile is off by at most about 1.6%.

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`].
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = LINEAR as usize + (64 - 7) * SUB as usize;

/// Latencies in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={}, p50={}, max={})", self.total, self.percentile(0.5), self.max)
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 7
    let top = v >> (exp - SUB_BITS); // in SUB..2*SUB
    LINEAR as usize + (exp as usize - 7) * SUB as usize + (top - SUB) as usize
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let k = b - LINEAR as usize;
    let exp = 7 + (k / SUB as usize) as u32;
    let top = SUB + (k % SUB as usize) as u64;
    let shift = exp - SUB_BITS;
    // The top bucket ends at u64::MAX: compute it wider.
    ((u128::from(top + 1) << shift) - 1).min(u128::from(u64::MAX)) as u64
}

impl Histogram {
    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// The value below which a fraction `p` of the samples fall (the upper
    /// edge of the bucket holding that rank, never above the maximum); 0
    /// when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }

    /// p50, p99, p99.9 and max in milliseconds, for tables.
    pub fn ms(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(self.percentile(0.50)),
            p99: ms(self.percentile(0.99)),
            p999: ms(self.percentile(0.999)),
            max: ms(self.max),
        }
    }
}

/// A latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// How one received sequence number relates to the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The expected one.
    Next,
    /// At or below one already seen.
    Duplicate,
    /// Above the expected one: something before it is missing or late.
    Gap,
}

/// Checks a stream whose numbers must arrive as `last + 1`, `last + 2`, ...
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqCheck {
    pub last: u64,
}

impl SeqCheck {
    pub fn from(last: u64) -> SeqCheck {
        SeqCheck { last }
    }

    pub fn observe(&mut self, seq: u64) -> Order {
        if seq == self.last + 1 {
            self.last = seq;
            Order::Next
        } else if seq <= self.last {
            Order::Duplicate
        } else {
            self.last = seq;
            Order::Gap
        }
    }

    /// For a stream that must only increase, gaps allowed (a conversation's
    /// seq seen from one side: the other direction's messages fill the gaps).
    pub fn observe_increasing(&mut self, seq: u64) -> bool {
        let ok = seq > self.last;
        self.last = self.last.max(seq);
        ok
    }
}

/// What arrived, against what should have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Messages expected at their recipients.
    pub expected: u64,
    /// Distinct messages that arrived (duplicates not counted).
    pub delivered: u64,
    pub duplicated: u64,
    /// Arrivals out of order (a gap, or a sequence number going back).
    pub reordered: u64,
}

impl Integrity {
    /// Counts one arrival by its [`Order`]; returns whether it was new.
    pub fn count(&mut self, order: Order) -> bool {
        match order {
            Order::Next => self.delivered += 1,
            Order::Gap => {
                self.delivered += 1;
                self.reordered += 1;
            }
            Order::Duplicate => self.duplicated += 1,
        }
        order != Order::Duplicate
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    pub fn clean(&self) -> bool {
        self.lost() == 0 && self.duplicated == 0 && self.reordered == 0
    }

    /// `lost/dup/order`, the tables' column.
    pub fn summary(&self) -> String {
        format!("{}/{}/{}", self.lost(), self.duplicated, self.reordered)
    }
}

/// A growable set of small numbers (message counters).
#[derive(Debug, Clone, Default)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Adds `n`; false if it was there already.
    pub fn insert(&mut self, n: u64) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let had = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !had
    }

    pub fn contains(&self, n: u64) -> bool {
        self.words.get((n / 64) as usize).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset() {
        let mut s = BitSet::default();
        assert!(s.insert(3));
        assert!(s.insert(700));
        assert!(!s.insert(3));
        assert!(s.contains(700) && s.contains(3));
        assert!(!s.contains(4) && !s.contains(100_000));
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 1, u64::from(u32::MAX), u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last, "bucket order at {v}");
            assert!(bucket_high(b) >= v, "{v} above its bucket's top {}", bucket_high(b));
            if b > 0 {
                assert!(bucket_high(b - 1) < v, "{v} belongs in an earlier bucket");
            }
            last = b;
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, exact) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.percentile(p) as f64;
            assert!((got - exact).abs() / exact < 0.02, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.percentile(1.0), 100_000);
        assert_eq!((h.max, h.total), (100_000, 100_000));
    }

    #[test]
    fn small_values_are_exact_and_tails_are_seen() {
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(3);
        }
        h.record(90_000);
        assert_eq!(h.percentile(0.5), 3);
        assert_eq!(h.percentile(0.999), 3);
        assert_eq!(h.percentile(0.9999), 90_000);
        assert_eq!(Histogram::default().percentile(0.99), 0);
        let ms = h.ms();
        assert_eq!((ms.p50, ms.max), (0.003, 90.0));
    }

    #[test]
    fn seq_accounting() {
        let mut s = SeqCheck::from(10);
        let mut i = Integrity { expected: 5, ..Integrity::default() };
        for seq in [11, 12, 12, 14, 13, 15] {
            i.count(s.observe(seq));
        }
        // 13 came after 14: counted as the gap at 14 and a duplicate at 13.
        assert_eq!(i, Integrity { expected: 5, delivered: 4, duplicated: 2, reordered: 1 });
        assert_eq!(i.lost(), 1);
        assert!(!i.clean());
        assert_eq!(i.summary(), "1/2/1");
        let mut clean = Integrity { expected: 2, ..Integrity::default() };
        let mut s = SeqCheck::default();
        clean.count(s.observe(1));
        clean.count(s.observe(2));
        assert!(clean.clean());
    }

    #[test]
    fn increasing_allows_gaps_only() {
        let mut s = SeqCheck::default();
        assert!(s.observe_increasing(2));
        assert!(s.observe_increasing(5));
        assert!(!s.observe_increasing(5));
        assert!(!s.observe_increasing(4));
        assert!(s.observe_increasing(6));
    }
}

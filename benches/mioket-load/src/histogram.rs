//! Latency histogram: 32 sub-buckets per power of two (about 3% precision).

pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    /// Indices of values up to u64::MAX: 64 exact ones, then 32 per power of two.
    const BUCKETS: usize = 59 * 32 + 32;

    pub(crate) fn new() -> Self {
        Histogram { counts: vec![0; Self::BUCKETS], total: 0 }
    }
    fn index(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        (e - 5) * 32 + (v >> (e - 5)) as usize
    }
    fn value(i: usize) -> u64 {
        if i < 64 {
            return i as u64;
        }
        let e = i / 32 + 4;
        let m = (i - (e - 5) * 32) as u64;
        (m << (e - 5)) + ((1u64 << (e - 5)) >> 1)
    }
    pub(crate) fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
    }
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.04, "{p50}");
        for i in 0..Histogram::BUCKETS {
            assert_eq!(Histogram::index(Histogram::value(i)), i);
        }
        assert_eq!(Histogram::index(u64::MAX), Histogram::BUCKETS - 1);
    }
}

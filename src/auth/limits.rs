//! Limits: publish rates per connection (token buckets) and open connections per
//! address and per user (counters).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The publish limits as configured (`--publish-rate`, `--publish-burst`,
/// `--publish-bytes-rate`); 0 turns one off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct PublishLimits {
    /// Messages per second, and the bucket's size (the burst).
    pub(crate) rate: f64,
    pub(crate) burst: f64,
    /// Payload bytes per second; the bucket holds one second's worth.
    pub(crate) bytes_rate: f64,
}

impl PublishLimits {
    pub(crate) fn from_config(config: &crate::config::Config) -> PublishLimits {
        let burst = config.publish_burst.unwrap_or(config.publish_rate).max(1.0);
        PublishLimits { rate: config.publish_rate, burst, bytes_rate: config.publish_bytes_rate }
    }

    /// Whether any limit is on (else no connection needs a `Limiter`).
    pub(crate) fn is_on(&self) -> bool {
        self.rate > 0.0 || self.bytes_rate > 0.0
    }
}

/// Refusals within `STRIKE_WINDOW` after which a v1 connection is closed (4429).
pub(crate) const STRIKES: u8 = 10;
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// What a publish over the limit leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Not published; a v1 client gets error `rate limited`.
    Refused,
    /// Not published, and the connection is closed 4429 `rate limited`: refused too
    /// often, or a plain client (which has no error channel).
    Close,
}

/// One connection's buckets (made at its first publish when limits are on). Both
/// buckets start full and refill at the same moments.
#[derive(Debug)]
pub(crate) struct Limiter {
    messages: f64,
    bytes: f64,
    refilled: Instant,
    strikes: u8,
    strikes_since: Instant,
}

/// A limiter as plain data (a binary upgrade, src/upgrade/): times as time since.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LimiterState {
    messages: f64,
    bytes: f64,
    refilled_ago: std::time::Duration,
    strikes: u8,
    strikes_ago: std::time::Duration,
}

impl Limiter {
    pub(crate) fn freeze(&self, now: Instant) -> LimiterState {
        LimiterState {
            messages: self.messages,
            bytes: self.bytes,
            refilled_ago: crate::frozen::ago(self.refilled, now),
            strikes: self.strikes,
            strikes_ago: crate::frozen::ago(self.strikes_since, now),
        }
    }

    pub(crate) fn thaw(state: &LimiterState, now: Instant) -> Limiter {
        Limiter {
            messages: state.messages,
            bytes: state.bytes,
            refilled: crate::frozen::since(state.refilled_ago, now),
            strikes: state.strikes,
            strikes_since: crate::frozen::since(state.strikes_ago, now),
        }
    }

    pub(crate) fn new(limits: &PublishLimits, now: Instant) -> Limiter {
        Limiter { messages: limits.burst, bytes: limits.bytes_rate, refilled: now, strikes: 0, strikes_since: now }
    }

    /// Takes a publish of `bytes` from the buckets if both allow it. A message larger
    /// than the byte bucket passes when the bucket is full, and leaves it in debt.
    pub(crate) fn publish(&mut self, limits: &PublishLimits, bytes: usize, plain: bool, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.messages = (self.messages + elapsed * limits.rate).min(limits.burst);
        self.bytes = (self.bytes + elapsed * limits.bytes_rate).min(limits.bytes_rate);
        let bytes = bytes as f64;
        let messages_ok = limits.rate <= 0.0 || self.messages >= 1.0;
        let bytes_ok = limits.bytes_rate <= 0.0 || self.bytes >= bytes.min(limits.bytes_rate);
        if messages_ok && bytes_ok {
            self.messages -= 1.0;
            self.bytes -= bytes;
            return Verdict::Allowed;
        }
        if plain {
            return Verdict::Close;
        }
        if now.saturating_duration_since(self.strikes_since) > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = now;
        }
        self.strikes += 1;
        match self.strikes >= STRIKES {
            true => Verdict::Close,
            false => Verdict::Refused,
        }
    }
}

/// Open connections per key (an address, a user), against a maximum (`None`: off,
/// and nothing is counted).
#[derive(Debug)]
pub(crate) struct Counter<K> {
    max: Option<u32>,
    counts: HashMap<K, u32>,
}

impl<K: Hash + Eq> Counter<K> {
    pub(crate) fn new(max: Option<u32>) -> Counter<K> {
        Counter { max, counts: HashMap::new() }
    }

    /// Counts one more connection of `key`, unless it already has the maximum.
    pub(crate) fn try_add(&mut self, key: K) -> bool {
        let Some(max) = self.max else { return true };
        let count = self.counts.entry(key).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// One connection of `key` fewer (one that `try_add` counted).
    pub(crate) fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
    {
        if let Some(count) = self.counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(key);
            }
        }
    }

    /// Connections counted for `key`.
    pub(crate) fn count<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> u32
    where
        K: std::borrow::Borrow<Q>,
    {
        self.counts.get(key).copied().unwrap_or(0)
    }

    pub(crate) fn is_on(&self) -> bool {
        self.max.is_some()
    }
}

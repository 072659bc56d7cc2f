//! The hedge delay: how long a call waits before it is hedged, a percentile of the
//! latencies of the service's recent calls (to response headers, as the client saw
//! them: a call a hedge answered counts with its whole wait, so hedging does not talk
//! the estimate down), never less than a floor.
//!
//! The latencies are kept in a histogram with eight buckets per doubling (each within
//! 12.5% of its value), in two halves of [`HALF`]: the estimate reads both, a new
//! half replaces the older one, so it follows the last 5 to 10 s. Like tower's
//! `hedge`, but the window never goes blind at a rotation.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::policy::{HedgePolicy, Percent};

/// How long each half of the window records.
pub const HALF: Duration = Duration::from_secs(5);
/// Samples the window needs at the very least before it hedges anything.
pub const MIN_SAMPLES: u32 = 20;
/// Buckets from 1 µs up to about 33 s; slower calls count in the last one.
const BUCKETS: usize = 184;

/// Recent latencies of one service.
#[derive(Debug)]
pub struct LatencyWindow {
    /// The older half, then the one recording now.
    halves: [Half; 2],
    /// When the current half started.
    since: Instant,
}

#[derive(Clone, Debug)]
struct Half {
    counts: [u32; BUCKETS],
    total: u32,
}

impl Half {
    const EMPTY: Half = Half { counts: [0; BUCKETS], total: 0 };
}

impl LatencyWindow {
    pub fn new(now: Instant) -> Self {
        Self { halves: [Half::EMPTY, Half::EMPTY], since: now }
    }

    /// Adds a call's latency.
    pub fn record(&mut self, now: Instant, latency: Duration) {
        self.rotate(now);
        let current = &mut self.halves[1];
        let at = bucket(latency.as_micros().try_into().unwrap_or(u64::MAX));
        current.counts[at] = current.counts[at].saturating_add(1);
        current.total = current.total.saturating_add(1);
    }

    /// How long a call covered by `policy` waits before it is hedged: the policy's
    /// percentile of the window, at least `min_delay`. `None` while the window holds
    /// too few calls to tell the percentile (see [`needed`]).
    pub fn delay(&mut self, now: Instant, policy: &HedgePolicy) -> Option<Duration> {
        self.percentile(now, policy.percentile).map(|p| p.max(policy.min_delay))
    }

    /// The latency `percentile` of the window's calls are no slower than (the upper
    /// edge of its bucket).
    pub fn percentile(&mut self, now: Instant, percentile: Percent) -> Option<Duration> {
        self.rotate(now);
        let [older, current] = &self.halves;
        let total = u64::from(older.total) + u64::from(current.total);
        if total < u64::from(needed(percentile)) {
            return None;
        }
        let rank = (total * u64::from(percentile.tenths())).div_ceil(1000).max(1);
        let mut seen = 0;
        for (i, (a, b)) in older.counts.iter().zip(&current.counts).enumerate() {
            seen += u64::from(*a) + u64::from(*b);
            if seen >= rank {
                return Some(Duration::from_micros(upper_edge(i)));
            }
        }
        Some(Duration::from_micros(upper_edge(BUCKETS - 1)))
    }

    /// Starts a new half when the current one is over, dropping the older.
    fn rotate(&mut self, now: Instant) {
        let passed = now.saturating_duration_since(self.since);
        if passed >= 2 * HALF {
            self.halves = [Half::EMPTY, Half::EMPTY];
            self.since = now;
        } else if passed >= HALF {
            self.halves.swap(0, 1);
            self.halves[1] = Half::EMPTY;
            self.since += HALF;
        }
    }
}

/// Calls the window needs for `percentile`: enough that one in a hundred (for p99)
/// lies above it, and at least [`MIN_SAMPLES`].
pub fn needed(percentile: Percent) -> u32 {
    let above = u32::from(1000u16.saturating_sub(percentile.tenths()).max(1));
    1000u32.div_ceil(above).max(MIN_SAMPLES)
}

/// The bucket of a latency in microseconds: exact below 8, then eight per doubling.
fn bucket(micros: u64) -> usize {
    if micros < 8 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let index = (octave - 2) * 8 + ((micros >> (octave - 3)) & 7) as usize;
    index.min(BUCKETS - 1)
}

/// The first latency in microseconds past bucket `index`.
fn upper_edge(index: usize) -> u64 {
    if index < 8 {
        return index as u64 + 1;
    }
    let (octave, sub) = (index / 8 + 2, (index % 8) as u64);
    (9 + sub) << (octave - 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P95: Percent = Percent::from_tenths(950);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_contiguous_and_within_an_eighth() {
        for micros in [0, 7, 8, 9, 15, 16, 17, 100, 999, 1000, 123_456, 9_999_999] {
            let i = bucket(micros);
            assert!(micros < upper_edge(i), "{micros} below its bucket's edge");
            assert!(i == 0 || micros >= upper_edge(i - 1), "{micros} past the previous one");
            assert!(upper_edge(i) as f64 <= (micros as f64 * 1.125).max(micros as f64 + 1.0));
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_the_percentile_of_recent_calls() {
        let mut window = LatencyWindow::new(Instant::now());
        // 1 to 100 ms, one call each: p95 is 95 ms.
        for n in 1..=100 {
            window.record(Instant::now(), ms(n));
        }
        let p95 = window.percentile(Instant::now(), P95).unwrap();
        assert!(p95 >= ms(95) && p95 <= ms(107), "{p95:?}");
        let p50 = window.percentile(Instant::now(), Percent::from_tenths(500)).unwrap();
        assert!(p50 >= ms(50) && p50 <= ms(57), "{p50:?}");
        let policy = HedgePolicy::default();
        assert_eq!(window.delay(Instant::now(), &policy), Some(p95));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_service_is_hedged_no_sooner_than_the_floor() {
        let mut window = LatencyWindow::new(Instant::now());
        for _ in 0..100 {
            window.record(Instant::now(), Duration::from_micros(300));
        }
        let policy = HedgePolicy::default();
        assert_eq!(window.delay(Instant::now(), &policy), Some(policy.min_delay));
        let no_floor = HedgePolicy { min_delay: Duration::ZERO, ..policy };
        let delay = window.delay(Instant::now(), &no_floor).unwrap();
        assert!(delay > Duration::from_micros(300) && delay < Duration::from_micros(340));
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_calls_tell_no_percentile() {
        let mut window = LatencyWindow::new(Instant::now());
        for _ in 0..19 {
            window.record(Instant::now(), ms(1));
        }
        assert_eq!(window.percentile(Instant::now(), P95), None, "19 calls");
        window.record(Instant::now(), ms(1));
        assert!(window.percentile(Instant::now(), P95).is_some(), "20 calls");
        let p99 = Percent::from_tenths(990);
        assert_eq!(window.percentile(Instant::now(), p99), None, "p99 needs 100");
        assert_eq!((needed(p99), needed(Percent::from_tenths(999))), (100, 1000));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_follows_the_last_five_to_ten_seconds() {
        let mut window = LatencyWindow::new(Instant::now());
        for _ in 0..100 {
            window.record(Instant::now(), ms(50));
        }
        // The service turns fast: 4 s later the slow calls still count.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for _ in 0..100 {
            window.record(Instant::now(), ms(1));
        }
        let mixed = window.percentile(Instant::now(), P95).unwrap();
        assert!(mixed >= ms(50), "{mixed:?}");
        // 6 s after they were recorded, a new half has begun: the older one is the
        // fast and slow calls, still read.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(window.percentile(Instant::now(), P95).unwrap() >= ms(50));
        for _ in 0..100 {
            window.record(Instant::now(), ms(1));
        }
        // 11 s on, the half with the slow calls has been dropped.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let fast = window.percentile(Instant::now(), P95).unwrap();
        assert!(fast <= Duration::from_micros(1125), "{fast:?}");
        // After a long silence the window is empty again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(window.percentile(Instant::now(), P95), None);
    }
}

//! The retry budget: retries may add at most `budget_percent` of the requests of the
//! last [`WINDOW`], plus a floor of `min_retries_per_second`, so retries can never
//! turn an overload into a bigger one.
//!
//! Hedges draw on the same count of extra tries: a hedge may be sent only while
//! retries and hedges together stay within `hedge.max_extra_load` of the window's
//! requests (no floor), and a retry only while both together stay within the retry
//! budget. So hedging never adds load past its own share, never takes the room
//! retries need beyond it, and the two together never pass the larger of the two.

use std::time::{Duration, Instant};

use crate::config::policy::Percent;

/// How far back the budget looks.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    floor_per_second: u32,
    /// Requests, and extra tries (retries and hedges), per second of the window,
    /// oldest overwritten first.
    slots: [(u32, u32); SLOTS],
    /// The second `slots[current]` counts.
    second: u64,
    current: usize,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(percent: u32, floor_per_second: u32, now: Instant) -> Self {
        Self {
            percent,
            floor_per_second,
            slots: [(0, 0); SLOTS],
            second: 0,
            current: 0,
            epoch: now,
        }
    }

    /// Counts a request (its first try).
    pub fn request(&mut self, now: Instant) {
        self.advance(now);
        self.slots[self.current].0 += 1;
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (percent, floor) = (u64::from(self.percent), u64::from(self.floor_per_second));
        self.take(now, |requests| requests * percent / 100 + floor * WINDOW.as_secs())
    }

    /// Takes a hedge: `false` when retries and hedges of the window already add
    /// `max_extra_load` of its requests.
    pub fn try_hedge(&mut self, now: Instant, max_extra_load: Percent) -> bool {
        self.take(now, |requests| requests * u64::from(max_extra_load.tenths()) / 1000)
    }

    /// Counts one extra try if the window's extra tries are below `allowed(requests)`.
    fn take(&mut self, now: Instant, allowed: impl Fn(u64) -> u64) -> bool {
        self.advance(now);
        let (requests, extra) = self
            .slots
            .iter()
            .fold((0u64, 0u64), |(a, b), (r, t)| (a + u64::from(*r), b + u64::from(*t)));
        if extra >= allowed(requests) {
            return false;
        }
        self.slots[self.current].1 += 1;
        true
    }

    /// Moves the window to `now`, clearing the seconds it passed.
    fn advance(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let passed = second.saturating_sub(self.second).min(SLOTS as u64);
        for _ in 0..passed {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = (0, 0);
        }
        self.second = second.max(self.second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_plus_the_floor() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(20, 1, start);
        let mut granted = 0;
        for i in 0..1000 {
            let now = start + Duration::from_millis(i * 5); // 200 requests per second
            budget.request(now);
            // Every request fails and wants two retries.
            granted += u32::from(budget.try_retry(now)) + u32::from(budget.try_retry(now));
        }
        // 5 s: 1000 requests → 200 retries from the share, 10 from the floor.
        assert!(granted <= 210, "{granted}");
        assert!(granted >= 190, "the budget is used, not just refused: {granted}");
    }

    #[test]
    fn the_floor_lets_a_quiet_service_retry_and_the_window_forgets() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(20, 1, start);
        let granted = (0..30).filter(|_| budget.try_retry(start)).count();
        assert_eq!(granted, 10, "1 per second over the 10 s window");
        assert!(!budget.try_retry(start + Duration::from_secs(5)));
        assert!(budget.try_retry(start + WINDOW + Duration::from_secs(1)), "old retries expire");
    }

    /// Hedges and retries at 200 calls/s, under paused time (the clock of the request
    /// path).
    #[tokio::test(start_paused = true)]
    async fn hedges_stay_within_their_share_and_share_the_room_with_retries() {
        let ten = Percent::from_tenths(100);
        let mut budget = RetryBudget::new(20, 10, tokio::time::Instant::now().into_std());
        let mut hedges = 0;
        for _ in 0..2000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = tokio::time::Instant::now().into_std();
            budget.request(now);
            // Every call wants a hedge.
            hedges += u32::from(budget.try_hedge(now, ten));
        }
        // 10 s of 200 calls/s: hedges never pass 10% of the window's calls, and
        // unlike retries they have no floor.
        assert!((190..=200).contains(&hedges), "{hedges} hedges for 2000 calls");

        // Retries that already spent 10% leave no room for hedges, but hedges that
        // spent 10% still leave retries the rest of theirs.
        let start = tokio::time::Instant::now().into_std();
        let mut budget = RetryBudget::new(20, 0, start);
        (0..100).for_each(|_| budget.request(start));
        assert_eq!((0..50).filter(|_| budget.try_retry(start)).count(), 20);
        assert!(!budget.try_hedge(start, ten), "retries took the hedges' share");
        let mut budget = RetryBudget::new(20, 0, start);
        (0..100).for_each(|_| budget.request(start));
        assert_eq!((0..50).filter(|_| budget.try_hedge(start, ten)).count(), 10);
        assert_eq!((0..50).filter(|_| budget.try_retry(start)).count(), 10, "20% in all");
        tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
        let later = tokio::time::Instant::now().into_std();
        (0..100).for_each(|_| budget.request(later));
        assert!(budget.try_hedge(later, ten), "the window forgets old hedges");
    }
}

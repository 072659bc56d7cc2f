//! The retry budget: retries may add at most `budget_percent` of the requests of the
//! last [`WINDOW`], plus a floor of `min_retries_per_second`, so retries can never
//! turn an overload into a bigger one.

use std::time::{Duration, Instant};

/// How far back the budget looks.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    floor_per_second: u32,
    /// Requests and retries per second of the window, oldest overwritten first.
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
        self.advance(now);
        let (requests, retries) = self
            .slots
            .iter()
            .fold((0u64, 0u64), |(a, b), (r, t)| (a + u64::from(*r), b + u64::from(*t)));
        let allowed = requests * u64::from(self.percent) / 100
            + u64::from(self.floor_per_second) * WINDOW.as_secs();
        if retries >= allowed {
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
}

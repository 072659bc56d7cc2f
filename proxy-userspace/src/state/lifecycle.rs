//! The endpoint lifecycle as a pure state machine: what discovery, health checks,
//! outlier detection and the drain deadline have said of an endpoint is kept in a
//! [`Record`], and its [`Lifecycle`] state is a function of that record and the time.
//!
//! - New: Warming. Ready only once discovery says ready AND a health check passed
//!   (no request ever reaches a Pod whose app is not serving yet).
//! - Ready → Unhealthy after `unhealthy_threshold` failed checks in a row (a Watch
//!   update saying NOT_SERVING at once); back after `healthy_threshold` passes.
//! - Ready → Ejected by outlier detection until the ejection time is over.
//! - Terminating or removed → Draining, whatever the state; Draining → Gone once
//!   nothing is in flight to it or the drain deadline passes.
//! - Cold start: an endpoint known when its service starts (on the first connection)
//!   and that discovery calls ready may be [`Record::presume_from`] a moment one
//!   check's time later: if no check has said anything by then, it is Ready on
//!   discovery's word, as kube-proxy would route to it; its first failed check takes
//!   it out again. Endpoints added later always wait for a passing check.

use std::time::{Duration, Instant};

use super::Lifecycle;
use crate::{config::policy::HealthPolicy, discovery::Condition};

/// What discovery says, with removal as a condition of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovered {
    Listed(Condition),
    Removed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// No check has passed yet.
    Unproven,
    Passing,
    Failing,
}

#[derive(Clone, Debug)]
pub struct Record {
    discovered: Discovered,
    health: Health,
    passes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    draining_since: Option<Instant>,
    /// From then on, with no verdict yet, discovery's ready is taken as proven.
    presumed_from: Option<Instant>,
}

/// What a health check said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Pass,
    Fail,
    /// A failure that counts at once (a Watch update saying NOT_SERVING).
    FailNow,
}

impl Record {
    /// A new endpoint; with health checks off it is proven on arrival.
    pub fn new(condition: Condition, checked: bool, now: Instant) -> Self {
        let mut record = Self {
            discovered: Discovered::Listed(condition),
            health: if checked { Health::Unproven } else { Health::Passing },
            passes: 0,
            failures: 0,
            ejected_until: None,
            draining_since: None,
            presumed_from: None,
        };
        record.discover(Discovered::Listed(condition), now);
        record
    }

    pub fn discover(&mut self, discovered: Discovered, now: Instant) {
        if discovered != Discovered::Listed(Condition::Ready) {
            // Ready again later, it is a new endpoint to discovery: checked first.
            self.presumed_from = None;
        }
        self.discovered = discovered;
        let leaving =
            matches!(discovered, Discovered::Removed | Discovered::Listed(Condition::Terminating));
        self.draining_since = if leaving { self.draining_since.or(Some(now)) } else { None };
    }

    /// Takes discovery's ready for proven from `from` on, unless a check speaks first.
    pub fn presume_from(&mut self, from: Instant) {
        let ready = self.discovered == Discovered::Listed(Condition::Ready);
        if ready && self.health == Health::Unproven {
            self.presumed_from = Some(from);
        }
    }

    /// Discovery calls it ready and its first check has not answered, before the
    /// moment it would be presumed healthy: a cold start waits for it.
    pub fn awaiting_first_check(&self, now: Instant) -> bool {
        self.discovered == Discovered::Listed(Condition::Ready)
            && self.health == Health::Unproven
            && self.presumed_from.is_some_and(|from| now < from)
    }

    pub fn check(&mut self, check: Check, policy: &HealthPolicy) {
        self.presumed_from = None;
        if check == Check::Pass {
            self.passes += 1;
            self.failures = 0;
            let proven = self.health == Health::Unproven || self.passes >= policy.healthy_threshold;
            if proven {
                self.health = Health::Passing;
            }
            return;
        }
        self.failures += 1;
        self.passes = 0;
        let failed = check == Check::FailNow || self.failures >= policy.unhealthy_threshold;
        if self.health == Health::Passing && failed {
            self.health = Health::Failing;
        }
    }

    pub fn eject(&mut self, until: Instant) {
        self.ejected_until = Some(until);
    }

    /// The endpoint's state at `now`; `idle` says nothing is in flight to it.
    pub fn state(&self, now: Instant, drain: Duration, idle: bool) -> Lifecycle {
        if let Some(since) = self.draining_since {
            return if idle || now >= since + drain {
                Lifecycle::Gone
            } else {
                Lifecycle::Draining
            };
        }
        let presumed = self.presumed_from.is_some_and(|from| now >= from);
        let health = match self.health {
            Health::Unproven if presumed => Health::Passing,
            health => health,
        };
        match (self.discovered, health) {
            (Discovered::Listed(Condition::NotReady), _) | (_, Health::Unproven) => {
                Lifecycle::Warming
            }
            (_, Health::Failing) => Lifecycle::Unhealthy,
            _ if self.ejected_until.is_some_and(|until| now < until) => Lifecycle::Ejected,
            _ => Lifecycle::Ready,
        }
    }

    /// The next moment the state may change with no event, if it is after `now`: an
    /// ejection or a drain ending, a presumption starting.
    pub fn next_deadline(&self, now: Instant, drain: Duration) -> Option<Instant> {
        let deadlines = match self.draining_since {
            Some(since) => [Some(since + drain), None, None],
            None => [self.ejected_until, self.presumed_from, None],
        };
        deadlines.into_iter().flatten().filter(|&at| at > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAIN: Duration = Duration::from_secs(10);

    fn policy() -> HealthPolicy {
        HealthPolicy::default()
    }

    #[test]
    fn a_new_endpoint_warms_until_ready_and_its_first_check_passes() {
        let now = Instant::now();
        let mut r = Record::new(Condition::Ready, true, now);
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Warming);
        r.check(Check::Fail, &policy());
        assert_eq!(
            r.state(now, DRAIN, false),
            Lifecycle::Warming,
            "failing while warming stays warming"
        );
        r.check(Check::Pass, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Ready, "one pass proves a new endpoint");

        let mut not_ready = Record::new(Condition::NotReady, true, now);
        not_ready.check(Check::Pass, &policy());
        assert_eq!(not_ready.state(now, DRAIN, false), Lifecycle::Warming, "discovery must agree");
        not_ready.discover(Discovered::Listed(Condition::Ready), now);
        assert_eq!(not_ready.state(now, DRAIN, false), Lifecycle::Ready);

        let unchecked = Record::new(Condition::Ready, false, now);
        assert_eq!(unchecked.state(now, DRAIN, false), Lifecycle::Ready);
    }

    #[test]
    fn thresholds_move_between_ready_and_unhealthy_and_watch_counts_at_once() {
        let now = Instant::now();
        let mut r = Record::new(Condition::Ready, true, now);
        r.check(Check::Pass, &policy());
        r.check(Check::Fail, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Ready, "one failure of two");
        r.check(Check::Fail, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Unhealthy);
        r.check(Check::Pass, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Unhealthy, "one pass of two");
        r.check(Check::Pass, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Ready);
        r.check(Check::FailNow, &policy());
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Unhealthy, "NOT_SERVING from Watch");
    }

    #[test]
    fn ejection_ends_on_time_and_draining_ends_when_idle_or_at_the_deadline() {
        let now = Instant::now();
        let mut r = Record::new(Condition::Ready, false, now);
        r.eject(now + Duration::from_secs(15));
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Ejected);
        assert_eq!(r.next_deadline(now, DRAIN), Some(now + Duration::from_secs(15)));
        assert_eq!(r.state(now + Duration::from_secs(15), DRAIN, false), Lifecycle::Ready);

        r.discover(Discovered::Listed(Condition::Terminating), now);
        assert_eq!(r.state(now, DRAIN, false), Lifecycle::Draining);
        assert_eq!(r.state(now, DRAIN, true), Lifecycle::Gone, "nothing in flight");
        assert_eq!(r.state(now + DRAIN, DRAIN, false), Lifecycle::Gone, "deadline");
        r.discover(Discovered::Removed, now + Duration::from_secs(1));
        let drain_end = Some(now + DRAIN);
        assert_eq!(r.next_deadline(now, DRAIN), drain_end, "the drain started at termination");
        let later = now + Duration::from_secs(16);
        r.discover(Discovered::Listed(Condition::Ready), later);
        assert_eq!(r.state(later, DRAIN, true), Lifecycle::Ready, "listed again: back in rotation");
    }

    #[test]
    fn at_a_cold_start_discovery_is_trusted_after_one_check_time_unless_a_check_spoke() {
        let now = Instant::now();
        let gate = now + Duration::from_secs(1);
        let mut silent = Record::new(Condition::Ready, true, now);
        silent.presume_from(gate);
        assert!(silent.awaiting_first_check(now));
        assert_eq!(silent.state(now, DRAIN, true), Lifecycle::Warming);
        assert_eq!(silent.next_deadline(now, DRAIN), Some(gate));
        assert!(!silent.awaiting_first_check(gate));
        assert_eq!(silent.state(gate, DRAIN, true), Lifecycle::Ready, "as kube-proxy would");
        silent.check(Check::Fail, &policy());
        assert_eq!(silent.state(gate, DRAIN, true), Lifecycle::Warming, "a failure takes it out");

        let mut refused = Record::new(Condition::Ready, true, now);
        refused.presume_from(gate);
        refused.check(Check::Fail, &policy());
        assert!(!refused.awaiting_first_check(now), "its check answered");
        assert_eq!(refused.state(gate, DRAIN, true), Lifecycle::Warming, "never presumed");

        let mut not_ready = Record::new(Condition::NotReady, true, now);
        not_ready.presume_from(gate);
        assert!(!not_ready.awaiting_first_check(now));
        assert_eq!(not_ready.state(gate, DRAIN, true), Lifecycle::Warming, "discovery must agree");
    }
}

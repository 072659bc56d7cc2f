//! Passive outlier detection with Envoy's semantics: consecutive local-origin
//! failures (refused, reset, timeout) are counted apart from upstream errors
//! (5xx, gRPC UNAVAILABLE as 503); reaching a threshold ejects the endpoint for
//! `base_ejection_time` × the times it was ejected (capped), never beyond
//! `max_ejection_percent` of the service. Pure: the owner feeds it outcomes and time.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{config::policy::OutlierPolicy, state::Outcome};

#[derive(Debug, Default)]
struct Counters {
    local: u32,
    gateway: u32,
    errors_5xx: u32,
    /// The ejection multiplier: ejections not yet forgiven.
    ejections: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Detector {
    endpoints: HashMap<SocketAddr, Counters>,
    last_interval: Option<Instant>,
}

impl Detector {
    /// Forgets an endpoint that left the service.
    pub fn forget(&mut self, addr: &SocketAddr) {
        self.endpoints.remove(addr);
    }

    /// Counts one outcome of a request to `addr`, of the service's `total` endpoints.
    /// Returns the end of an ejection when this outcome ejects the endpoint.
    pub fn observe(
        &mut self,
        addr: SocketAddr,
        outcome: &Outcome,
        total: usize,
        now: Instant,
        policy: &OutlierPolicy,
    ) -> Option<Instant> {
        if !policy.enabled {
            return None;
        }
        let ejected = self.ejected(now);
        let c = self.endpoints.entry(addr).or_default();
        if c.ejected_until.is_some_and(|until| now < until) {
            return None;
        }
        let trip = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        let tripped = match *outcome {
            Outcome::LocalOrigin(_) if policy.split_external_local_origin_errors => {
                c.local += 1;
                trip(c.local, policy.consecutive_local_origin_failure)
            }
            Outcome::LocalOrigin(_) => count_upstream(c, 503, policy),
            Outcome::Response { status, .. } => {
                c.local = 0;
                count_upstream(c, status, policy)
            }
        };
        if !tripped || !room_for_one_more(ejected, total, policy.max_ejection_percent) {
            return None;
        }
        c.ejections += 1;
        let until = now + ejection_time(c.ejections, policy);
        (c.local, c.gateway, c.errors_5xx) = (0, 0, 0);
        c.ejected_until = Some(until);
        Some(until)
    }

    /// At each outlier interval, an endpoint in rotation has one ejection forgiven.
    pub fn tick(&mut self, now: Instant, policy: &OutlierPolicy) {
        let due = self.last_interval.is_none_or(|last| now >= last + policy.interval);
        if !due {
            return;
        }
        self.last_interval = Some(now);
        for c in self.endpoints.values_mut() {
            match c.ejected_until {
                // Back in rotation: forgiveness starts from the next interval.
                Some(until) if now >= until => c.ejected_until = None,
                Some(_) => {}
                None => c.ejections = c.ejections.saturating_sub(1),
            }
        }
    }

    /// When [`Detector::tick`] next has work: the end of the current interval, while
    /// an ejection is to end or to be forgiven.
    pub fn next_due(&self, policy: &OutlierPolicy) -> Option<Instant> {
        let pending = self.endpoints.values().any(|c| c.ejections > 0 || c.ejected_until.is_some());
        self.last_interval.filter(|_| pending).map(|last| last + policy.interval)
    }

    /// How often `addr` was ejected and not yet forgiven.
    pub fn ejections(&self, addr: &SocketAddr) -> u32 {
        self.endpoints.get(addr).map_or(0, |c| c.ejections)
    }

    fn ejected(&self, now: Instant) -> usize {
        self.endpoints.values().filter(|c| c.ejected_until.is_some_and(|u| now < u)).count()
    }
}

fn count_upstream(c: &mut Counters, status: u16, policy: &OutlierPolicy) -> bool {
    let trip = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
    if !(500..=599).contains(&status) {
        (c.gateway, c.errors_5xx) = (0, 0);
        return false;
    }
    c.errors_5xx += 1;
    if (502..=504).contains(&status) {
        c.gateway += 1;
    } else {
        c.gateway = 0;
    }
    trip(c.gateway, policy.consecutive_gateway_failure)
        || trip(c.errors_5xx, policy.consecutive_5xx)
}

/// Whether one more endpoint may be ejected: always the first, then only while the
/// ejected share stays within `max_percent`.
fn room_for_one_more(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * max_percent as usize
}

/// How long the `n`th unforgiven ejection lasts.
pub fn ejection_time(n: u32, policy: &OutlierPolicy) -> Duration {
    policy.base_ejection_time.saturating_mul(n).min(policy.max_ejection_time)
}

#[cfg(test)]
mod tests;

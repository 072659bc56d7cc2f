//! Selection: which Ready endpoint gets this request. Power of two choices over
//! peak-EWMA latency weighted by requests in flight: pick two endpoints at random and
//! take the cheaper, so a slow or busy endpoint gets less, without herding every
//! request onto the one that looked best a moment ago.

pub mod pewma;

use std::{
    cell::Cell,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use crate::state::{Endpoint, EndpointSet};

/// The selection seam: the proxy asks it for an endpoint per request (per connection
/// for opaque TCP).
pub trait Select: Send + Sync {
    /// A Ready endpoint not in `tried`, or `None` when there is none.
    fn pick(&self, set: &EndpointSet, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>>;
}

/// Power of two choices over [`cost`].
#[derive(Debug, Default)]
pub struct P2c;

impl Select for P2c {
    fn pick(&self, set: &EndpointSet, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
        let fresh = |e: &&Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        let n = set.ready.iter().filter(fresh).count();
        let nth = |i: usize| set.ready.iter().filter(fresh).nth(i).cloned();
        match n {
            0 => None,
            1 => nth(0),
            _ => {
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                // `a` is a random pick: it stays unless `b` is clearly cheaper, so
                // endpoints within the tolerance share evenly.
                Some(if cost(&b) * TOLERANCE < cost(&a) { b } else { a })
            }
        }
    }
}

/// Latency differences smaller than this are noise (scheduling jitter on a busy
/// node), not a slower endpoint: it is added to every estimate so that requests in
/// flight decide between endpoints that are about as fast.
pub const NOISE: Duration = Duration::from_millis(5);

/// How much cheaper one of the two picks must be to win over the other: closer
/// costs are a coin toss (the picks are random), so noise does not herd requests.
const TOLERANCE: f64 = 1.25;

/// Expected wait at an endpoint: its latency estimate (plus [`NOISE`]) times the
/// requests that would be ahead of this one.
pub fn cost(endpoint: &Endpoint) -> f64 {
    let latency = (pewma::estimate_ns(&endpoint.load) + NOISE.as_nanos() as u64) as f64;
    latency * f64::from(endpoint.load.outstanding.load(Ordering::Relaxed) + 1)
}

/// Counts a request (or connection) in flight to an endpoint for as long as it lives:
/// the load selection weighs, and what a drain waits for.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.load.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A uniform number in `0..n` from a per-thread xorshift generator: selection needs
/// speed and spread, not cryptographic quality.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % n as u64) as usize
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id()) | 1
}

#[cfg(test)]
mod tests;

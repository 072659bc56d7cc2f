//! One backend address of one service, shared by the lifecycle owner (which alone
//! writes its state) and the request path (which reads the state and keeps the load).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
};

use super::Outcome;

/// Where an endpoint is in its life. Only `Ready` endpoints get new requests.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lifecycle {
    /// Known, not yet proven healthy: no traffic.
    Warming = 0,
    Ready,
    /// Failed its active health check enough times: no traffic until it passes again.
    Unhealthy,
    /// Ejected by outlier detection until its ejection time is over.
    Ejected,
    /// Terminating or removed: no new requests; in-flight ones may finish until the
    /// drain deadline.
    Draining,
    /// Evicted: connections to it are closed, in userspace and in the kernel.
    Gone,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 6] = [
        Lifecycle::Warming,
        Lifecycle::Ready,
        Lifecycle::Unhealthy,
        Lifecycle::Ejected,
        Lifecycle::Draining,
        Lifecycle::Gone,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Lifecycle::Warming => "warming",
            Lifecycle::Ready => "ready",
            Lifecycle::Unhealthy => "unhealthy",
            Lifecycle::Ejected => "ejected",
            Lifecycle::Draining => "draining",
            Lifecycle::Gone => "gone",
        }
    }

    fn from_u8(value: u8) -> Self {
        Self::ALL.get(usize::from(value)).copied().unwrap_or(Lifecycle::Gone)
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    lifecycle: AtomicU8,
    pub load: Load,
    /// A failure was reported since the last success that reached the owner.
    failing: AtomicBool,
}

/// What the request path measures of an endpoint, for selection.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests sent and not yet answered.
    pub outstanding: AtomicU32,
    /// Opaque-TCP connections open to the endpoint.
    pub connections: AtomicU32,
    /// Peak-EWMA of response latency, in nanoseconds (see `balance::pewma`).
    pub latency_ns: AtomicU64,
    /// When `latency_ns` was last updated, in nanoseconds since the process started.
    pub updated_ns: AtomicU64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, lifecycle: Lifecycle) -> Arc<Self> {
        Arc::new(Self {
            addr,
            lifecycle: AtomicU8::new(lifecycle as u8),
            load: Load::default(),
            failing: AtomicBool::new(false),
        })
    }

    /// Whether `outcome` must reach the owner. A success only resets the failure
    /// counts of outlier detection, so it need not (a wakeup of another thread per
    /// call) unless a failure was reported since the last success that did.
    pub(crate) fn worth_reporting(&self, outcome: &Outcome) -> bool {
        if outcome.is_success() {
            self.failing.swap(false, Ordering::AcqRel)
        } else {
            self.failing.store(true, Ordering::Release);
            true
        }
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    /// Only the service's lifecycle owner calls this.
    pub(crate) fn set_lifecycle(&self, lifecycle: Lifecycle) {
        self.lifecycle.store(lifecycle as u8, Ordering::Release);
    }
}

/// A service's endpoints at one moment, published as a whole.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// The endpoints new requests may go to.
    pub ready: Vec<Arc<Endpoint>>,
    /// Every endpoint not yet gone, in any state.
    pub all: Vec<Arc<Endpoint>>,
    /// The service just started and none of its endpoints is Ready yet, but some
    /// that discovery calls ready still await their first health check: a new
    /// connection waits for it (see [`super::InUse::warmed`]).
    pub starting: bool,
}

impl EndpointSet {
    pub fn new(all: Vec<Arc<Endpoint>>) -> Self {
        let ready = all.iter().filter(|e| e.lifecycle() == Lifecycle::Ready).cloned().collect();
        Self { ready, all, starting: false }
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<Endpoint>> {
        self.all.iter().find(|e| e.addr == *addr)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::LocalOriginFailure;

    #[test]
    fn only_failures_and_the_first_success_after_them_reach_the_owner() {
        let endpoint = Endpoint::new(([10, 0, 0, 1], 80).into(), Lifecycle::Ready);
        let ok = Outcome::Response { status: 200, latency: Duration::from_millis(1) };
        let unavailable = Outcome::Response { status: 503, latency: Duration::from_millis(1) };
        let reset = Outcome::LocalOrigin(LocalOriginFailure::Reset);
        let sent: Vec<bool> = [ok, ok, reset, unavailable, ok, ok, reset, ok]
            .iter()
            .map(|o| endpoint.worth_reporting(o))
            .collect();
        assert_eq!(sent, [false, false, true, true, true, false, true, true]);
    }
}

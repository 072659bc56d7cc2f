//! Demand: whether a service is in use, so that only services Pods on this node use
//! pay for a lifecycle owner, health checks and upstream connections.
//!
//! Every known service's VIP is steered by the kernel; its [`Demand`] counts the
//! connections open to it. The first connection starts the service (see
//! [`super::State::open`]); once no connection was open for the idle time, the
//! sweep ([`Idleness`], one tick for every service) stops it again.

use std::{
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::Service;
use crate::{
    config::{Protocol, TcpMode},
    discovery::DesiredService,
};

/// How long a service stays started with no connection, unless configured.
pub const DEFAULT_IDLE: Duration = crate::config::DEFAULT_SERVICE_IDLE;

/// What the request path tells a service about its use: two atomic increments per
/// connection, no lock and no clock.
#[derive(Debug, Default)]
pub struct Demand {
    /// Connections open now.
    open: AtomicUsize,
    /// Connections ever opened: the sweep sees a connection that came and went
    /// between two of its looks.
    opened: AtomicU64,
    /// The service's lifecycle owner runs.
    active: AtomicBool,
}

impl Demand {
    /// Whether the service is started (its endpoints are checked and balanced).
    pub fn active(&self) -> bool {
        self.active.load(SeqCst)
    }

    pub(super) fn set_active(&self, active: bool) {
        self.active.store(active, SeqCst);
    }

    /// Marks the service stopped unless a connection is open; false (and still
    /// active) if one is. Paired with [`InUse::new`], which counts the connection
    /// before it looks at `active`: one of the two always sees the other.
    pub(super) fn try_stop(&self) -> bool {
        self.active.store(false, SeqCst);
        if self.open.load(SeqCst) > 0 {
            self.active.store(true, SeqCst);
            return false;
        }
        true
    }

    fn snapshot(&self) -> (usize, u64) {
        (self.open.load(SeqCst), self.opened.load(SeqCst))
    }
}

/// One connection to a service, counted until it drops.
#[derive(Debug)]
pub struct InUse(Arc<Service>);

impl InUse {
    pub(super) fn new(service: Arc<Service>) -> Self {
        service.demand.open.fetch_add(1, SeqCst);
        service.demand.opened.fetch_add(1, SeqCst);
        Self(service)
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.0
    }

    /// Waits while the service is starting cold: until one endpoint passed its first
    /// health check, every endpoint discovery calls ready had its first verdict, or
    /// one check's time (`health.timeout`) is over. Returns at once otherwise.
    pub async fn warmed(&self) {
        let limit = self.0.policy().health.timeout + STARTING_SLACK;
        let mut changes = self.0.watch_endpoints();
        let _ = tokio::time::timeout(limit, changes.wait_for(|set| !set.starting)).await;
    }
}

/// Beyond one check's time, how long a connection waits for a starting owner that
/// is late to say so (a busy runtime), before it is served with what there is.
const STARTING_SLACK: Duration = Duration::from_millis(500);

impl Deref for InUse {
    type Target = Arc<Service>;

    fn deref(&self) -> &Arc<Service> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.demand.open.fetch_sub(1, SeqCst);
    }
}

/// Whether a service counts as in use whatever its connections: one the kernel
/// balances by itself (`tcp_mode: kernel`) never reaches the agent on connect, yet its
/// endpoints must be checked.
pub fn always_in_use(service: &DesiredService) -> bool {
    service.protocol == Protocol::Tcp && service.policy.tcp_mode == TcpMode::Kernel
}

/// The sweep's view of one started service: since when it has had no connection.
#[derive(Clone, Copy, Debug)]
pub struct Idleness {
    /// `opened` at the last look.
    opened: u64,
    /// Since when no connection was open, as far as the looks tell.
    since: Instant,
}

impl Idleness {
    /// A service started at `now`.
    pub fn new(demand: &Demand, now: Instant) -> Self {
        Self { opened: demand.snapshot().1, since: now }
    }

    /// Takes a look at `now`; true once no connection was open (nor opened) for
    /// `idle`. A look every `idle / 10` or so stops a service between `idle` and
    /// `idle` plus one look's period after its last connection closed.
    pub fn expired(&mut self, demand: &Demand, now: Instant, idle: Duration) -> bool {
        let (open, opened) = demand.snapshot();
        if open > 0 || opened != self.opened {
            *self = Self { opened, since: now };
            return false;
        }
        now.duration_since(self.since) >= idle
    }
}

/// How often the sweep looks: a tenth of the idle time, from 100 ms to 30 s.
pub fn sweep_period(idle: Duration) -> Duration {
    (idle / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_last_look_that_saw_use() {
        let demand = Demand::default();
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        let mut idleness = Idleness::new(&demand, start);
        assert!(!idleness.expired(&demand, start + Duration::from_secs(59), idle));
        assert!(idleness.expired(&demand, start + idle, idle));

        // A connection that came and went between two looks restarts the count.
        let mut idleness = Idleness::new(&demand, start);
        demand.opened.fetch_add(1, SeqCst);
        assert!(!idleness.expired(&demand, start + idle, idle));
        assert!(!idleness.expired(&demand, start + idle * 2 - Duration::from_secs(1), idle));
        assert!(idleness.expired(&demand, start + idle * 2, idle));

        // One held open keeps it in use however long.
        demand.open.fetch_add(1, SeqCst);
        assert!(!idleness.expired(&demand, start + idle * 10, idle));
        demand.open.fetch_sub(1, SeqCst);
        assert!(!idleness.expired(&demand, start + idle * 10, idle), "closed just now");
        assert!(idleness.expired(&demand, start + idle * 11, idle));
    }

    #[test]
    fn a_stop_never_wins_over_an_open_connection() {
        let demand = Demand::default();
        demand.set_active(true);
        demand.open.fetch_add(1, SeqCst);
        assert!(!demand.try_stop());
        assert!(demand.active(), "still started");
        demand.open.fetch_sub(1, SeqCst);
        assert!(demand.try_stop());
        assert!(!demand.active());
    }

    #[test]
    fn the_sweep_looks_a_tenth_of_the_idle_time_within_bounds() {
        assert_eq!(sweep_period(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(sweep_period(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(sweep_period(Duration::from_millis(50)), Duration::from_millis(100));
    }
}

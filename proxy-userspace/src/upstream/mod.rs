//! Upstream connections per service: one [`Upstream`] per endpoint, created on first
//! use and retired or closed as the endpoint's lifecycle says. A Draining endpoint
//! gets no new requests and its connections close once idle; a Gone endpoint's
//! connections close at once, failing what is still in flight so it can be retried,
//! and ending the streams and tunnels still open on them.

mod conn;
mod http1;
mod socket;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Instant,
};

pub use conn::{KEEPALIVE, SendError, Upstream, h2_client};
pub use http1::is_upgrade;

use crate::{
    balance::{P2c, Select},
    hedge::LatencyWindow,
    metrics::{CallMetrics, Metrics},
    retry::RetryBudget,
    state::{Lifecycle, Service},
};

/// Connections per worker (see [`crate::workers::current`]) and endpoint.
type Upstreams = HashMap<(Option<usize>, SocketAddr), Arc<Upstream>>;

/// What the proxy keeps per service besides its state: selection, the retry budget
/// (shared by hedges), the latencies hedging is timed by, and the endpoints'
/// connections.
pub struct Balancer {
    pub service: Arc<Service>,
    pub metrics: Arc<Metrics>,
    /// The service's per-call series.
    pub calls: Arc<CallMetrics>,
    pub select: Box<dyn Select>,
    budget: Mutex<RetryBudget>,
    latencies: Mutex<LatencyWindow>,
    /// Opaque-TCP connections allowed to one endpoint at once.
    pub connection_cap: u32,
    /// Each worker dials its own, so a call and its endpoint connection share a thread.
    upstreams: Mutex<Upstreams>,
}

impl Balancer {
    /// A balancer for `service`, with a task that follows its endpoints' lifecycle.
    pub fn new(service: Arc<Service>, metrics: Arc<Metrics>, connection_cap: u32) -> Arc<Self> {
        let retry = service.policy().retry.clone();
        let balancer = Arc::new(Self {
            calls: Arc::new(metrics.calls(&service.name, service.protocol)),
            service,
            metrics,
            select: Box::new(P2c),
            connection_cap,
            budget: Mutex::new(RetryBudget::new(
                retry.budget_percent,
                retry.min_retries_per_second,
                Instant::now(),
            )),
            latencies: Mutex::new(LatencyWindow::new(tokio::time::Instant::now())),
            upstreams: Mutex::default(),
        });
        tokio::spawn(follow_lifecycle(Arc::downgrade(&balancer)));
        balancer
    }

    /// The endpoint's connections of the worker this runs on.
    pub fn upstream(&self, addr: SocketAddr) -> Arc<Upstream> {
        let key = (crate::workers::current(), addr);
        self.upstreams().entry(key).or_insert_with(|| Upstream::new(addr)).clone()
    }

    /// The retry budget (never held across an await).
    pub fn budget(&self) -> MutexGuard<'_, RetryBudget> {
        crate::sync::lock(&self.budget)
    }

    /// The latencies of recent hedged-or-hedgeable calls (never held across an await).
    pub fn latencies(&self) -> MutexGuard<'_, LatencyWindow> {
        crate::sync::lock(&self.latencies)
    }

    fn upstreams(&self) -> MutexGuard<'_, Upstreams> {
        crate::sync::lock(&self.upstreams)
    }

    /// Retires connections to endpoints that left rotation and closes those to
    /// endpoints that are gone.
    fn sweep(&self) {
        let set = self.service.endpoints();
        self.upstreams().retain(|(_, addr), upstream| match set.get(addr).map(|e| e.lifecycle()) {
            Some(Lifecycle::Ready) => true,
            Some(Lifecycle::Gone) | None => {
                upstream.close();
                false
            }
            Some(_) => {
                upstream.retire();
                true
            }
        });
    }
}

async fn follow_lifecycle(balancer: Weak<Balancer>) {
    let Some(mut changes) = balancer.upgrade().map(|b| b.service.watch_endpoints()) else {
        return;
    };
    while changes.changed().await.is_ok() {
        match balancer.upgrade() {
            Some(balancer) => balancer.sweep(),
            None => return,
        }
    }
}

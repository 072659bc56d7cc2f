//! One service VIP as the request path sees it: its policy and a snapshot of its
//! endpoints, replaced as a whole by its lifecycle owner, and its [`Demand`]. A
//! service nobody uses costs this struct and nothing else: the outcome queue comes
//! with its owner.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, watch};

use super::{Endpoint, EndpointSet, Outcome, demand::Demand};
use crate::config::{Policy, Protocol};

/// How many outcomes may wait for the owner before new ones are dropped (the request
/// path never blocks on reporting).
pub const OUTCOME_QUEUE: usize = 4096;

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    policy: ArcSwap<Policy>,
    endpoints: ArcSwap<EndpointSet>,
    changes: watch::Sender<Arc<EndpointSet>>,
    /// To the lifecycle owner, while there is one.
    outcomes: ArcSwapOption<mpsc::Sender<(Arc<Endpoint>, Outcome)>>,
    next: AtomicUsize,
    pub demand: Demand,
}

/// What the owner of a service reads the request path's outcomes from.
pub type Reports = mpsc::Receiver<(Arc<Endpoint>, Outcome)>;

impl Service {
    /// A service with no endpoints, not started.
    pub(crate) fn new(
        name: &str,
        vip: SocketAddr,
        protocol: Protocol,
        policy: Policy,
    ) -> Arc<Self> {
        let empty = Arc::new(EndpointSet::default());
        Arc::new(Self {
            name: name.into(),
            vip,
            protocol,
            policy: ArcSwap::from_pointee(policy),
            endpoints: ArcSwap::new(empty.clone()),
            changes: watch::Sender::new(empty),
            outcomes: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            demand: Demand::default(),
        })
    }

    /// A new queue of outcome reports, for a new lifecycle owner.
    pub(crate) fn reports(&self) -> Reports {
        let (outcomes, reports) = mpsc::channel(OUTCOME_QUEUE);
        self.outcomes.store(Some(Arc::new(outcomes)));
        reports
    }

    /// The current endpoints. Cheap: no lock, no allocation.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Notified whenever the endpoint set is replaced (pools, drains).
    pub fn watch_endpoints(&self) -> watch::Receiver<Arc<EndpointSet>> {
        self.changes.subscribe()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Reports how a request to `endpoint` went. Never blocks; drops the report if the
    /// owner is that far behind. Successes with no failure before them are not sent.
    pub fn report(&self, endpoint: &Arc<Endpoint>, outcome: Outcome) {
        if !endpoint.worth_reporting(&outcome) {
            return;
        }
        if let Some(outcomes) = &*self.outcomes.load() {
            let _ = outcomes.try_send((endpoint.clone(), outcome));
        }
    }

    /// Ready endpoints once each, starting one further than the previous call (round
    /// robin), so a refused connect can move on to the next endpoint.
    pub fn connect_order(&self) -> Vec<Arc<Endpoint>> {
        let set = self.endpoints();
        let n = set.ready.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| set.ready[(start + i) % n].clone()).collect()
    }

    pub(crate) fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Only the lifecycle owner publishes.
    pub(crate) fn publish(&self, set: EndpointSet) {
        let set = Arc::new(set);
        self.endpoints.store(set.clone());
        self.changes.send_replace(set);
    }
}

//! The lifecycle owner: one task per started service, the only writer of its
//! endpoints' states. It takes discovery's word, the health checkers' findings and the
//! request path's outcomes (for outlier detection), keeps each endpoint's [`Record`],
//! and publishes the endpoint set and a [`Transition`] whenever a state changes.
//!
//! It has no periodic tick: it sleeps until an event or the next moment a state can
//! change by itself (an ejection or drain ending, a cold start's presumption), so a
//! quiet service costs no wakeups. Only while a Draining endpoint still has requests
//! in flight does it look every [`TICK`], to let it go as soon as they finish.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};
use tracing::debug;

use super::{
    Endpoint, EndpointSet, Lifecycle, Outcome, Service, Transition,
    lifecycle::{Check, Discovered, Record},
    service::Reports,
};
use crate::{
    config::Policy,
    discovery::DesiredEndpoint,
    health::{Checker, Results},
    outlier::Detector,
};

/// How often the owner looks at a Draining endpoint with requests in flight.
pub const TICK: Duration = Duration::from_millis(50);

/// What the state manager tells a service's owner.
#[derive(Debug)]
pub enum Command {
    /// Discovery's current view of the service's endpoints.
    Endpoints(Vec<DesiredEndpoint>),
    Policy(Box<Policy>),
    /// The service is gone: every endpoint goes with it.
    Stop,
}

/// What the owner keeps per endpoint.
struct Entry {
    endpoint: Arc<Endpoint>,
    record: Record,
    checker: Option<JoinHandle<()>>,
}

pub struct Owner {
    service: Arc<Service>,
    transitions: broadcast::Sender<Transition>,
    checker: Arc<dyn Checker>,
    endpoints: HashMap<SocketAddr, Entry>,
    outlier: Detector,
    results: Results,
    /// While the endpoints known at a cold start are taken in: when discovery's
    /// ready is presumed for them.
    presume_from: Option<std::time::Instant>,
}

impl Owner {
    pub fn new(
        service: Arc<Service>,
        transitions: broadcast::Sender<Transition>,
        checker: Arc<dyn Checker>,
    ) -> (Self, mpsc::UnboundedReceiver<(SocketAddr, Check)>) {
        let (results, findings) = mpsc::unbounded_channel();
        let owner = Self {
            service,
            transitions,
            checker,
            endpoints: HashMap::new(),
            outlier: Detector::default(),
            results,
            presume_from: None,
        };
        (owner, findings)
    }

    /// Takes the service's endpoints as it starts cold (its first connection is
    /// waiting): those discovery calls ready are presumed healthy if their first
    /// check has not answered within one check's time ([`Record::presume_from`]).
    pub fn start(&mut self, desired: &[DesiredEndpoint]) {
        let health = &self.service.policy().health;
        self.presume_from = health.enabled.then(|| now() + health.timeout);
        self.discovered(desired);
        self.presume_from = None;
        self.settle();
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut outcomes: Reports,
        mut findings: mpsc::UnboundedReceiver<(SocketAddr, Check)>,
    ) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Endpoints(desired)) => self.discovered(&desired),
                    Some(Command::Policy(policy)) => self.set_policy(*policy),
                    Some(Command::Stop) | None => return self.stop(),
                },
                Some((endpoint, outcome)) = outcomes.recv() => self.observed(&endpoint, &outcome),
                Some((addr, check)) = findings.recv() => {
                    let policy = self.service.policy();
                    if let Some(m) = self.endpoints.get_mut(&addr) {
                        m.record.check(check, &policy.health);
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
            self.settle();
        }
    }

    /// When to look again with no event: the next deadline of an endpoint or of
    /// outlier detection, or a [`TICK`] while a drain waits for requests in flight.
    fn next_wake(&self) -> Option<std::time::Instant> {
        let now = now();
        let policy = self.service.policy();
        let mut wake = self.outlier.next_due(&policy.outlier);
        for entry in self.endpoints.values() {
            let busy =
                entry.endpoint.load.outstanding.load(std::sync::atomic::Ordering::Relaxed) > 0;
            let draining = busy && entry.endpoint.lifecycle() == Lifecycle::Draining;
            let poll = draining.then(|| now + TICK);
            let deadline = entry.record.next_deadline(now, policy.timeout.drain);
            wake = [wake, poll, deadline].into_iter().flatten().min();
        }
        wake
    }

    fn discovered(&mut self, desired: &[DesiredEndpoint]) {
        let now = now();
        let wanted: HashMap<SocketAddr, _> =
            desired.iter().map(|d| (d.addr, d.condition)).collect();
        for (addr, m) in &mut self.endpoints {
            if !wanted.contains_key(addr) {
                m.record.discover(Discovered::Removed, now);
            }
        }
        for (addr, condition) in wanted {
            if let Some(m) = self.endpoints.get_mut(&addr) {
                m.record.discover(Discovered::Listed(condition), now);
                continue;
            }
            let policy = self.service.policy();
            let endpoint = Endpoint::new(addr, Lifecycle::Warming);
            self.announce(&endpoint, None, Lifecycle::Warming);
            let checker = self.start_checker(addr, &policy);
            let mut record = Record::new(condition, checker.is_some(), now);
            if let Some(from) = self.presume_from {
                record.presume_from(from);
            }
            self.endpoints.insert(addr, Entry { endpoint, record, checker });
        }
        self.publish();
    }

    fn set_policy(&mut self, policy: Policy) {
        let health_changed = self.service.policy().health != policy.health;
        self.service.set_policy(policy.clone());
        if health_changed {
            let addrs: Vec<SocketAddr> = self.endpoints.keys().copied().collect();
            for addr in addrs {
                let checker = self.start_checker(addr, &policy);
                if let Some(old) = std::mem::replace(
                    &mut self.endpoints.get_mut(&addr).expect("listed").checker,
                    checker,
                ) {
                    old.abort();
                }
            }
        }
    }

    fn start_checker(&self, addr: SocketAddr, policy: &Policy) -> Option<JoinHandle<()>> {
        policy.health.enabled.then(|| {
            self.checker.start(
                addr,
                self.service.protocol,
                policy.health.clone(),
                self.results.clone(),
            )
        })
    }

    fn observed(&mut self, endpoint: &Arc<Endpoint>, outcome: &Outcome) {
        let total = self.endpoints.len();
        let policy = self.service.policy();
        let Some(m) = self.endpoints.get_mut(&endpoint.addr) else { return };
        if let Some(until) =
            self.outlier.observe(endpoint.addr, outcome, total, now(), &policy.outlier)
        {
            debug!(service = %self.service.name, endpoint = %endpoint.addr, ?outcome, "outlier ejected");
            m.record.eject(until);
        }
    }

    /// Brings every endpoint's state up to date with its record and the time, and
    /// publishes the set if anything changed.
    fn settle(&mut self) {
        let now = now();
        let policy = self.service.policy();
        self.outlier.tick(now, &policy.outlier);
        let mut changed = Vec::new();
        for m in self.endpoints.values() {
            let idle = m.endpoint.load.outstanding.load(std::sync::atomic::Ordering::Relaxed) == 0;
            let state = m.record.state(now, policy.timeout.drain, idle);
            let from = m.endpoint.lifecycle();
            if state != from {
                m.endpoint.set_lifecycle(state);
                changed.push((m.endpoint.clone(), from, state));
            }
        }
        if changed.is_empty() {
            let published = self.service.endpoints();
            if published.starting != (published.ready.is_empty() && self.starting(now)) {
                self.publish();
            }
            return;
        }
        // Readmissions first: an ejection that ended before another began reads so.
        changed.sort_by_key(|(_, _, to)| *to != Lifecycle::Ready);
        for (endpoint, from, to) in &changed {
            self.announce(endpoint, Some(*from), *to);
            if *to == Lifecycle::Gone {
                self.remove(&endpoint.addr);
            }
        }
        self.publish();
    }

    fn remove(&mut self, addr: &SocketAddr) {
        if let Some(m) = self.endpoints.remove(addr)
            && let Some(checker) = m.checker
        {
            checker.abort();
        }
        self.outlier.forget(addr);
    }

    fn stop(mut self) {
        let addrs: Vec<SocketAddr> = self.endpoints.keys().copied().collect();
        for addr in addrs {
            let endpoint = self.endpoints[&addr].endpoint.clone();
            let from = endpoint.lifecycle();
            endpoint.set_lifecycle(Lifecycle::Gone);
            self.announce(&endpoint, Some(from), Lifecycle::Gone);
            self.remove(&addr);
        }
        self.publish();
    }

    fn publish(&self) {
        let mut set =
            EndpointSet::new(self.endpoints.values().map(|e| e.endpoint.clone()).collect());
        set.starting = set.ready.is_empty() && self.starting(now());
        self.service.publish(set);
    }

    /// Some endpoint of a cold start still awaits its first check.
    fn starting(&self, now: std::time::Instant) -> bool {
        self.endpoints.values().any(|e| e.record.awaiting_first_check(now))
    }

    fn announce(&self, endpoint: &Endpoint, from: Option<Lifecycle>, to: Lifecycle) {
        debug!(service = %self.service.name, endpoint = %endpoint.addr, ?from, ?to, "endpoint");
        let _ = self.transitions.send(Transition {
            service: self.service.name.clone(),
            vip: self.service.vip,
            addr: endpoint.addr,
            from,
            to,
        });
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        for m in self.endpoints.values_mut() {
            if let Some(checker) = m.checker.take() {
                checker.abort();
            }
        }
    }
}

/// The time, from tokio's clock so paused-time tests control it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(wake: Option<std::time::Instant>) {
    if let Some(wake) = wake {
        tokio::time::sleep_until(wake.into()).await;
    }
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;

//! The lifecycle owner: one task per service, the only writer of its endpoints'
//! states. It takes discovery's word, the health checkers' findings and the request
//! path's outcomes (for outlier detection), keeps each endpoint's [`Record`], and
//! publishes the endpoint set and a [`Transition`] whenever a state changes.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};
use tracing::debug;

use super::{
    Endpoint, EndpointSet, Lifecycle, Outcome, Service, Transition,
    lifecycle::{Check, Discovered, Record},
};
use crate::{
    config::Policy,
    discovery::DesiredEndpoint,
    health::{Checker, Results},
    outlier::Detector,
};

/// How often the owner looks at the clock: ejections and drains end on these ticks.
const TICK: Duration = Duration::from_millis(50);

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
        };
        (owner, findings)
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut outcomes: mpsc::Receiver<(Arc<Endpoint>, Outcome)>,
        mut findings: mpsc::UnboundedReceiver<(SocketAddr, Check)>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
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
                _ = tick.tick() => {}
            }
            self.settle();
        }
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
            let record = Record::new(condition, checker.is_some(), now);
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
        self.service.publish(EndpointSet::new(
            self.endpoints.values().map(|m| m.endpoint.clone()).collect(),
        ));
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

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;

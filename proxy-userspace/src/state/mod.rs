//! What the agent believes about services and endpoints.
//!
//! [`State`] maps each VIP to a [`Service`]; each service's endpoints belong to one
//! lifecycle owner task ([`owner`]), the single writer of their [`Lifecycle`]. The
//! request path reads snapshots; everything else learns of changes from
//! [`Transition`]s.

mod endpoint;
pub mod lifecycle;
mod outcome;
pub mod owner;
mod service;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, watch};

pub use endpoint::{Endpoint, EndpointSet, Lifecycle, Load};
pub use outcome::{LocalOriginFailure, Outcome};
pub use service::Service;

use crate::{
    discovery::DesiredService,
    health::{Active, Checker},
};
use owner::{Command, Owner};

/// One endpoint changing state. `from` is `None` when it first appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub service: Arc<str>,
    pub vip: SocketAddr,
    pub addr: SocketAddr,
    pub from: Option<Lifecycle>,
    pub to: Lifecycle,
}

/// Transitions buffered for slow subscribers before they miss some.
const TRANSITION_BUFFER: usize = 4096;

struct Managed {
    service: Arc<Service>,
    commands: mpsc::UnboundedSender<Command>,
}

pub struct State {
    table: ArcSwap<HashMap<SocketAddr, Arc<Service>>>,
    managed: std::sync::Mutex<HashMap<SocketAddr, Managed>>,
    transitions: broadcast::Sender<Transition>,
    checker: Arc<dyn Checker>,
    /// Set when a service's lifecycle owner panicked: the agent cannot go on with a
    /// service nobody owns, and stops.
    failure: watch::Sender<Option<String>>,
}

impl Default for State {
    /// A state whose endpoints are checked for real ([`Active`]).
    fn default() -> Self {
        Self::with_checker(Arc::new(Active))
    }
}

impl State {
    /// A state whose endpoints' health checks are `checker`'s.
    pub fn with_checker(checker: Arc<dyn Checker>) -> Self {
        Self {
            table: ArcSwap::default(),
            managed: Default::default(),
            transitions: broadcast::Sender::new(TRANSITION_BUFFER),
            checker,
            failure: watch::Sender::new(None),
        }
    }

    /// Resolves with what went wrong once a service's lifecycle owner has panicked.
    pub fn failure(&self) -> impl Future<Output = String> + Send + 'static {
        let mut failure = self.failure.subscribe();
        async move {
            let failed = failure.wait_for(Option::is_some).await.map(|f| f.clone());
            match failed {
                Ok(failed) => failed.unwrap_or_default(),
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// The service steered to `vip`. The request path's lookup: no lock.
    pub fn lookup(&self, vip: &SocketAddr) -> Option<Arc<Service>> {
        self.table.load().get(vip).cloned()
    }

    pub fn vips(&self) -> BTreeSet<SocketAddr> {
        self.table.load().keys().copied().collect()
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        self.table.load().values().cloned().collect()
    }

    /// Every endpoint state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }

    /// Makes the services match `desired`: new VIPs get a service and an owner task,
    /// known ones get their endpoints and policy updated, missing ones are stopped.
    /// A VIP whose name or protocol changed is replaced. Must run inside a tokio runtime.
    pub fn apply(&self, desired: &[DesiredService]) {
        let mut managed = crate::sync::lock(&self.managed);
        let wanted: HashMap<SocketAddr, &DesiredService> =
            desired.iter().map(|d| (d.vip, d)).collect();
        managed.retain(|vip, m| {
            let keep = wanted
                .get(vip)
                .is_some_and(|d| *m.service.name == *d.name && m.service.protocol == d.protocol);
            if !keep {
                let _ = m.commands.send(Command::Stop);
            }
            keep
        });
        for d in desired {
            let m = managed.entry(d.vip).or_insert_with(|| self.spawn(d));
            let _ = m.commands.send(Command::Policy(Box::new(d.policy.clone())));
            let _ = m.commands.send(Command::Endpoints(d.endpoints.clone()));
        }
        let table = managed.iter().map(|(vip, m)| (*vip, m.service.clone())).collect();
        self.table.store(Arc::new(table));
    }

    fn spawn(&self, d: &DesiredService) -> Managed {
        let (service, outcomes) = Service::new(&d.name, d.vip, d.protocol, d.policy.clone());
        let (commands, receiver) = mpsc::unbounded_channel();
        let (owner, findings) =
            Owner::new(service.clone(), self.transitions.clone(), self.checker.clone());
        let (name, failure) = (service.name.clone(), self.failure.clone());
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(owner.run(receiver, outcomes, findings));
            if let Err(panic) = futures::FutureExt::catch_unwind(run).await {
                let what = crate::panic_message(&*panic);
                failure.send_replace(Some(format!(
                    "the lifecycle owner of service {name} panicked: {what}"
                )));
            }
        });
        Managed { service, commands }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::{
        config::{Policy, Protocol},
        discovery::{Condition, DesiredEndpoint},
        health::Manual,
    };

    fn service(endpoints: &[(&str, Condition)]) -> DesiredService {
        let mut policy = Policy::default();
        policy.health.enabled = false;
        DesiredService {
            name: "echo".into(),
            vip: "10.96.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            policy,
            endpoints: endpoints
                .iter()
                .map(|(a, c)| DesiredEndpoint { addr: a.parse().unwrap(), condition: *c })
                .collect(),
        }
    }

    async fn until(service: &Service, what: impl Fn(&EndpointSet) -> bool) {
        let mut changes = service.watch_endpoints();
        tokio::time::timeout(std::time::Duration::from_secs(60), changes.wait_for(|set| what(set)))
            .await
            .expect("the state in time")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn discovery_conditions_drive_states_and_transitions() {
        let state = State::with_checker(Arc::new(Manual));
        let mut transitions = state.subscribe();
        state.apply(&[service(&[
            ("10.10.0.2:80", Condition::Ready),
            ("10.10.0.3:80", Condition::NotReady),
        ])]);
        let svc = state.lookup(&"10.96.0.1:80".parse().unwrap()).expect("service exists");
        until(&svc, |set| set.all.len() == 2 && set.ready.len() == 1).await;
        assert_eq!(svc.endpoints().ready[0].addr.to_string(), "10.10.0.2:80");

        // A request in flight keeps a terminating endpoint Draining; the NotReady one,
        // removed and idle, is gone at once.
        svc.endpoints().ready[0].load.outstanding.fetch_add(1, Ordering::Relaxed);
        state.apply(&[service(&[("10.10.0.2:80", Condition::Terminating)])]);
        until(&svc, |set| set.all.len() == 1 && set.all[0].lifecycle() == Lifecycle::Draining)
            .await;
        assert!(svc.endpoints().ready.is_empty());
        svc.endpoints().all[0].load.outstanding.fetch_sub(1, Ordering::Relaxed);
        until(&svc, |set| set.all.is_empty()).await;

        let mut seen = Vec::new();
        while let Ok(t) = transitions.try_recv() {
            seen.push((t.addr.to_string(), t.to));
        }
        assert!(seen.contains(&("10.10.0.3:80".into(), Lifecycle::Gone)), "{seen:?}");
        assert!(seen.contains(&("10.10.0.2:80".into(), Lifecycle::Draining)), "{seen:?}");
        assert!(seen.contains(&("10.10.0.2:80".into(), Lifecycle::Gone)), "{seen:?}");

        state.apply(&[]);
        assert!(state.lookup(&"10.96.0.1:80".parse().unwrap()).is_none());
    }
}

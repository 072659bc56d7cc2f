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
use tokio::sync::{broadcast, mpsc};

pub use endpoint::{Endpoint, EndpointSet, Lifecycle, Load};
pub use outcome::{LocalOriginFailure, Outcome};
pub use service::Service;

use crate::discovery::DesiredService;
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
}

impl Default for State {
    fn default() -> Self {
        Self {
            table: ArcSwap::default(),
            managed: Default::default(),
            transitions: broadcast::Sender::new(TRANSITION_BUFFER),
        }
    }
}

impl State {
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
        let mut managed = self.managed.lock().unwrap();
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
            let _ = m.commands.send(Command::Policy(d.policy.clone()));
            let _ = m.commands.send(Command::Endpoints(d.endpoints.clone()));
        }
        let table = managed.iter().map(|(vip, m)| (*vip, m.service.clone())).collect();
        self.table.store(Arc::new(table));
    }

    fn spawn(&self, d: &DesiredService) -> Managed {
        let (service, outcomes) = Service::new(&d.name, d.vip, d.protocol, d.policy.clone());
        let (commands, receiver) = mpsc::unbounded_channel();
        let owner = Owner::new(service.clone(), self.transitions.clone());
        tokio::spawn(owner.run(receiver, outcomes));
        Managed { service, commands }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::{Policy, Protocol},
        discovery::{Condition, DesiredEndpoint},
    };

    fn service(vip: &str, endpoints: &[(&str, Condition)]) -> DesiredService {
        DesiredService {
            name: "echo".into(),
            vip: vip.parse().unwrap(),
            protocol: Protocol::Tcp,
            policy: Policy::default(),
            endpoints: endpoints
                .iter()
                .map(|(a, c)| DesiredEndpoint { addr: a.parse().unwrap(), condition: *c })
                .collect(),
        }
    }

    async fn settled(state: &State, vip: &str) -> Arc<Service> {
        let service = state.lookup(&vip.parse().unwrap()).expect("service exists");
        // The owner applies commands asynchronously; give it a turn.
        tokio::time::sleep(Duration::from_millis(1)).await;
        service
    }

    #[tokio::test(start_paused = true)]
    async fn discovery_conditions_drive_states_and_transitions() {
        let state = State::default();
        let mut transitions = state.subscribe();
        state.apply(&[service(
            "10.96.0.1:80",
            &[("10.10.0.2:80", Condition::Ready), ("10.10.0.3:80", Condition::NotReady)],
        )]);
        let svc = settled(&state, "10.96.0.1:80").await;
        let set = svc.endpoints();
        assert_eq!(set.all.len(), 2);
        assert_eq!(
            set.ready.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            ["10.10.0.2:80"]
        );

        state.apply(&[service("10.96.0.1:80", &[("10.10.0.2:80", Condition::Terminating)])]);
        let svc = settled(&state, "10.96.0.1:80").await;
        assert!(svc.endpoints().ready.is_empty());
        assert_eq!(svc.endpoints().all[0].lifecycle(), Lifecycle::Draining);

        let mut seen = Vec::new();
        while let Ok(t) = transitions.try_recv() {
            seen.push((t.addr.to_string(), t.to));
        }
        assert!(seen.contains(&("10.10.0.3:80".into(), Lifecycle::Gone)), "{seen:?}");
        assert!(seen.contains(&("10.10.0.2:80".into(), Lifecycle::Draining)), "{seen:?}");

        state.apply(&[]);
        assert!(state.lookup(&"10.96.0.1:80".parse().unwrap()).is_none());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(svc.endpoints().all.len(), 0, "a stopped service's endpoints are gone");
    }
}

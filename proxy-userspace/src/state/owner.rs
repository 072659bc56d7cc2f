//! The lifecycle owner: one task per service, the only writer of its endpoints' states.
//! It takes discovery's word for each endpoint and publishes the set for the request
//! path, and announces every state change as a [`Transition`].
//!
//! This first version maps discovery conditions straight to states (Ready → Ready,
//! NotReady → Warming, Terminating → Draining, absent → Gone). Health checks, outlier
//! ejection and drain deadlines plug in here.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::{Endpoint, EndpointSet, Lifecycle, Outcome, Service, Transition};
use crate::{
    config::Policy,
    discovery::{Condition, DesiredEndpoint},
};

/// What the state manager tells a service's owner.
#[derive(Debug)]
pub enum Command {
    /// Discovery's current view of the service's endpoints.
    Endpoints(Vec<DesiredEndpoint>),
    Policy(Policy),
    /// The service is gone: every endpoint goes with it.
    Stop,
}

pub struct Owner {
    service: Arc<Service>,
    transitions: broadcast::Sender<Transition>,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
}

impl Owner {
    pub fn new(service: Arc<Service>, transitions: broadcast::Sender<Transition>) -> Self {
        Self { service, transitions, endpoints: HashMap::new() }
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut outcomes: mpsc::Receiver<(Arc<Endpoint>, Outcome)>,
    ) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Endpoints(desired)) => self.discovered(&desired),
                    Some(Command::Policy(policy)) => self.service.set_policy(policy),
                    Some(Command::Stop) | None => return self.discovered(&[]),
                },
                Some(_report) = outcomes.recv() => {}
            }
        }
    }

    fn discovered(&mut self, desired: &[DesiredEndpoint]) {
        let wanted: HashMap<SocketAddr, Condition> =
            desired.iter().map(|d| (d.addr, d.condition)).collect();
        let gone: Vec<SocketAddr> =
            self.endpoints.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for addr in gone {
            if let Some(endpoint) = self.endpoints.remove(&addr) {
                self.transition(&endpoint, Lifecycle::Gone);
            }
        }
        for (addr, condition) in wanted {
            let state = match condition {
                Condition::Ready => Lifecycle::Ready,
                Condition::NotReady => Lifecycle::Warming,
                Condition::Terminating => Lifecycle::Draining,
            };
            match self.endpoints.get(&addr) {
                Some(endpoint) => {
                    let endpoint = endpoint.clone();
                    self.transition(&endpoint, state);
                }
                None => {
                    let endpoint = Endpoint::new(addr, Lifecycle::Warming);
                    self.endpoints.insert(addr, endpoint.clone());
                    self.announce(&endpoint, None, Lifecycle::Warming);
                    self.transition(&endpoint, state);
                }
            }
        }
        self.service.publish(EndpointSet::new(self.endpoints.values().cloned().collect()));
    }

    fn transition(&self, endpoint: &Arc<Endpoint>, to: Lifecycle) {
        let from = endpoint.lifecycle();
        if from != to {
            endpoint.set_lifecycle(to);
            self.announce(endpoint, Some(from), to);
        }
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

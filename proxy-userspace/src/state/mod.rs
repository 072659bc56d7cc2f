//! What the agent believes about services and endpoints.
//!
//! [`State`] maps each VIP to a [`Service`]; every known service is there (its VIP is
//! steered), but only a started one has a lifecycle owner task ([`owner`]), the single
//! writer of its endpoints' [`Lifecycle`], and health checks: a service starts when a
//! connection to it arrives ([`State::open`]) and stops after `service_idle_timeout`
//! with none ([`State::expire_idle`], one tick for all services). The request path
//! reads snapshots; everything else learns of changes from [`Transition`]s.

mod demand;
mod endpoint;
pub mod lifecycle;
mod outcome;
pub mod owner;
mod service;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::debug;

pub use demand::{DEFAULT_IDLE, Demand, InUse, always_in_use};
pub use endpoint::{Endpoint, EndpointSet, Lifecycle, Load};
pub use outcome::{LocalOriginFailure, Outcome};
pub use service::Service;

use crate::{
    discovery::{DesiredService, replaced},
    health::{Active, Checker},
};
use demand::Idleness;
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

/// A known service: what discovery says of it, and its owner while it is started.
struct OwnedService {
    service: Arc<Service>,
    desired: Arc<DesiredService>,
    owner: Option<Started>,
}

struct Started {
    commands: mpsc::UnboundedSender<Command>,
    idleness: Idleness,
}

pub struct State {
    table: ArcSwap<HashMap<SocketAddr, Arc<Service>>>,
    owned: std::sync::Mutex<HashMap<SocketAddr, OwnedService>>,
    /// The services of the last [`State::apply`], in its order.
    applied: std::sync::Mutex<Vec<Arc<DesiredService>>>,
    transitions: broadcast::Sender<Transition>,
    checker: Arc<dyn Checker>,
    /// How long a started service may go without a connection before it stops.
    idle: Duration,
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
            owned: Default::default(),
            applied: Default::default(),
            transitions: broadcast::Sender::new(TRANSITION_BUFFER),
            checker,
            idle: DEFAULT_IDLE,
            failure: watch::Sender::new(None),
        }
    }

    /// Stops services after `idle` with no connection (default [`DEFAULT_IDLE`]).
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
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

    /// A connection to the service steered to `vip`, counted as its use until the
    /// [`InUse`] drops; the service starts if it was not started (its endpoints are
    /// taken in and their checks start before this returns: wait for them with
    /// [`InUse::warmed`]). No lock unless the service starts.
    pub fn open(&self, vip: &SocketAddr) -> Option<InUse> {
        let in_use = InUse::new(self.lookup(vip)?);
        if !in_use.demand.active() {
            self.start(vip, &in_use);
        }
        Some(in_use)
    }

    pub fn vips(&self) -> BTreeSet<SocketAddr> {
        self.table.load().keys().copied().collect()
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        self.table.load().values().cloned().collect()
    }

    /// Every service, in the table as it is now: a look that copies nothing (a task
    /// that looks often, on a node that knows many services).
    pub fn table(&self) -> Arc<HashMap<SocketAddr, Arc<Service>>> {
        self.table.load_full()
    }

    /// How many services are started now.
    pub fn started(&self) -> usize {
        crate::sync::lock(&self.owned).values().filter(|o| o.owner.is_some()).count()
    }

    /// Every endpoint state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }

    /// Makes the services match `desired`: new VIPs get a service, known ones their
    /// endpoints and policy (told to the owner of a started one), missing ones are
    /// stopped. A VIP whose name or protocol changed is replaced. Services that
    /// [`always_in_use`] start at once. Must run inside a tokio runtime.
    pub fn apply<D: Clone + Into<Arc<DesiredService>>>(&self, desired: &[D]) {
        let desired: Vec<Arc<DesiredService>> = desired.iter().cloned().map(Into::into).collect();
        let mut owned = crate::sync::lock(&self.owned);
        let mut applied = crate::sync::lock(&self.applied);
        let (old, new) = replaced(&applied, &desired);
        let in_place = applied.len() == desired.len()
            && old
                .iter()
                .zip(&new)
                .all(|(o, n)| (o.vip, &o.name, o.protocol) == (n.vip, &n.name, n.protocol));
        if in_place {
            // The same services in the same order, some in new versions: only those
            // are looked at, so a change costs what changed, not what is known.
            for d in new {
                if let Some(o) = owned.get_mut(&d.vip) {
                    self.refresh(o, d.clone());
                }
            }
        } else {
            self.replace_all(&mut owned, &desired);
        }
        *applied = desired;
    }

    fn replace_all(
        &self,
        owned: &mut HashMap<SocketAddr, OwnedService>,
        desired: &[Arc<DesiredService>],
    ) {
        let wanted: HashMap<SocketAddr, &Arc<DesiredService>> =
            desired.iter().map(|d| (d.vip, d)).collect();
        let before = owned.len();
        owned.retain(|vip, o| {
            let keep = wanted
                .get(vip)
                .is_some_and(|d| *o.service.name == *d.name && o.service.protocol == d.protocol);
            if !keep && let Some(started) = o.owner.take() {
                let _ = started.commands.send(Command::Stop);
            }
            keep
        });
        let mut changed = owned.len() != before;
        for d in desired {
            let o = owned.entry(d.vip).or_insert_with(|| {
                changed = true;
                let service = Service::new(&d.name, d.vip, d.protocol, d.policy.clone());
                OwnedService { service, desired: d.clone(), owner: None }
            });
            self.refresh(o, d.clone());
        }
        if changed {
            let table = owned.iter().map(|(vip, o)| (*vip, o.service.clone())).collect();
            self.table.store(Arc::new(table));
        }
    }

    /// Makes a known service what `d` says, starting it if it is always in use.
    fn refresh(&self, o: &mut OwnedService, d: Arc<DesiredService>) {
        if !Arc::ptr_eq(&o.desired, &d) && *o.desired != *d {
            self.update(o, &d);
        }
        o.desired = d;
        if always_in_use(&o.desired) && o.owner.is_none() {
            self.spawn(o);
        }
    }

    /// Tells a known service what discovery now says of it.
    fn update(&self, o: &OwnedService, d: &DesiredService) {
        let policy_changed = o.desired.policy != d.policy;
        match &o.owner {
            Some(started) => {
                if policy_changed {
                    let _ = started.commands.send(Command::Policy(Box::new(d.policy.clone())));
                }
                let _ = started.commands.send(Command::Endpoints(d.endpoints.clone()));
            }
            None if policy_changed => o.service.set_policy(d.policy.clone()),
            None => {}
        }
    }

    /// Starts the service at `vip` for its first connection, unless it started since.
    fn start(&self, vip: &SocketAddr, in_use: &InUse) {
        let mut owned = crate::sync::lock(&self.owned);
        let Some(o) = owned.get_mut(vip).filter(|o| Arc::ptr_eq(&o.service, in_use)) else {
            return;
        };
        if o.owner.is_none() {
            debug!(service = %o.service.name, %vip, "starting: a connection arrived");
            self.spawn(o);
        }
        o.service.demand.set_active(true);
    }

    /// Starts `o`'s lifecycle owner: its endpoints are taken in as a cold start.
    fn spawn(&self, o: &mut OwnedService) {
        let service = o.service.clone();
        let (commands, receiver) = mpsc::unbounded_channel();
        let (mut owner, findings) =
            Owner::new(service.clone(), self.transitions.clone(), self.checker.clone());
        let outcomes = service.reports();
        let (name, failure) = (service.name.clone(), self.failure.clone());
        let start = std::panic::AssertUnwindSafe(|| owner.start(&o.desired.endpoints));
        if let Err(panic) = std::panic::catch_unwind(start) {
            let what = crate::panic_message(&*panic);
            failure.send_replace(Some(format!(
                "the lifecycle owner of service {name} panicked: {what}"
            )));
            return;
        }
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(owner.run(receiver, outcomes, findings));
            if let Err(panic) = futures::FutureExt::catch_unwind(run).await {
                let what = crate::panic_message(&*panic);
                failure.send_replace(Some(format!(
                    "the lifecycle owner of service {name} panicked: {what}"
                )));
            }
        });
        service.demand.set_active(true);
        let idleness = Idleness::new(&service.demand, tokio::time::Instant::now());
        o.owner = Some(Started { commands, idleness });
    }

    /// Stops every started service that had no connection for the idle time, looking
    /// every [`demand::sweep_period`]: one tick for all services. Ends when the state
    /// is dropped.
    pub fn expire_idle(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let state: Weak<Self> = Arc::downgrade(self);
        let mut tick = tokio::time::interval(demand::sweep_period(self.idle));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        async move {
            loop {
                tick.tick().await;
                match state.upgrade() {
                    Some(state) => state.sweep(tokio::time::Instant::now()),
                    None => return,
                }
            }
        }
    }

    fn sweep(&self, now: tokio::time::Instant) {
        let mut owned = crate::sync::lock(&self.owned);
        for o in owned.values_mut() {
            let Some(started) = &mut o.owner else { continue };
            let demand = &o.service.demand;
            if always_in_use(&o.desired)
                || !started.idleness.expired(demand, now, self.idle)
                || !demand.try_stop()
            {
                continue;
            }
            debug!(service = %o.service.name, vip = %o.service.vip, "stopping: idle");
            let _ = started.commands.send(Command::Stop);
            o.owner = None;
        }
    }
}

#[cfg(test)]
mod tests;

//! Kernel mode for TCP services (`tcp_mode: kernel`): connect4/6 send a connect to such
//! a VIP straight to one of its Ready endpoints, from a table in the kernel this task
//! keeps in step with the endpoints' lifecycle (health, outlier ejection, drain,
//! removal). An endpoint that fails its health check leaves the table at once and its
//! enrolled Pods' established connections are destroyed; connects the kernel saw fail
//! count towards its outlier ejection.
//!
//! Such connects never reach the agent: it must keep checking these services' endpoints
//! all the same ([`in_kernel_mode`]).

mod tally;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, warn};

use crate::{
    config::{Protocol, TcpMode},
    datapath::{Datapath, KernelFailure},
    drain::DrainWatch,
    enroll::Netns,
    eviction,
    metrics::Metrics,
    state::{Lifecycle, LocalOriginFailure, Outcome, Service, State, Transition},
};
use tally::Tally;

/// How often the kernel's connect counts are read, and the tables checked against the
/// state even without a transition (a reload that switched a service's mode).
pub const POLL: Duration = Duration::from_millis(200);

/// Whether `service`'s connects are sent straight to its endpoints by the kernel.
/// They never reach the agent, so the service is in use whenever it exists: its
/// health checks must run even if no connection to the agent ever names it.
pub fn in_kernel_mode(service: &Service) -> bool {
    service.protocol == Protocol::Tcp && service.policy().tcp_mode == TcpMode::Kernel
}

/// The kernel tables the state calls for: each kernel-mode VIP and its Ready endpoints
/// (as they are now, even if the owner has not published them yet), in address order.
fn tables(services: &[Arc<Service>]) -> BTreeMap<SocketAddr, Vec<SocketAddr>> {
    let ready = |service: &Service| {
        let set = service.endpoints();
        let mut ready: Vec<SocketAddr> =
            set.all.iter().filter(|e| e.lifecycle() == Lifecycle::Ready).map(|e| e.addr).collect();
        ready.sort();
        ready
    };
    services.iter().filter(|s| in_kernel_mode(s)).map(|s| (s.vip, ready(s))).collect()
}

/// The TCP services of the state, looked for again only when its table changed: only
/// they can be in kernel mode (their policy says, and may change in place), and the
/// tables are checked five times a second on a node that may know 10,000 others.
#[derive(Default)]
struct TcpServices {
    table: Option<Arc<HashMap<SocketAddr, Arc<Service>>>>,
    tcp: Vec<Arc<Service>>,
}

impl TcpServices {
    fn of(&mut self, state: &State) -> &[Arc<Service>] {
        let table = state.table();
        if !self.table.as_ref().is_some_and(|known| Arc::ptr_eq(known, &table)) {
            self.tcp = table.values().filter(|s| s.protocol == Protocol::Tcp).cloned().collect();
            self.table = Some(table);
        }
        &self.tcp
    }
}

/// Keeps the kernel's tables in step with `state` until the agent's connections drain
/// (it stops serving, or hands the node to a successor, which keeps them from then
/// on). `enrolled` are the namespaces whose connections to a dead endpoint it evicts.
pub async fn run(
    state: Arc<State>,
    datapath: Arc<dyn Datapath>,
    enrolled: watch::Receiver<Arc<[Arc<Netns>]>>,
    metrics: Arc<Metrics>,
    mut drain: DrainWatch,
) {
    let mut transitions = state.subscribe();
    let mut failures = datapath.take_kernel_failures();
    let mut sync = Sync::default();
    let mut tally = Tally::default();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sync.tables(&state, datapath.as_ref());
        tokio::select! {
            () = drain.draining() => return,
            transition = transitions.recv() => match transition {
                Ok(t) => {
                    let mut next = Some(t);
                    while let Some(t) = next {
                        evict_if_dead(&t, &state, &enrolled, &metrics);
                        next = transitions.try_recv().ok();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!("kernel mode missed {missed} endpoint transitions; the tables are rebuilt");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some((vip, endpoint)) = next_failure(&mut failures) => {
                report(&state, vip, endpoint, Outcome::LocalOrigin(LocalOriginFailure::ConnectRefused));
            }
            _ = poll.tick() => match datapath.kernel_connects() {
                Ok(totals) => tally.update(totals).iter().for_each(|news| {
                    report(&state, news.vip, news.endpoint, Outcome::Response { status: 200, latency: Duration::ZERO });
                }),
                Err(err) => debug!("kernel connect counts unreadable: {err}"),
            },
        }
    }
}

/// Writes the tables, and says once when that fails and when it works again.
#[derive(Default)]
struct Sync {
    services: TcpServices,
    failing: Option<String>,
}

impl Sync {
    fn tables(&mut self, state: &State, datapath: &dyn Datapath) {
        match datapath.set_kernel_services(&tables(self.services.of(state))) {
            Ok(()) => {
                if self.failing.take().is_some() {
                    warn!("kernel-mode tables written again");
                }
            }
            Err(err) => {
                let err = err.to_string();
                if self.failing.as_ref() != Some(&err) {
                    warn!("kernel-mode tables not written, connects use the last ones: {err}");
                }
                self.failing = Some(err);
            }
        }
    }
}

/// An endpoint of a kernel-mode service that fails its health check is dead: enrolled
/// Pods' connections straight to it are destroyed, so their apps reconnect to a live
/// one. (A drain keeps them; removal is evicted by [`eviction`].)
fn evict_if_dead(
    t: &Transition,
    state: &State,
    enrolled: &watch::Receiver<Arc<[Arc<Netns>]>>,
    metrics: &Arc<Metrics>,
) {
    if t.to != Lifecycle::Unhealthy || !state.lookup(&t.vip).is_some_and(|s| in_kernel_mode(&s)) {
        return;
    }
    let netns = enrolled.borrow().clone();
    let (service, addr, metrics) = (t.service.to_string(), t.addr, metrics.clone());
    tokio::spawn(async move { eviction::evict(netns, &service, addr, &metrics).await });
}

/// The next failed connect the kernel tells of; never, without a way to hear of them.
async fn next_failure(
    failures: &mut Option<mpsc::Receiver<KernelFailure>>,
) -> Option<KernelFailure> {
    match failures {
        Some(failures) => failures.recv().await,
        None => std::future::pending().await,
    }
}

/// Feeds what the kernel saw of a connect to the endpoint's outlier detection. A failed
/// connect (the kernel cannot tell refused from timed out: both are local-origin
/// failures) is told as it happens; connections established are told once per look
/// (as one success: it ends a run of consecutive failures).
fn report(state: &State, vip: SocketAddr, endpoint: SocketAddr, outcome: Outcome) {
    let Some(service) = state.lookup(&vip).filter(|s| in_kernel_mode(s)) else { return };
    let Some(endpoint) = service.endpoints().get(&endpoint).cloned() else { return };
    service.report(&endpoint, outcome);
}

#[cfg(test)]
mod tests;

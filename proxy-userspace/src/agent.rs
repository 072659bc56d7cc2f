//! The agent: wires discovery, the datapath, the proxy and the admin endpoint
//! together, keeps the kernel's view in step with discovery, and shuts down cleanly.

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinSet};
use tracing::{info, warn};

use crate::{
    admin::{self, Admin, Readiness},
    claim::Claim,
    config::Config,
    datapath::{self, Kernel, KernelOptions},
    discovery::{
        Condition, Desired, Discovery,
        kube::Kube,
        static_file::{POLL_INTERVAL, StaticFile},
    },
    drain::Drain,
    eviction,
    handoff::{self, Listeners, Predecessor},
    kernel_lb,
    liveness::Heartbeat,
    metrics::Metrics,
    proxy::Proxy,
    reconcile::Reconciler,
    signals::{self, Signals, Stop},
    state::State,
    sys,
    workers::Workers,
};

pub struct RunOptions {
    pub source: Source,
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
    /// The admin endpoint's address, instead of the config's.
    pub admin: Option<SocketAddr>,
    pub kernel_debug_log: bool,
    pub accel: bool,
    /// Data-plane threads; `None`: one per CPU the agent may use.
    pub workers: Option<usize>,
}

/// Where services, endpoints and enrolled namespaces come from.
pub enum Source {
    /// A static config file, hot-reloaded.
    File(PathBuf),
    /// The Kubernetes API, for the Pods on `node`; listeners from `settings`.
    Kube { node: String, settings: Option<PathBuf> },
}

/// How long a stop waits for downstream connections to finish before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long closed connections get to end their tasks.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a stopping agent serves on while a connected successor gets ready.
const HANDOFF_WAIT: Duration = Duration::from_secs(60);

/// Runs the agent until it is told to stop.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    match &options.source {
        Source::File(path) => {
            let (discovery, config) = StaticFile::start(path, POLL_INTERVAL)?;
            run_with(&options, discovery, config).await
        }
        Source::Kube { node, settings } => {
            let config = match settings {
                Some(path) => Config::load_node_settings(path)?,
                None => Config::node_defaults(),
            };
            let discovery = Kube::connect(node).await?;
            run_with(&options, discovery, config).await
        }
    }
}

async fn run_with(
    options: &RunOptions,
    discovery: impl Discovery,
    mut config: Config,
) -> anyhow::Result<()> {
    config.admin = options.admin.unwrap_or(config.admin);
    fit_open_files(&mut config);
    let cgroup = match options.cgroup.clone() {
        Some(cgroup) => cgroup,
        None => datapath::cgroup2_root()?,
    };
    datapath::require_cgroup2(&cgroup)?;
    // Listen before the kernel steers anything here, or take the running agent's
    // listeners once ready. Only one agent serves a cgroup.
    let start = match Predecessor::find(&options.bpffs) {
        Some(predecessor) => {
            info!("another agent serves this node: taking over from it once ready");
            Start::TakeOver(predecessor)
        }
        None => {
            let claim = Claim::take(&cgroup, &options.bpffs)?;
            let listeners = Listeners::bind(&config.proxy_addrs(), config.admin).await?;
            Start::Bound(listeners, claim)
        }
    };
    let kernel = Arc::new(Kernel::load(&KernelOptions {
        cgroup: cgroup.clone(),
        pin_dir: options.bpffs.clone(),
        listen4: config.listen,
        listen6: config.listen6,
        kernel_debug_log: options.kernel_debug_log,
        accel: options.accel,
        capacity: config.capacity,
    })?);

    // Until the listeners are this agent's, the kernel programs serve a running
    // predecessor: a failure then must leave them as they are.
    let mut owner = matches!(start, Start::Bound(..));
    let place = Place { cgroup: &cgroup, pin_dir: &options.bpffs };
    let workers = match options.workers {
        Some(count) => Workers::start(count),
        None => Workers::per_core(),
    };
    let workers = Arc::new(workers.context("starting the data-plane threads (--workers)")?);
    info!(workers = workers.count(), "data-plane threads started");
    let result =
        serve(kernel.clone(), &discovery, start, &config, place, workers, &mut owner).await;
    match result {
        Ok(Ending::Stopped) if owner => kernel.detach().context("detaching the kernel programs"),
        Err(err) if owner => {
            if let Err(detach) = kernel.detach() {
                warn!("detaching the kernel programs: {}", crate::Chain(&detach));
            }
            Err(err)
        }
        // Handed off, or stopped before taking over: the pins serve another agent.
        result => {
            kernel.leave();
            result.map(|_| ())
        }
    }
}

/// Descriptors kept aside from proxied connections: listeners, health checks, HTTP/2
/// upstreams, maps, the admin endpoint.
const SPARE_FILES: u64 = 1024;
/// The open-file limit the agent asks for: a proxied connection takes two.
const WANTED_FILES: u64 = 1 << 20;

/// Raises the open-file limit, and lowers `limits.max_connections` to what the limit
/// holds, so that past it connections are refused and counted rather than stalling
/// every accept on EMFILE.
fn fit_open_files(config: &mut Config) {
    let limit = match sys::raise_nofile_limit(WANTED_FILES) {
        Ok(limit) => limit,
        Err(err) => return warn!("cannot read or raise the open-file limit: {err}"),
    };
    let fits = (limit.saturating_sub(SPARE_FILES) / 2).max(1) as usize;
    if config.limits.max_connections > fits {
        warn!(
            open_files = limit,
            "limits.max_connections {} does not fit the open-file limit: serving at most {fits} \
             connections; raise the limit (ulimit -n, LimitNOFILE, CAP_SYS_RESOURCE) for more",
            config.limits.max_connections
        );
        config.limits.max_connections = fits;
    }
    let limits = &mut config.limits;
    info!(
        open_files = limit,
        max_connections = limits.max_connections,
        max_connections_per_pod = limits.per_pod(),
        "limits"
    );
}

/// How the agent gets its listeners (and its claim on the cgroup).
enum Start {
    Bound(Listeners, Claim),
    TakeOver(Predecessor),
}

/// Where the agent serves: the cgroup it attaches to and its pin directory.
#[derive(Clone, Copy)]
struct Place<'a> {
    cgroup: &'a Path,
    pin_dir: &'a Path,
}

/// Why the agent stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Told to stop: the kernel forgets sockeye.
    Stopped,
    /// A successor took the listeners and adopts the kernel programs.
    HandedOff,
}

/// Serves until told to stop, a successor takes over, or a part of the agent fails;
/// then winds every connection down. `owner` turns true once the listeners (and so
/// the kernel programs) are this agent's.
async fn serve(
    kernel: Arc<Kernel>,
    discovery: &impl Discovery,
    start: Start,
    config: &Config,
    place: Place<'_>,
    workers: Arc<Workers>,
    owner: &mut bool,
) -> anyhow::Result<Ending> {
    let readiness = Arc::new(Readiness::default());
    let state = Arc::new(State::default().idle_after(config.service_idle_timeout));
    let metrics = Metrics::new(kernel.clone(), state.clone());
    let mut tasks = JoinSet::new();
    tasks.spawn(state.expire_idle());
    let admin = Arc::new(Admin {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        state: state.clone(),
        datapath: kernel.clone(),
    });
    tasks.spawn(count_transitions(state.subscribe(), metrics.clone()));
    // The admin endpoint answers (not ready) while discovery syncs; a predecessor
    // answers for the node until the take-over.
    let (early, mut claim) = match start {
        Start::Bound(listeners, claim) => {
            (Ok(serve_admin(&mut tasks, &admin, listeners)), Some(claim))
        }
        Start::TakeOver(predecessor) => (Err(predecessor), None),
    };
    let (drain, drain_watch) = Drain::new();
    let proxy = Proxy::new(
        kernel.clone(),
        state.clone(),
        drain_watch.clone(),
        metrics.clone(),
        config.limits,
        workers.clone(),
    );
    let mut stops = Signals::register()?.spawn(Summary {
        reload: discovery.reloads(),
        state: state.clone(),
        proxy: proxy.clone(),
    });

    let mut desired = discovery.watch();
    info!("waiting for discovery");
    tokio::select! {
        () = discovery.synced() => {}
        _ = stops.recv() => return Ok(Ending::Stopped),
    }
    let first = desired.borrow_and_update().clone();
    let mut reconciler = Reconciler::new(kernel.clone(), state.clone());
    reconciler.apply(&first).context("applying the config")?;
    metrics.config_update(true);
    let own = [config.proxy_addrs(), vec![config.admin]].concat();
    let netns = reconciler.netns();
    tasks.spawn(eviction::run(
        state.subscribe(),
        discovery.watch(),
        netns.clone(),
        own,
        metrics.clone(),
    ));
    let mut heartbeat = Heartbeat::start(kernel.clone(), workers.handles())?;
    // Until the listeners are published the predecessor, or DNAT, takes the connects.
    tokio::select! {
        () = warm_up(&first, &state) => {}
        _ = stops.recv() => return Ok(Ending::Stopped),
    }

    let (listeners, offered) = match early {
        Ok(bound) => bound,
        Err(predecessor) => {
            let listeners = take_over(predecessor, config).await?;
            claim = Some(Claim::take_over(place.cgroup, place.pin_dir).await?);
            serve_admin(&mut tasks, &admin, listeners)
        }
    };
    *owner = true;
    kernel.publish_listeners(&listeners)?;
    readiness.set(true);
    info!(services = first.services.len(), netns = first.enroll.len(), "sockeye is ready");

    let mut accepting = JoinSet::new();
    for listener in listeners {
        accepting.spawn(proxy.clone().serve(listener));
    }
    tasks.spawn(kernel_lb::run(state.clone(), kernel.clone(), netns, metrics.clone(), drain_watch));
    tasks.spawn(reconciler.run(desired, discovery.rejections(), metrics.clone()));

    let outcome = tokio::select! {
        ended = serve_until_the_end(place.pin_dir, offered, &mut stops) => Ok(ended),
        failure = supervise(&mut tasks, &state) => Err(failure),
    };
    readiness.set(false);
    let (ending, stop) = match &outcome {
        Ok(ended) => *ended,
        Err(_) => (Ending::Stopped, Stop::Now),
    };
    if ending == Ending::HandedOff {
        // The successor beats and accepts from here on, on the same sockets, and
        // claims the cgroup.
        drop(claim.take());
        heartbeat.stop();
        accepting.shutdown().await;
    } else if let Err(err) = kernel.withdraw_listeners() {
        warn!("cannot withdraw the listeners from the kernel: {}", crate::Chain(&err));
    }
    wind_down(&drain, &proxy, stop, &mut stops).await;
    accepting.shutdown().await;
    workers.stop();
    tasks.shutdown().await;
    heartbeat.stop();
    outcome.map(|_| ending)
}

/// Drains the connections (GOAWAY, `Connection: close`) for up to [`SHUTDOWN_GRACE`]
/// or until a second stop request, then closes what is left.
async fn wind_down(
    drain: &Drain,
    proxy: &Proxy,
    stop: Stop,
    stops: &mut tokio::sync::mpsc::UnboundedReceiver<Stop>,
) {
    drain.start();
    if stop == Stop::Graceful {
        info!(open = proxy.open_connections(), "draining connections");
        tokio::select! {
            _ = proxy.wait_idle(SHUTDOWN_GRACE) => {}
            _ = stops.recv() => info!("stopping at once"),
        }
    }
    drain.close();
    let open = proxy.wait_idle(CLOSE_GRACE).await;
    info!(closed = open, "shutting down");
}

/// Resolves with what went wrong when a task the agent cannot do without ends, or a
/// service loses its lifecycle owner.
async fn supervise(tasks: &mut JoinSet<()>, state: &State) -> anyhow::Error {
    let owner_lost = state.failure();
    tokio::pin!(owner_lost);
    loop {
        tokio::select! {
            failure = &mut owner_lost => return anyhow::anyhow!("{failure}; stopping"),
            Some(ended) = tasks.join_next() => {
                if let Err(err) = ended
                    && err.is_panic()
                {
                    let what = crate::panic_message(&*err.into_panic()).to_string();
                    return anyhow::anyhow!("an agent task panicked: {what}; stopping");
                }
            }
        }
    }
}

/// What SIGHUP and SIGUSR1 act on.
struct Summary {
    reload: Option<Arc<tokio::sync::Notify>>,
    state: Arc<State>,
    proxy: Arc<Proxy>,
}

impl signals::Handler for Summary {
    fn reload(&self) {
        match &self.reload {
            Some(reload) => reload.notify_one(),
            None => info!("nothing to re-read: discovery follows the Kubernetes API live"),
        }
    }

    fn summary(&self) -> String {
        let services = self.state.services();
        let mut by_state = std::collections::BTreeMap::new();
        for service in &services {
            for endpoint in &service.endpoints().all {
                *by_state.entry(endpoint.lifecycle().name()).or_insert(0usize) += 1;
            }
        }
        format!(
            "{} services, endpoints {by_state:?}, {} connections open",
            services.len(),
            self.proxy.open_connections()
        )
    }
}

/// How long a starting agent waits for the first health verdicts on its services'
/// ready endpoints before it takes connections.
const WARM_UP: Duration = Duration::from_secs(5);

/// Waits until every started service with an endpoint discovery calls ready has one
/// that passed its health check, or [`WARM_UP`] passes; a successor taking over
/// before then would answer UNAVAILABLE where its predecessor had a backend. Services
/// start on their first connection (whose cold start waits for the first checks);
/// only those that are always in use are started here.
async fn warm_up(desired: &Desired, state: &State) {
    let deadline = tokio::time::Instant::now() + WARM_UP;
    let mut transitions = state.subscribe();
    loop {
        let cold = cold_services(desired, state);
        if cold.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            return warn!(
                ?cold,
                "taking connections before these services have a healthy endpoint"
            );
        }
        // A transition may come before its endpoint set is published: look again soon.
        let _ = tokio::time::timeout(Duration::from_millis(50), transitions.recv()).await;
    }
}

/// Started services discovery gives a ready endpoint that no health check has passed
/// yet.
fn cold_services(desired: &Desired, state: &State) -> Vec<String> {
    desired
        .services
        .iter()
        .filter(|d| d.endpoints.iter().any(|e| e.condition == Condition::Ready))
        .filter(|d| {
            state
                .lookup(&d.vip)
                .is_some_and(|s| s.demand.active() && s.endpoints().ready.is_empty())
        })
        .map(|d| d.name.clone())
        .collect()
}

/// Waits for a stop request, or for a successor to take the listeners (`offered`).
async fn serve_until_the_end(
    pin_dir: &Path,
    offered: Vec<OwnedFd>,
    stops: &mut tokio::sync::mpsc::UnboundedReceiver<Stop>,
) -> (Ending, Stop) {
    let (waiting, mut successor) = tokio::sync::watch::channel(false);
    let offer = offer(pin_dir, offered, &waiting);
    tokio::pin!(offer);
    let stop = tokio::select! {
        () = &mut offer => return (Ending::HandedOff, Stop::Graceful),
        stop = stops.recv() => stop.unwrap_or(Stop::Now),
    };
    // An upgrade (a DaemonSet with maxSurge): the successor started first and takes
    // over once ready; leaving now would refuse connects meanwhile.
    if stop == Stop::Now || !*successor.borrow() {
        return (Ending::Stopped, stop);
    }
    info!("a successor is getting ready: serving until it takes over");
    tokio::select! {
        () = &mut offer => (Ending::HandedOff, Stop::Graceful),
        _ = successor.wait_for(|waiting| !waiting) => (Ending::Stopped, Stop::Graceful),
        () = tokio::time::sleep(HANDOFF_WAIT) => (Ending::Stopped, Stop::Graceful),
        stop = stops.recv() => (Ending::Stopped, stop.unwrap_or(Stop::Now)),
    }
}

/// The predecessor's listeners, or new ones if it is gone meanwhile.
async fn take_over(predecessor: Predecessor, config: &Config) -> anyhow::Result<Listeners> {
    match predecessor.take().await {
        Ok(listeners) => Ok(listeners),
        Err(err) => {
            warn!("{err:#}; binding the listeners afresh");
            Listeners::bind(&config.proxy_addrs(), config.admin).await
        }
    }
}

/// Starts the admin endpoint; returns the proxy's listeners and second descriptors of
/// all of them, to offer to a successor.
fn serve_admin(
    tasks: &mut JoinSet<()>,
    admin: &Arc<Admin>,
    listeners: Listeners,
) -> (Vec<TcpListener>, Vec<OwnedFd>) {
    let offered = listeners.duplicate().unwrap_or_else(|err| {
        warn!("no hand-off possible, cannot duplicate the listeners: {err}");
        Vec::new()
    });
    tasks.spawn(admin::serve(listeners.admin, admin.clone()));
    (listeners.proxy, offered)
}

/// Waits for a successor to take `fds`; waits forever when none can.
async fn offer(pin_dir: &Path, fds: Vec<OwnedFd>, waiting: &tokio::sync::watch::Sender<bool>) {
    if fds.is_empty() {
        return std::future::pending().await;
    }
    if let Err(err) = handoff::offer(pin_dir, fds, waiting).await {
        warn!("{err:#}; a successor will start afresh");
        std::future::pending::<()>().await;
    }
}

/// Feeds every endpoint state change to the metrics.
async fn count_transitions(
    mut transitions: tokio::sync::broadcast::Receiver<crate::state::Transition>,
    metrics: Arc<Metrics>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match transitions.recv().await {
            Ok(transition) => metrics.transition(&transition),
            Err(RecvError::Lagged(missed)) => warn!("metrics missed {missed} endpoint transitions"),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Protocol,
        discovery::{Condition, DesiredService},
    };

    fn service(name: &str, vip: &str) -> DesiredService {
        DesiredService::one_endpoint(name, vip)
    }

    /// A state whose health checks never report, and one service with one endpoint.
    fn one_service(health_checked: bool, condition: Condition) -> (State, Desired) {
        let mut one = service("a", "10.96.0.1:80");
        one.policy.health.enabled = health_checked;
        one.endpoints[0].condition = condition;
        (
            State::with_checker(Arc::new(crate::health::Manual)),
            Desired { services: vec![Arc::new(one)], ..Desired::default() },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_ends_once_each_service_has_a_ready_endpoint() {
        // Checks off: ready on discovery's word, once the service's owner has run.
        let (state, desired) = one_service(false, Condition::Ready);
        state.apply(&desired.services);
        let _in_use = state.open(&desired.services[0].vip);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert!(started.elapsed() < WARM_UP, "{:?}", started.elapsed());
        assert!(cold_services(&desired, &state).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_gives_up_after_its_limit_on_endpoints_no_check_passed() {
        let (state, desired) = one_service(true, Condition::NotReady);
        state.apply(&desired.services);
        let _in_use = state.open(&desired.services[0].vip);
        // Ready by discovery after the service started: a check must pass first (a
        // cold start would take discovery's word after one check's time).
        let (_, desired) = one_service(true, Condition::Ready);
        state.apply(&desired.services);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert!(started.elapsed() >= WARM_UP, "{:?}", started.elapsed());
        assert_eq!(cold_services(&desired, &state), ["a"]);
    }

    #[tokio::test]
    async fn a_panicking_task_or_a_lost_lifecycle_owner_stops_the_agent_with_the_cause() {
        let state = State::with_checker(Arc::new(crate::health::Manual));
        let mut tasks = JoinSet::new();
        tasks.spawn(async {});
        tasks.spawn(async { panic!("eviction broke") });
        let failure = supervise(&mut tasks, &state).await;
        assert!(failure.to_string().contains("an agent task panicked: eviction broke"));

        // A checker that panics inside its service's owner task.
        struct Broken;
        impl crate::health::Checker for Broken {
            fn start(
                &self,
                _: SocketAddr,
                _: Protocol,
                _: crate::config::policy::HealthPolicy,
                _: crate::health::Results,
            ) -> tokio::task::JoinHandle<()> {
                panic!("checker broke")
            }
        }
        let state = State::with_checker(Arc::new(Broken));
        let (_, desired) = one_service(true, Condition::Ready);
        state.apply(&desired.services);
        let _in_use = state.open(&desired.services[0].vip);
        let mut none = JoinSet::new();
        let failure = supervise(&mut none, &state).await;
        let message = failure.to_string();
        assert!(message.contains("the lifecycle owner of service a panicked: checker broke"));
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_does_not_wait_for_endpoints_discovery_calls_not_ready() {
        let (state, desired) = one_service(true, Condition::NotReady);
        state.apply(&desired.services);
        let _in_use = state.open(&desired.services[0].vip);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

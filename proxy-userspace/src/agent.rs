//! The agent: wires discovery, the datapath, the proxy and the admin endpoint
//! together, keeps the kernel's view in step with discovery, and shuts down cleanly.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use proxy_common::agent::HEARTBEAT_INTERVAL_MS;
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, Admin, Readiness},
    config::Config,
    datapath::{self, Datapath, Kernel, KernelOptions},
    discovery::{
        Condition, Desired, Discovery,
        kube::Kube,
        static_file::{POLL_INTERVAL, StaticFile},
    },
    eviction,
    handoff::{self, Listeners, Predecessor},
    kernel_lb,
    metrics::Metrics,
    proxy::Proxy,
    state::State,
    sys,
};

pub struct RunOptions {
    pub source: Source,
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
    /// The admin endpoint's address, instead of the config's.
    pub admin: Option<SocketAddr>,
    pub kernel_debug_log: bool,
    pub accel: bool,
}

/// Where services, endpoints and enrolled namespaces come from.
pub enum Source {
    /// A static config file, hot-reloaded.
    File(PathBuf),
    /// The Kubernetes API, for the Pods on `node`; listeners from `settings`.
    Kube { node: String, settings: Option<PathBuf> },
}

/// How long a shutdown waits for downstream connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping agent serves on while a connected successor gets ready.
const HANDOFF_WAIT: Duration = Duration::from_secs(60);

/// Runs the agent until SIGTERM or SIGINT.
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
    // Listen before the kernel steers anything here, or take the running agent's
    // listeners once ready.
    let start = match Predecessor::find(&options.bpffs) {
        Some(predecessor) => {
            info!("another agent serves this node: taking over from it once ready");
            Start::TakeOver(predecessor)
        }
        None => Start::Bound(Listeners::bind(&config.proxy_addrs(), config.admin).await?),
    };
    let cgroup = match options.cgroup.clone() {
        Some(cgroup) => cgroup,
        None => datapath::cgroup2_root()?,
    };
    let kernel = Arc::new(Kernel::load(&KernelOptions {
        cgroup,
        pin_dir: options.bpffs.clone(),
        listen4: config.listen,
        listen6: config.listen6,
        kernel_debug_log: options.kernel_debug_log,
        accel: options.accel,
    })?);

    let result = serve(kernel.clone(), &discovery, start, &config, &options.bpffs).await;
    let kernel = Arc::into_inner(kernel).expect("every task holding the datapath has ended");
    match result {
        Ok(Ending::HandedOff) => {
            kernel.leave();
            Ok(())
        }
        Ok(Ending::Stopped) => kernel.shutdown().context("detaching the kernel programs"),
        Err(err) => {
            kernel.shutdown().context("detaching the kernel programs")?;
            Err(err)
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
    info!(open_files = limit, max_connections = config.limits.max_connections, "limits");
}

/// How the agent gets its listeners.
enum Start {
    Bound(Listeners),
    TakeOver(Predecessor),
}

/// Why the agent stopped serving.
enum Ending {
    /// SIGTERM or SIGINT: the kernel forgets sockeye.
    Stopped,
    /// A successor took the listeners and adopts the kernel programs.
    HandedOff,
}

async fn serve(
    kernel: Arc<Kernel>,
    discovery: &impl Discovery,
    start: Start,
    config: &Config,
    pin_dir: &Path,
) -> anyhow::Result<Ending> {
    let readiness = Arc::new(Readiness::default());
    let state = Arc::new(State::default());
    let metrics = Metrics::new(kernel.clone(), state.clone());
    let mut tasks = JoinSet::new();
    let admin = Arc::new(Admin {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        state: state.clone(),
        datapath: kernel.clone(),
    });
    tasks.spawn(count_transitions(state.subscribe(), metrics.clone()));
    tasks.spawn(eviction::run(state.subscribe(), discovery.watch(), metrics.clone()));
    // The admin endpoint answers (not ready) while discovery syncs; a predecessor
    // answers for the node until the take-over.
    let early = match start {
        Start::Bound(listeners) => Ok(serve_admin(&mut tasks, &admin, listeners)),
        Start::TakeOver(predecessor) => Err(predecessor),
    };

    let mut signals = Signals::register()?;
    let mut desired = discovery.watch();
    info!("waiting for discovery");
    tokio::select! {
        () = discovery.synced() => {}
        () = signals.recv() => {
            tasks.shutdown().await;
            return Ok(Ending::Stopped);
        }
    }
    let first = desired.borrow_and_update().clone();
    apply(&first, kernel.as_ref(), &state).context("applying the config")?;
    kernel.beat()?;
    tasks.spawn(heartbeat(kernel.clone()));
    // Until the listeners are published the predecessor, or DNAT, takes the connects.
    tokio::select! {
        () = warm_up(&first, &state) => {}
        () = signals.recv() => {
            tasks.shutdown().await;
            return Ok(Ending::Stopped);
        }
    }

    let (listeners, offered) = match early {
        Ok(bound) => bound,
        Err(predecessor) => serve_admin(&mut tasks, &admin, take_over(predecessor, config).await?),
    };
    kernel.publish_listeners(&listeners)?;
    readiness.set(true);
    info!(services = first.services.len(), netns = first.enroll.len(), "sockeye is ready");

    let (stop, stopping) = tokio::sync::watch::channel(false);
    tasks.spawn(kernel_lb::run(
        state.clone(),
        kernel.clone(),
        discovery.watch(),
        metrics.clone(),
        stopping.clone(),
    ));
    let proxy = Proxy::new(kernel.clone(), state.clone(), stopping, metrics.clone(), config.limits);
    let mut accepting = JoinSet::new();
    for listener in listeners {
        accepting.spawn(proxy.clone().serve(listener));
    }
    let datapath = kernel.clone();
    tasks.spawn(async move {
        while desired.changed().await.is_ok() {
            let next = desired.borrow_and_update().clone();
            if let Err(err) = apply(&next, datapath.as_ref(), &state) {
                error!("config not applied: {err:#}; keeping the last good config");
            }
        }
    });

    let ending = serve_until_the_end(pin_dir, offered, &mut signals).await;
    readiness.set(false);
    if let Ending::HandedOff = ending {
        // The successor accepts from here on, on the same sockets.
        accepting.shutdown().await;
    }
    // HTTP/2 clients get GOAWAY; their calls in flight finish before the agent goes.
    let _ = stop.send(true);
    let open = proxy.wait_idle(SHUTDOWN_GRACE).await;
    info!(open, "shutting down");
    accepting.shutdown().await;
    tasks.shutdown().await;
    Ok(ending)
}

/// How long a starting agent waits for the first health verdicts on its services'
/// ready endpoints before it takes connections.
const WARM_UP: Duration = Duration::from_secs(5);

/// Waits until every service with an endpoint discovery calls ready has one that
/// passed its health check, or [`WARM_UP`] passes; a successor taking over before
/// then would answer UNAVAILABLE where its predecessor had a backend.
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

/// Services discovery gives a ready endpoint that no health check has passed yet.
fn cold_services(desired: &Desired, state: &State) -> Vec<String> {
    desired
        .services
        .iter()
        .filter(|d| d.endpoints.iter().any(|e| e.condition == Condition::Ready))
        .filter(|d| state.lookup(&d.vip).is_none_or(|s| s.endpoints().ready.is_empty()))
        .map(|d| d.name.clone())
        .collect()
}

/// Waits for SIGTERM or SIGINT, or for a successor to take the listeners (`offered`).
async fn serve_until_the_end(
    pin_dir: &Path,
    offered: Vec<OwnedFd>,
    signals: &mut Signals,
) -> Ending {
    let (waiting, mut successor) = tokio::sync::watch::channel(false);
    let offer = offer(pin_dir, offered, &waiting);
    tokio::pin!(offer);
    tokio::select! {
        () = signals.recv() => {
            // An upgrade (a DaemonSet with maxSurge): the successor started first and
            // takes over once ready; leaving now would refuse connects meanwhile.
            if *successor.borrow() {
                info!("a successor is getting ready: serving until it takes over");
                tokio::select! {
                    () = &mut offer => Ending::HandedOff,
                    _ = successor.wait_for(|waiting| !waiting) => Ending::Stopped,
                    () = tokio::time::sleep(HANDOFF_WAIT) => Ending::Stopped,
                }
            } else {
                Ending::Stopped
            }
        }
        () = &mut offer => Ending::HandedOff,
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

/// Makes the datapath and the services match `desired`.
///
/// VIPs of removed services leave the kernel before the state forgets them, and VIPs
/// of new services enter the kernel after the state knows them, so no steered
/// connection arrives for a service the proxy does not know.
pub fn apply(desired: &Desired, datapath: &dyn Datapath, state: &State) -> anyhow::Result<()> {
    let cookies = desired
        .enroll
        .iter()
        .map(|path| {
            datapath::netns::cookie(path)
                .with_context(|| format!("enroll.netns {}: cannot read its cookie", path.display()))
        })
        .collect::<anyhow::Result<BTreeSet<u64>>>()?;
    let new_vips: BTreeSet<SocketAddr> = desired.services.iter().map(|s| s.vip).collect();
    let kept: BTreeSet<SocketAddr> = state.vips().intersection(&new_vips).copied().collect();
    datapath.set_vips(&kept)?;
    state.apply(&desired.services);
    datapath.set_vips(&new_vips)?;
    datapath.set_enrolled(&cookies)?;
    Ok(())
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

async fn heartbeat(datapath: Arc<dyn Datapath>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    loop {
        ticker.tick().await;
        if let Err(err) = datapath.beat() {
            warn!("heartbeat failed, the kernel will stop steering soon: {err}");
        }
    }
}

/// SIGTERM and SIGINT, registered once for the agent's life so that none arriving
/// between two waits is lost.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        let register = |kind| signal(kind).context("cannot install the signal handlers");
        Ok(Self {
            term: register(SignalKind::terminate())?,
            int: register(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM: shutting down"),
            _ = self.int.recv() => info!("SIGINT: shutting down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::{Policy, Protocol},
        datapath::Recorder,
        discovery::{Condition, DesiredEndpoint, DesiredService},
    };

    fn service(name: &str, vip: &str) -> DesiredService {
        DesiredService {
            name: name.into(),
            vip: vip.parse().unwrap(),
            protocol: Protocol::Tcp,
            policy: Policy::default(),
            endpoints: vec![DesiredEndpoint {
                addr: "10.10.0.11:80".parse().unwrap(),
                condition: Condition::Ready,
            }],
        }
    }

    #[tokio::test]
    async fn apply_tells_the_datapath_and_updates_the_state() {
        let recorder = Recorder::default();
        let state = State::with_checker(Arc::new(crate::health::Manual));
        let desired = Desired {
            services: vec![service("a", "10.96.0.1:80"), service("b", "10.96.0.2:80")],
            enroll: vec!["/proc/self/ns/net".into()],
            ..Desired::default()
        };
        apply(&desired, &recorder, &state).unwrap();
        assert_eq!(recorder.vips.lock().unwrap().len(), 2);
        assert_eq!(recorder.enrolled.lock().unwrap().len(), 1);
        assert_eq!(state.vips().len(), 2);

        let fewer = Desired { services: vec![service("b", "10.96.0.2:80")], ..Desired::default() };
        apply(&fewer, &recorder, &state).unwrap();
        let vips = recorder.vips.lock().unwrap().clone();
        assert_eq!(vips.into_iter().collect::<Vec<_>>(), vec!["10.96.0.2:80".parse().unwrap()]);
        assert!(recorder.enrolled.lock().unwrap().is_empty());
        assert!(state.lookup(&"10.96.0.1:80".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn a_missing_namespace_rejects_the_whole_state() {
        let recorder = Recorder::default();
        let state = State::with_checker(Arc::new(crate::health::Manual));
        let desired = Desired {
            services: vec![service("a", "10.96.0.1:80")],
            enroll: vec![Path::new("/var/run/netns/does-not-exist").into()],
            ..Desired::default()
        };
        let err = apply(&desired, &recorder, &state).unwrap_err();
        assert!(format!("{err:#}").contains("enroll.netns /var/run/netns/does-not-exist"));
        assert!(recorder.vips.lock().unwrap().is_empty(), "nothing applied");
        assert!(state.vips().is_empty());
    }

    /// A state whose health checks never report, and one service with one endpoint.
    fn one_service(health_checked: bool, condition: Condition) -> (State, Desired) {
        let mut one = service("a", "10.96.0.1:80");
        one.policy.health.enabled = health_checked;
        one.endpoints[0].condition = condition;
        (
            State::with_checker(Arc::new(crate::health::Manual)),
            Desired { services: vec![one], ..Desired::default() },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_ends_once_each_service_has_a_ready_endpoint() {
        // Checks off: ready on discovery's word, once the service's owner has run.
        let (state, desired) = one_service(false, Condition::Ready);
        state.apply(&desired.services);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert!(started.elapsed() < WARM_UP, "{:?}", started.elapsed());
        assert!(cold_services(&desired, &state).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_gives_up_after_its_limit_on_endpoints_no_check_passed() {
        let (state, desired) = one_service(true, Condition::Ready);
        state.apply(&desired.services);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert!(started.elapsed() >= WARM_UP, "{:?}", started.elapsed());
        assert_eq!(cold_services(&desired, &state), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_does_not_wait_for_endpoints_discovery_calls_not_ready() {
        let (state, desired) = one_service(true, Condition::NotReady);
        state.apply(&desired.services);
        let started = tokio::time::Instant::now();
        warm_up(&desired, &state).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

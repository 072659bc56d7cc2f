//! The agent: wires discovery, the datapath, the proxy and the admin endpoint
//! together, keeps the kernel's view in step with discovery, and shuts down cleanly.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use proxy_common::agent::HEARTBEAT_INTERVAL_MS;
use tokio::{net::TcpListener, signal::unix::SignalKind, task::JoinSet};
use tracing::{error, info, warn};

use crate::{
    admin::{self, Admin, Readiness},
    config::Config,
    datapath::{self, Datapath, DatapathError, Kernel, KernelOptions},
    discovery::{
        Desired, Discovery,
        kube::Kube,
        static_file::{POLL_INTERVAL, StaticFile},
    },
    eviction,
    metrics::Metrics,
    proxy::Proxy,
    state::State,
};

pub struct RunOptions {
    pub source: Source,
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
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
    config: Config,
) -> anyhow::Result<()> {
    // Listen before the kernel steers anything here.
    let mut listeners = vec![bind(config.listen, "listen").await?];
    if let Some(listen6) = config.listen6 {
        listeners.push(bind(listen6, "listen6").await?);
    }
    let admin_listener = bind(config.admin, "admin").await?;
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

    let result = serve(kernel.clone(), &discovery, listeners, admin_listener).await;
    let kernel = Arc::into_inner(kernel).expect("every task holding the datapath has ended");
    kernel.shutdown().context("detaching the kernel programs")?;
    result
}

async fn serve(
    kernel: Arc<Kernel>,
    discovery: &impl Discovery,
    listeners: Vec<TcpListener>,
    admin_listener: TcpListener,
) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::default());
    let state = Arc::new(State::default());
    let metrics = Metrics::new(kernel.clone(), state.clone());
    let mut tasks = JoinSet::new();
    let admin = Admin {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        state: state.clone(),
        datapath: kernel.clone(),
    };
    tasks.spawn(admin::serve(admin_listener, Arc::new(admin)));
    tasks.spawn(count_transitions(state.subscribe(), metrics.clone()));
    tasks.spawn(eviction::run(state.subscribe(), discovery.watch(), metrics.clone()));

    let mut desired = discovery.watch();
    info!("waiting for discovery");
    tokio::select! {
        () = discovery.synced() => {}
        signal = shutdown_signal() => {
            tasks.shutdown().await;
            return signal.map_err(Into::into);
        }
    }
    let first = desired.borrow_and_update().clone();
    apply(&first, kernel.as_ref(), &state).context("applying the config")?;
    kernel.beat()?;
    readiness.set(true);
    info!(services = first.services.len(), netns = first.enroll.len(), "sockeye is ready");

    tasks.spawn(heartbeat(kernel.clone()));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let proxy = Proxy::new(kernel.clone(), state.clone(), stopping, metrics.clone());
    for listener in listeners {
        tasks.spawn(proxy.clone().serve(listener));
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

    shutdown_signal().await?;
    readiness.set(false);
    // HTTP/2 clients get GOAWAY; their calls in flight finish before the agent goes.
    let _ = stop.send(true);
    let open = proxy.wait_idle(SHUTDOWN_GRACE).await;
    info!(open, "shutting down");
    tasks.shutdown().await;
    Ok(())
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

async fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {field} {addr}; if the address is missing on this node, \
             add it (for example `ip addr add {}/32 dev lo`)",
            addr.ip()
        )
    })
}

async fn shutdown_signal() -> Result<(), DatapathError> {
    let io = |source| DatapathError::Io { path: "signal handler".into(), source };
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).map_err(io)?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).map_err(io)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
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
}

//! Discovery: what services and endpoints exist, and which network namespaces are
//! enrolled. The static file is one source; the Kubernetes API is another.

pub mod kube;
pub mod static_file;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::sync::watch;

use crate::config::{Config, Policy, Protocol, ServiceConfig};

/// Everything discovery knows at one moment. The agent makes it so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: Vec<DesiredService>,
    /// Services without a VIP: not steered, but clients that connect straight to
    /// their endpoints have those connections evicted when an endpoint goes.
    pub headless: Vec<HeadlessService>,
    /// Network namespaces to enroll.
    pub enroll: Vec<Enrollee>,
}

/// A network namespace to enroll, by the file that names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Enrollee {
    /// `/var/run/netns/x` (followed: a namespace made again there is enrolled anew),
    /// or `/proc/PID/ns/net` of a Pod's process.
    pub path: PathBuf,
    /// For a Pod's process: the Pod's UID, which the process's cgroup must still name
    /// when its namespace is opened, so a PID reused by another process is refused.
    pub pod_uid: Option<String>,
}

impl Enrollee {
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), pod_uid: None }
    }
}

/// One service VIP (a ClusterIP and one of its ports) and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub policy: Policy,
    pub endpoints: Vec<DesiredEndpoint>,
}

/// A Service without a VIP and its endpoints' addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadlessService {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub addr: SocketAddr,
    pub condition: Condition,
}

/// What discovery says of an endpoint (Kubernetes EndpointSlice conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Ready: eligible for traffic once its health check passes.
    Ready,
    /// Known but not ready (readiness probe failing): no traffic.
    NotReady,
    /// Terminating (Pod deleted): no new requests; in-flight ones may finish.
    Terminating,
}

impl From<&ServiceConfig> for DesiredService {
    fn from(s: &ServiceConfig) -> Self {
        Self {
            name: s.name.clone(),
            vip: s.vip,
            protocol: s.protocol,
            policy: s.policy(),
            endpoints: s
                .endpoints
                .iter()
                .map(|&addr| DesiredEndpoint { addr, condition: Condition::Ready })
                .collect(),
        }
    }
}

impl From<&Config> for Desired {
    fn from(config: &Config) -> Self {
        Self {
            services: config.services.iter().map(DesiredService::from).collect(),
            headless: Vec::new(),
            enroll: config.enroll.netns.iter().map(Enrollee::path).collect(),
        }
    }
}

/// A source of [`Desired`] states.
pub trait Discovery: Send + Sync + 'static {
    /// The latest state; the receiver sees every change.
    fn watch(&self) -> watch::Receiver<Arc<Desired>>;

    /// Resolves once the state is complete (for the API server: every kind listed).
    fn synced(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Notified to re-read the source now (SIGHUP); `None` for a source that is
    /// always current.
    fn reloads(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// How many new versions of its source discovery has rejected so far (an invalid
    /// config file), as it changes.
    fn rejections(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

impl Desired {
    /// Every endpoint address discovery knows, with the first service naming it.
    pub fn endpoints(&self) -> std::collections::BTreeMap<SocketAddr, &str> {
        let steered = self
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (e.addr, s.name.as_str())));
        let headless = self
            .headless
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |&a| (a, s.name.as_str())));
        let mut all = std::collections::BTreeMap::new();
        for (addr, service) in steered.chain(headless) {
            all.entry(addr).or_insert(service);
        }
        all
    }
}

/// A fixed state, for tests of what reacts to discovery.
pub struct Fixed(pub watch::Sender<Arc<Desired>>);

impl Discovery for Fixed {
    fn watch(&self) -> watch::Receiver<Arc<Desired>> {
        self.0.subscribe()
    }
}

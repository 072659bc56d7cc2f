//! The datapath seam: what the kernel is told, and what it reports back.
//!
//! [`Kernel`] is the real one (aya: load, attach, pin, typed maps); [`Recorder`] is the
//! test double that remembers what it was told.

pub mod evict;
pub mod kernel;
mod lb_maps;
mod mounts;
pub mod netns;
mod recorder;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
};

pub use kernel::{Kernel, KernelOptions};
pub use mounts::{cgroup2_root, require_cgroup2};
use proxy_common::{Counter, OrigDst, lb::ConnectStats};
pub use recorder::Recorder;
use tokio::sync::mpsc;

use crate::config::Capacity;

/// What the kernel programs need from the agent, and the one lookup the proxy needs.
pub trait Datapath: Send + Sync + 'static {
    /// How many services and namespaces the kernel's maps hold.
    fn capacity(&self) -> Capacity;
    /// Makes the set of enrolled network namespaces (by cookie) exactly `cookies`.
    fn set_enrolled(&self, cookies: &BTreeSet<u64>) -> Result<(), DatapathError>;
    /// Marks an enrolled namespace as at its connection cap (its connects take
    /// kube-proxy's path) or not.
    fn set_netns_full(&self, cookie: u64, full: bool) -> Result<(), DatapathError>;
    /// Makes the set of service VIPs exactly `vips`.
    fn set_vips(&self, vips: &BTreeSet<SocketAddr>) -> Result<(), DatapathError>;
    /// Tells the kernel whether the agent can take more connections; while it cannot,
    /// connects take kube-proxy's path.
    fn set_full(&self, full: bool) -> Result<(), DatapathError>;
    /// Proves the agent is alive; without it the kernel stops steering (fail open).
    fn beat(&self) -> Result<(), DatapathError>;
    /// The original destination (and client namespace) the kernel filed for the
    /// connection `client → local`, removed once read. `None` means the kernel did
    /// not redirect this connection.
    fn take_orig_dst(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OrigDst>, DatapathError>;
    /// How full the sized maps are: what the agent put there, against their capacity.
    fn usage(&self) -> Vec<MapUsage>;
    /// Whether the agent told the kernel it is full (new connects fail open).
    fn full(&self) -> bool;
    /// The kernel's counters, summed over CPUs, in [`Counter::ALL`] order.
    fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError>;
    /// Makes the VIPs in kernel mode exactly `services`' keys, each with its Ready
    /// endpoints: the kernel sends a connect to such a VIP straight to one of them
    /// (to the agent when there is none). Rewrites only what changed.
    fn set_kernel_services(
        &self,
        services: &BTreeMap<SocketAddr, Vec<SocketAddr>>,
    ) -> Result<(), DatapathError>;
    /// What the kernel saw of the connects it sent straight to endpoints, per (VIP,
    /// endpoint): totals that only grow, until the entry is dropped (the VIP leaves
    /// kernel mode, or the map makes room).
    fn kernel_connects(&self) -> Result<Vec<KernelConnects>, DatapathError>;
    /// Connects the kernel sent straight to an endpoint that failed, as they happen.
    /// Taken once: `None` after that, or where the kernel cannot tell.
    fn take_kernel_failures(&self) -> Option<mpsc::Receiver<KernelFailure>>;
}

/// A connect the kernel sent straight to an endpoint that failed: (VIP, endpoint).
pub type KernelFailure = (SocketAddr, SocketAddr);

/// One entry of [`Datapath::kernel_connects`]: (VIP, endpoint) and its counts.
pub type KernelConnects = ((SocketAddr, SocketAddr), ConnectStats);

/// One kernel map's entries against its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUsage {
    /// Its name in the config's `capacity` block.
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

impl MapUsage {
    /// The maps the agent fills itself (`services`, `pods`) from their sets' sizes.
    pub fn of(capacity: &Capacity, services: usize, pods: usize) -> Vec<Self> {
        vec![
            Self { map: "services", entries: services, capacity: capacity.services },
            Self { map: "pods", entries: pods, capacity: capacity.pods },
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot load or attach the kernel programs: {what}")]
    Program {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: {problem}")]
    Setup { path: PathBuf, problem: String },
    /// A command-line flag names something unusable.
    #[error("{flag} {path}: {problem}")]
    Flag { flag: &'static str, path: PathBuf, problem: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DatapathError {
    fn map(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Self {
        let what = what.into();
        move |source| Self::Map { what, source }
    }

    fn program<E>(what: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |source| Self::Program { what, source: Box::new(source) }
    }

    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

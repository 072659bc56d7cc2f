//! The sandbox node: a Kubernetes node in miniature, built from kernel primitives.
//!
//! The node is a network namespace of its own holding a bridge, the agent's listen
//! addresses and a kube-proxy stand-in (nftables DNAT from VIPs to Pod IPs). Each Pod
//! is a network namespace on a veth into the bridge, routed only to the bridge subnet,
//! the VIP ranges and the agent, all through the node. Every process the sandbox starts
//! runs in a test cgroup, where the agent attaches its programs. Nothing touches the
//! machine's root namespace or root cgroup, and everything is removed on drop, on a
//! panic, and (for crashed runs) by a sweep when the next sandbox starts.

mod agent;
pub mod bench;
mod cgroup;
pub mod echo_node;
pub mod extra;
pub mod grpc;
pub mod grpc_node;
pub mod kernel;
pub mod kernel_lb;
pub mod kube_api;
mod kube_proxy;
mod names;
mod netns;
pub mod node;
pub mod pattern;
pub mod plot;
pub mod probe;
mod proc;
pub mod rolling;
mod sys;
pub mod watch;
pub mod web;
pub mod web_node;

pub use agent::{ADMIN, ADMIN_CONNECTIONS, Agent, http_get};
pub use echo_node::EchoNode;
pub use grpc_node::GrpcNode;
pub use netns::Netns;
pub use node::{Pod, Sandbox, ServiceSpec};
pub use proc::Proc;
pub use sys::{
    catch_interrupt, deepen_backlog, enter_netns, interrupted, monotonic_ns, raise_nofile_limit,
};
pub use web_node::WebNode;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some` or `timeout` passes. Integration tests wait for
/// a state this way, never with a bare sleep.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the JSON report a sandbox program prints as its last non-empty line.
pub fn last_json_line<T: serde::de::DeserializeOwned>(
    output: &str,
    what: &str,
) -> anyhow::Result<T> {
    let line = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|e| anyhow::anyhow!("no {what} ({e}) in: {output}"))
}

/// Finds one of the workspace's binaries (`sockeye`, `sk-pod`) next to the running
/// executable, or in `$SOCKEYE_BIN_DIR`.
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SOCKEYE_BIN_DIR") {
        dirs.push(std::path::PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/x, or target/<profile>/deps/x for test binaries.
    for dir in exe.ancestors().skip(1).take(2) {
        dirs.push(dir.to_path_buf());
    }
    dirs.iter().map(|dir| dir.join(name)).find(|path| path.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find the `{name}` binary in {dirs:?}: build it first \
             (`cargo build --bins`; `cargo xtask test` does it for you)"
        )
    })
}

/// Serializes the tests of one test binary that would disturb each other's timing
/// (loaded sandboxes on a small machine). Hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

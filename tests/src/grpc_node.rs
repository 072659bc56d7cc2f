//! A ready-made sandbox for gRPC scenarios: an enrolled `client` Pod and backend Pods
//! `b1..bn` running `sk-pod grpc-server`, balanced by the agent as one gRPC service.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;

use crate::{Agent, Pod, Proc, Sandbox, ServiceSpec, grpc::load::LoadReport};

pub const GRPC_PORT: u16 = 50051;
pub const GRPC_VIP: &str = "10.96.0.20:50051";

pub struct GrpcNode {
    pub sandbox: Sandbox,
    backends: BTreeMap<String, Proc>,
}

impl GrpcNode {
    /// Builds the client Pod and `backends` serving backends `b1..bn`.
    pub fn new(backends: usize) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new()?;
        sandbox.add_pod("client")?;
        let mut node = Self { sandbox, backends: BTreeMap::new() };
        for i in 1..=backends {
            let name = format!("b{i}");
            node.add_backend(&name, &[])?;
            node.wait_serving(&name)?;
        }
        Ok(node)
    }

    pub fn client(&self) -> &Pod {
        self.sandbox.pod("client")
    }

    /// Adds a backend Pod and starts its server with extra `sk-pod grpc-server` flags;
    /// returns at once (a backend told to refuse first is not listening yet).
    pub fn add_backend(&mut self, name: &str, flags: &[&str]) -> anyhow::Result<()> {
        let proc = self.sandbox.add_pod(name)?.start_grpc(GRPC_PORT, flags)?;
        self.backends.insert(name.into(), proc);
        Ok(())
    }

    pub fn wait_serving(&self, name: &str) -> anyhow::Result<()> {
        self.backends[name]
            .wait_for_log(&format!("{name} serving t_ns"), Duration::from_secs(10))?;
        Ok(())
    }

    /// The backend's server process, to steer it (`send`) or signal it.
    pub fn backend(&mut self, name: &str) -> &mut Proc {
        self.backends.get_mut(name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Kills a backend's server (SIGKILL): its connections close abruptly and its port
    /// refuses from now on.
    pub fn kill_backend(&mut self, name: &str) {
        self.backends.remove(name);
    }

    /// Removes a backend's Pod (its namespace and link) without touching its process:
    /// a frozen server stays frozen and unreachable, as on a node that lost it.
    pub fn remove_backend_pod(&mut self, name: &str) -> anyhow::Result<()> {
        self.sandbox.remove_pod(name)
    }

    /// Points the service at `backends`, with extra `policy` YAML: the kube-proxy
    /// stand-in's rules and, when given, the agent's config file.
    pub fn set_endpoints(
        &self,
        backends: &[&str],
        policy: &str,
        agent: Option<&Agent>,
    ) -> anyhow::Result<()> {
        let service = self.service(backends, policy);
        self.sandbox.set_kube_proxy(std::slice::from_ref(&service))?;
        if let Some(agent) = agent {
            agent.write_config(&self.config(&service))?;
        }
        Ok(())
    }

    /// The calls a backend has received so far.
    pub fn calls(&mut self, name: &str) -> anyhow::Result<u64> {
        self.stat(name, "calls")
    }

    /// The calls a backend's `slow` command has delayed so far.
    pub fn slowed(&mut self, name: &str) -> anyhow::Result<u64> {
        self.stat(name, "slowed")
    }

    /// A count the backend prints on `stats` (`<name> <key>=<n>`), read fresh.
    fn stat(&mut self, name: &str, key: &str) -> anyhow::Result<u64> {
        let needle = format!("{name} {key}=");
        // `calls` is the last line `stats` prints: once it is new, every count is.
        let last = format!("{name} calls=");
        let count = |log: &str| log.lines().filter(|l| l.starts_with(&last)).count();
        let proc = self.backend(name);
        let before = count(&proc.log());
        proc.send("stats")?;
        let log = crate::wait_for("a stats line", Duration::from_secs(5), || {
            let log = proc.log();
            (count(&log) > before).then_some(log)
        })?;
        let line = log.lines().rfind(|l| l.starts_with(&needle)).context("no such count")?;
        line[needle.len()..].trim().parse().with_context(|| format!("bad stats line {line:?}"))
    }

    /// The gRPC service at [`GRPC_VIP`] over these backends, with extra policy YAML.
    pub fn service(&self, backends: &[&str], policy: &str) -> ServiceSpec {
        let endpoints = backends.iter().map(|b| self.sandbox.pod(b).addr(GRPC_PORT)).collect();
        ServiceSpec {
            name: "greeter".into(),
            vip: GRPC_VIP.parse().expect("a valid VIP"),
            endpoints,
            protocol: "grpc",
            policy: policy.into(),
        }
    }

    pub fn config(&self, service: &ServiceSpec) -> String {
        self.sandbox.agent_config(&[self.client()], std::slice::from_ref(service))
    }

    /// Waits until backend `name` has answered `calls` calls.
    pub fn wait_for_calls(&mut self, name: &str, calls: u64) -> anyhow::Result<()> {
        crate::wait_for(&format!("{calls} calls on {name}"), Duration::from_secs(10), || {
            (self.calls(name).ok()? >= calls).then_some(())
        })
    }

    /// Points the kube-proxy stand-in at `service` and starts the agent with the client
    /// enrolled.
    pub fn start_agent(&self, service: &ServiceSpec) -> anyhow::Result<Agent> {
        self.sandbox.set_kube_proxy(std::slice::from_ref(service))?;
        self.sandbox.start_agent(&self.config(service))
    }

    /// Waits until short bursts of calls through the VIP reach exactly `names`, with no
    /// failure: the agent has them all Ready, and no other.
    pub fn wait_in_rotation(&self, names: &[&str]) -> anyhow::Result<()> {
        let vip = GRPC_VIP.parse().expect("a valid VIP");
        crate::wait_for(&format!("{names:?} in rotation"), Duration::from_secs(20), || {
            let report =
                finish_load(self.start_load(vip, 200, Duration::from_millis(250)).ok()?).ok()?;
            let seen: Vec<&str> = report.backends.keys().map(String::as_str).collect();
            (report.failed == 0 && seen == names).then_some(())
        })
    }

    /// Starts open-loop load from the client to `target` (the VIP or a Pod).
    pub fn start_load(
        &self,
        target: SocketAddr,
        rate: u32,
        duration: Duration,
    ) -> anyhow::Result<Proc> {
        self.client().start_grpc_load(target, rate, duration)
    }
}

/// Waits for a load run to finish and reads its report.
pub fn finish_load(mut load: Proc) -> anyhow::Result<LoadReport> {
    load.wait(Duration::from_secs(120))?;
    LoadReport::parse(&load.log())
}

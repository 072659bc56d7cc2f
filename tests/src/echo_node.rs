//! A ready-made sandbox for TCP scenarios: an enrolled `client` Pod, an `outsider` Pod
//! that is not enrolled, and backend Pods `b1..bn` running the echo server.

use std::net::SocketAddr;

use crate::{Agent, Pod, Proc, Sandbox, ServiceSpec};

pub const ECHO_PORT: u16 = 7000;
/// Where [`EchoNode::mirror`] listens: a byte mirror (`sk-pod tcp-mirror`).
pub const MIRROR_PORT: u16 = 7001;

pub struct EchoNode {
    pub sandbox: Sandbox,
    backends: Vec<(String, Option<Proc>)>,
}

impl EchoNode {
    /// Builds the Pods and starts an echo server in each backend.
    pub fn new(backends: usize) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new()?;
        sandbox.add_pod("client")?;
        sandbox.add_pod("outsider")?;
        let mut started = Vec::new();
        for i in 1..=backends {
            let name = format!("b{i}");
            let proc = sandbox.add_pod(&name)?.start_echo(ECHO_PORT)?;
            started.push((name, Some(proc)));
        }
        Ok(Self { sandbox, backends: started })
    }

    pub fn client(&self) -> &Pod {
        self.sandbox.pod("client")
    }

    pub fn outsider(&self) -> &Pod {
        self.sandbox.pod("outsider")
    }

    /// A service whose endpoints are these backends' echo ports, in the VIP's family.
    pub fn service(&self, name: &str, vip: &str, backends: &[&str]) -> ServiceSpec {
        let vip: SocketAddr = vip.parse().expect("a valid VIP");
        let endpoints = backends
            .iter()
            .map(|b| {
                let pod = self.sandbox.pod(b);
                if vip.is_ipv4() { pod.addr(ECHO_PORT) } else { pod.addr6(ECHO_PORT) }
            })
            .collect();
        ServiceSpec::tcp(name, vip, endpoints)
    }

    /// Points the kube-proxy stand-in at `services` and starts the agent with the
    /// client enrolled.
    pub fn start_agent(&self, services: &[ServiceSpec]) -> anyhow::Result<Agent> {
        self.sandbox.set_kube_proxy(services)?;
        self.sandbox.start_agent(&self.agent_config(services))
    }

    pub fn agent_config(&self, services: &[ServiceSpec]) -> String {
        self.sandbox.agent_config(&[self.client()], services)
    }

    /// Starts a byte mirror on `backend`'s [`MIRROR_PORT`], names it the only endpoint
    /// of a tcp service at `vip`, and points the kube-proxy stand-in at that service.
    pub fn mirror(&self, backend: &str, vip: &str) -> anyhow::Result<(ServiceSpec, Proc)> {
        let pod = self.sandbox.pod(backend);
        let mirror = pod.spawn(&["tcp-mirror", "--port", &MIRROR_PORT.to_string()])?;
        mirror.wait_for_log("listening", std::time::Duration::from_secs(5))?;
        let service = ServiceSpec::tcp("mirror", vip.parse()?, vec![pod.addr(MIRROR_PORT)]);
        self.sandbox.set_kube_proxy(std::slice::from_ref(&service))?;
        Ok((service, mirror))
    }

    /// Stops a backend's echo server: its port refuses connections from now on.
    pub fn stop_backend(&mut self, name: &str) {
        if let Some((_, proc)) = self.backends.iter_mut().find(|(n, _)| n == name) {
            proc.take();
        }
    }
}

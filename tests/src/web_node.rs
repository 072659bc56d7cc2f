//! A ready-made sandbox for plain HTTP scenarios: an enrolled `client` Pod and backend
//! Pods `w1..wn` running `sk-pod http-server`, balanced by the agent as one `http`
//! service.

use std::time::Duration;

use crate::{Agent, Pod, Proc, Sandbox, ServiceSpec, web::shapes::WebReport};

pub const WEB_PORT: u16 = 8080;
pub const WEB_VIP: &str = "10.96.0.30:8080";

pub struct WebNode {
    pub sandbox: Sandbox,
    _backends: Vec<Proc>,
}

impl WebNode {
    /// Builds the client Pod and `backends` HTTP backends `w1..wn`, listening.
    pub fn new(backends: usize) -> anyhow::Result<Self> {
        let mut sandbox = Sandbox::new()?;
        sandbox.add_pod("client")?;
        let mut started = Vec::new();
        for i in 1..=backends {
            let name = format!("w{i}");
            let port = WEB_PORT.to_string();
            let proc = sandbox.add_pod(&name)?.spawn(&[
                "http-server",
                "--port",
                &port,
                "--name",
                &name,
            ])?;
            proc.wait_for_log("listening", Duration::from_secs(5))?;
            started.push(proc);
        }
        Ok(Self { sandbox, _backends: started })
    }

    pub fn client(&self) -> &Pod {
        self.sandbox.pod("client")
    }

    /// The `http` service at [`WEB_VIP`] over these backends, with extra policy YAML.
    pub fn service(&self, backends: &[&str], policy: &str) -> ServiceSpec {
        let endpoints = backends.iter().map(|b| self.sandbox.pod(b).addr(WEB_PORT)).collect();
        ServiceSpec {
            name: "web".into(),
            vip: WEB_VIP.parse().expect("a valid VIP"),
            endpoints,
            protocol: "http",
            policy: policy.into(),
        }
    }

    /// Points the kube-proxy stand-in at `service` and starts the agent with the client
    /// enrolled.
    pub fn start_agent(&self, service: &ServiceSpec) -> anyhow::Result<Agent> {
        self.sandbox.set_kube_proxy(std::slice::from_ref(service))?;
        let config = self.sandbox.agent_config(&[self.client()], std::slice::from_ref(service));
        self.sandbox.start_agent(&config)
    }

    /// Runs `sk-pod http-shape` from the client to the VIP and reads its report.
    pub fn shape(&self, shape: &str, flags: &[&str]) -> anyhow::Result<WebReport> {
        let mut args = vec!["http-shape", "--to", WEB_VIP, "--shape", shape];
        args.extend(flags);
        let mut proc = self.client().spawn(&args)?;
        proc.wait(Duration::from_secs(120))?;
        WebReport::parse(&proc.log())
    }
}

//! The sockeye agent, running in the sandbox's node namespace and test cgroup.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    Pod, Proc, Sandbox, ServiceSpec,
    node::{AGENT_IP4, AGENT_IP6, AGENT_PORT},
};

pub const ADMIN: &str = "127.0.0.1:15090";
/// The admin endpoint's cap on connections at once (`sockeye::admin::MAX_CONNECTIONS`).
pub const ADMIN_CONNECTIONS: usize = 64;

pub struct Agent {
    proc: Proc,
    config: PathBuf,
    pin_dir: PathBuf,
    node: crate::Netns,
}

impl Agent {
    pub(crate) fn start(sandbox: &Sandbox, config: &str, args: &[&str]) -> anyhow::Result<Self> {
        let path = sandbox.dir().join("agent.yaml");
        std::fs::write(&path, config)?;
        let mut command = Command::new(crate::binary("sockeye")?);
        command.args(["run", "--config"]).arg(&path).args(args);
        let agent = Self::spawn(sandbox, "agent", command, path)?;
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Starts an agent process named `name`, without waiting for it (see
    /// [`Agent::wait_serving`]).
    pub(crate) fn spawn_named(
        sandbox: &Sandbox,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = sandbox.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, config)?;
        let mut command = Command::new(crate::binary("sockeye")?);
        command.args(["run", "--config"]).arg(&path).args(args);
        Self::spawn(sandbox, name, command, path)
    }

    /// Waits until the log says the agent serves (it may have taken over first).
    pub fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        self.proc.wait_for_log("sockeye is ready", timeout)?;
        Ok(())
    }

    /// Starts the agent with `--kube` against the API server `kubeconfig` names, as
    /// node `node`; listeners as in the static config.
    pub(crate) fn start_kube(
        sandbox: &Sandbox,
        kubeconfig: &str,
        node: &str,
    ) -> anyhow::Result<Self> {
        let agent = Self::spawn_kube(sandbox, kubeconfig, node, "")?;
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Starts the agent with `--kube` without waiting for it; `settings` is extra
    /// YAML for its node settings file.
    pub(crate) fn spawn_kube(
        sandbox: &Sandbox,
        kubeconfig: &str,
        node: &str,
        settings: &str,
    ) -> anyhow::Result<Self> {
        let kubeconfig_path = sandbox.dir().join("kubeconfig.yaml");
        std::fs::write(&kubeconfig_path, kubeconfig)?;
        let path = sandbox.dir().join("agent.yaml");
        std::fs::write(&path, format!("{}{settings}", settings_yaml()))?;
        let mut command = Command::new(crate::binary("sockeye")?);
        command
            .args(["run", "--kube", "--config"])
            .arg(&path)
            .env("KUBECONFIG", &kubeconfig_path)
            .env("NODE_NAME", node);
        Self::spawn(sandbox, "agent", command, path)
    }

    fn spawn(
        sandbox: &Sandbox,
        name: &str,
        mut command: Command,
        path: PathBuf,
    ) -> anyhow::Result<Self> {
        // Debug logs (the kernel programs' too) unless the caller chose a level.
        let chosen = command.get_args().any(|arg| arg == "--log-level");
        command.arg("--cgroup").arg(sandbox.cgroup()).arg("--bpffs").arg(sandbox.pin_dir());
        if !chosen {
            command.args(["--log-level", "debug"]);
        }
        let proc = sandbox.spawn_in_node(name, command)?;
        Ok(Self {
            proc,
            config: path,
            pin_dir: sandbox.pin_dir().into(),
            // A second handle on the node namespace, for admin requests.
            node: crate::Netns::borrowed(sandbox.node().name()),
        })
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for("the agent to be ready", timeout, || {
            self.admin_get("/readyz").ok().filter(|(status, _)| *status == 200)
        })
        .with_context(|| format!("agent log:\n{}", self.proc.log()))?;
        Ok(())
    }

    /// GET on the admin endpoint (inside the node namespace): status and body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.node.run(|| http_get(ADMIN.parse().expect("valid"), path))?
    }

    /// The value of one `/metrics` series, as written there (name and labels).
    pub fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let (_, metrics) = self.admin_get("/metrics")?;
        Ok(metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()))
    }

    /// Replaces the config file; the agent reloads it within its poll interval.
    pub fn write_config(&self, config: &str) -> anyhow::Result<()> {
        // Write then rename, as a ConfigMap update does, so no half file is read.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// Replaces the config file and waits until the agent has applied it.
    pub fn apply_config(&self, config: &str) -> anyhow::Result<()> {
        let series = "sockeye_config_updates_total{result=\"applied\"}";
        let before = self.metric(series)?.unwrap_or(0.0);
        self.write_config(config)?;
        crate::wait_for("the new config applied", Duration::from_secs(10), || {
            (self.metric(series).ok()?? > before).then_some(())
        })?;
        Ok(())
    }

    /// The kernel programs' counters.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        crate::kernel::counters(&self.pin_dir)
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// The listeners on the node.
fn settings_yaml() -> String {
    format!(
        "listen: {AGENT_IP4}:{AGENT_PORT}\nlisten6: '[{AGENT_IP6}]:{AGENT_PORT}'\nadmin: {ADMIN}\n"
    )
}

/// The agent's config: listeners on the node, these Pods enrolled, these services.
pub fn config_yaml(enrolled: &[&Pod], services: &[ServiceSpec]) -> String {
    let netns: Vec<String> =
        enrolled.iter().map(|p| p.netns().path().display().to_string()).collect();
    let mut yaml =
        format!("{}enroll:\n  netns: [{}]\nservices:\n", settings_yaml(), netns.join(", "));
    for s in services {
        let endpoints: Vec<String> = s.endpoints.iter().map(|e| format!("'{e}'")).collect();
        yaml.push_str(&format!(
            "- name: {}\n  vip: '{}'\n  protocol: {}\n  endpoints: [{}]\n{}",
            s.name,
            s.vip,
            s.protocol,
            endpoints.join(", "),
            s.policy
        ));
    }
    if services.is_empty() {
        yaml.push_str("  []\n");
    }
    yaml
}

/// A minimal HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: sockeye\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

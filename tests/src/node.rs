//! The sandbox node and its Pods.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    Agent, Netns, Proc,
    cgroup::TestCgroup,
    kube_proxy,
    names::{self, BPFFS},
    probe::Report,
};

/// The node's side of the Pod network, and the addresses the agent listens on.
pub const NODE_IP4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, 1);
pub const AGENT_IP4: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
pub const AGENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
pub const AGENT_PORT: u16 = 15001;
/// Service VIPs come from these ranges.
pub const VIP_RANGE4: &str = "10.96.0.0/16";
pub const VIP_RANGE6: &str = "fd96::/64";

/// A service as both the kube-proxy stand-in and the agent see it.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: SocketAddr,
    pub endpoints: Vec<SocketAddr>,
    /// `tcp`, `grpc` or `http`.
    pub protocol: &'static str,
    /// Extra YAML for the agent's service entry (its `health`, `retry`, … blocks),
    /// indented two spaces.
    pub policy: String,
}

impl ServiceSpec {
    pub fn tcp(name: &str, vip: SocketAddr, endpoints: Vec<SocketAddr>) -> Self {
        Self { name: name.into(), vip, endpoints, protocol: "tcp", policy: String::new() }
    }
}

/// What a Pod needs from its sandbox to start processes.
struct Shared {
    dir: PathBuf,
    cgroup: PathBuf,
}

pub struct Sandbox {
    id: String,
    shared: Arc<Shared>,
    pods: Vec<Pod>,
    /// Pods ever added: addresses are never reused, even after a Pod is removed.
    added: u16,
    node: Netns,
    cgroup: Option<TestCgroup>,
    pin_dir: PathBuf,
}

pub struct Pod {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    netns: Netns,
    /// Its link's name on the node's side.
    veth: String,
    shared: Arc<Shared>,
}

impl Sandbox {
    /// Builds the node: its namespace with forwarding, the bridge, the agent's
    /// addresses, and a test cgroup. Sweeps leftovers of crashed runs first.
    pub fn new() -> anyhow::Result<Self> {
        let cgroup_root = cgroup2_root()?;
        names::sweep_once(&cgroup_root);
        let id = names::sandbox_id();
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let node = Netns::create(&format!("{id}-node"))?;
        let cgroup = TestCgroup::create(&cgroup_root, &id)?;
        let shared = Arc::new(Shared { dir, cgroup: cgroup.path().into() });
        let sandbox = Self {
            pin_dir: Path::new(BPFFS).join(&id),
            id,
            shared,
            pods: Vec::new(),
            added: 0,
            node,
            cgroup: Some(cgroup),
        };
        sandbox.build_node().context("building the sandbox node")?;
        Ok(sandbox)
    }

    fn build_node(&self) -> anyhow::Result<()> {
        // Forward between Pods; never redirect them to each other: all Pod traffic
        // goes through the node, where the kube-proxy stand-in sees it.
        self.node.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ])?;
        self.node.ip(&[
            // A fixed address: a bridge without one takes the lowest of its ports'
            // addresses, so adding a Pod could change the node's MAC under every other
            // Pod's neighbour cache and black-hole their traffic for seconds.
            "link add br0 address 02:00:0a:0a:00:01 type bridge",
            "link set br0 up",
            &format!("addr add {NODE_IP4}/24 dev br0"),
            &format!("addr add {NODE_IP6}/64 dev br0 nodad"),
            &format!("addr add {AGENT_IP4}/32 dev lo"),
            &format!("addr add {AGENT_IP6}/128 dev lo nodad"),
        ])
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn cgroup(&self) -> &Path {
        &self.shared.cgroup
    }

    /// The bpffs directory the agent pins its maps and links in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Adds a Pod: a namespace on a veth into the node's bridge, with one IPv4 and
    /// one IPv6 address and routes only through the node.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<&Pod> {
        let host = self.added + 2;
        anyhow::ensure!(host < 250, "a sandbox makes at most 248 Pods");
        self.added += 1;
        let ip4 = Ipv4Addr::new(10, 10, 0, host as u8);
        let ip6 = Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, host);
        let netns = Netns::create(&format!("{}-{name}", self.id))?;
        let veth = format!("veth{host}");
        self.node.ip(&[
            &format!("link add {veth} type veth peer name eth0 netns {}", netns.name()),
            &format!("link set {veth} master br0 up"),
        ])?;
        netns.sysctl(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        netns.ip(&[
            "link set eth0 up",
            &format!("addr add {ip4}/32 dev eth0"),
            &format!("addr add {ip6}/128 dev eth0 nodad"),
            &format!("route add {NODE_IP4} dev eth0 scope link"),
            &format!("route add 10.10.0.0/24 via {NODE_IP4}"),
            &format!("route add {VIP_RANGE4} via {NODE_IP4}"),
            &format!("route add {AGENT_IP4} via {NODE_IP4}"),
            &format!("route add {NODE_IP6} dev eth0"),
            &format!("route add fd10::/64 via {NODE_IP6}"),
            &format!("route add {VIP_RANGE6} via {NODE_IP6}"),
            &format!("route add {AGENT_IP6} via {NODE_IP6}"),
        ])?;
        let pod = Pod { name: name.into(), ip4, ip6, netns, veth, shared: self.shared.clone() };
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Removes a Pod: its namespace and link go, as when a node deletes a Pod's sandbox.
    /// Processes started in it are not stopped (a frozen one stays frozen).
    pub fn remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(at) = self.pods.iter().position(|p| p.name == name) else {
            anyhow::bail!("no pod {name}");
        };
        let pod = self.pods.remove(at);
        // A process still inside keeps the namespace alive; the link goes regardless.
        self.node.ip(&[&format!("link del {}", pod.veth)])
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Replaces the kube-proxy stand-in's rules: DNAT from each VIP to its endpoints.
    pub fn set_kube_proxy(&self, services: &[ServiceSpec]) -> anyhow::Result<()> {
        kube_proxy::apply(&self.node, services)
    }

    /// Starts the agent in the node namespace and the test cgroup with `config`
    /// (YAML), and waits until it is ready.
    pub fn start_agent(&self, config: &str) -> anyhow::Result<Agent> {
        Agent::start(self, config, &[])
    }

    /// [`Sandbox::start_agent`] with more `sockeye run` flags (e.g. `--accel on`).
    pub fn start_agent_with(&self, config: &str, args: &[&str]) -> anyhow::Result<Agent> {
        Agent::start(self, config, args)
    }

    /// Starts an agent process named `name` (its log file) with `config` and `args`,
    /// beside a running agent (it takes over) or after a killed one (it adopts the
    /// pins); waits until it serves.
    pub fn start_agent_named(
        &self,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> anyhow::Result<Agent> {
        let agent = Agent::spawn_named(self, name, config, args)?;
        agent.wait_serving(Duration::from_secs(20))?;
        Ok(agent)
    }

    /// [`Sandbox::start_agent_named`] without the wait.
    pub fn spawn_agent_named(
        &self,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> anyhow::Result<Agent> {
        Agent::spawn_named(self, name, config, args)
    }

    /// Starts the agent with `sockeye run --kube` against the API server that
    /// `kubeconfig` names, as node `node`, and waits until it is ready.
    pub fn start_agent_kube(&self, kubeconfig: &str, node: &str) -> anyhow::Result<Agent> {
        Agent::start_kube(self, kubeconfig, node)
    }

    /// Starts the agent with `--kube` without waiting for it to be ready; `settings`
    /// is YAML added to its node settings file.
    pub fn spawn_agent_kube(
        &self,
        kubeconfig: &str,
        node: &str,
        settings: &str,
    ) -> anyhow::Result<Agent> {
        Agent::spawn_kube(self, kubeconfig, node, settings)
    }

    /// A config file for the agent: these Pods enrolled, these services.
    pub fn agent_config(&self, enrolled: &[&Pod], services: &[ServiceSpec]) -> String {
        crate::agent::config_yaml(enrolled, services)
    }

    /// Starts `sockeye run --config FILE <args>` in the node namespace and the test
    /// cgroup, with only the flags given (no `--cgroup` or `--bpffs` of the sandbox's),
    /// and returns at once: for start errors and agents of their own.
    pub fn spawn_sockeye(&self, name: &str, config: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let path = self.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, config)?;
        let mut command = Command::new(crate::binary("sockeye")?);
        command.args(["run", "--config"]).arg(&path).args(args);
        self.spawn_in_node(name, command)
    }

    /// Starts `sk-pod <args>` in the node namespace (where the admin endpoint listens).
    pub fn spawn_on_node(&self, args: &[&str]) -> anyhow::Result<Proc> {
        let mut command = Command::new(crate::binary("sk-pod")?);
        command.args(args);
        self.spawn_in_node(&format!("node:{}", args.first().unwrap_or(&"")), command)
    }

    /// Starts a program in the node namespace and the test cgroup.
    pub(crate) fn spawn_in_node(&self, name: &str, command: Command) -> anyhow::Result<Proc> {
        spawn(&self.shared, &self.node, name, command)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Processes first (the cgroup kills them), then links and namespaces.
        drop(self.cgroup.take());
        self.pods.clear();
        if self.pin_dir.exists()
            && let Err(err) = std::fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!("sandbox: removing {}: {err}", self.pin_dir.display());
        }
        if std::thread::panicking() {
            eprintln!("sandbox: logs kept in {}", self.shared.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.shared.dir);
        }
    }
}

impl Pod {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `addr:port` of this Pod (IPv4).
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip4, port))
    }

    /// `[addr]:port` of this Pod (IPv6).
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip6, port))
    }

    /// Starts `sk-pod <args>` in this Pod (its namespace, the test cgroup).
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Proc> {
        let mut command = Command::new(crate::binary("sk-pod")?);
        command.args(args);
        let name = format!("{}:{}", self.name, args.first().unwrap_or(&""));
        spawn(&self.shared, &self.netns, &name, command)
    }

    /// Starts a stand-in for the Pod's sandbox ("pause") process, in a kubelet-style
    /// cgroup `kubepods/pod<uid>` below the test cgroup: where `sockeye run --kube`
    /// finds the network namespace of the Pod with that UID.
    ///
    /// It can be told to pose as a process outside the Pod (`Proc::send("become NETNS
    /// CGROUP")`), as a process that inherited the PID of the Pod's would.
    pub fn start_pause(&self, uid: &str) -> anyhow::Result<Proc> {
        let cgroup = self.shared.cgroup.join("kubepods").join(format!("pod{uid}"));
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let mut command = Command::new(crate::binary("sk-pod")?);
        command.arg("pause");
        spawn_in(&self.shared, &self.netns, &format!("{}:pause", self.name), command, &cgroup)
    }

    /// Starts a TCP echo backend named after this Pod on `port` (IPv4 and IPv6).
    pub fn start_echo(&self, port: u16) -> anyhow::Result<Proc> {
        let proc = self.spawn(&["tcp-echo", "--port", &port.to_string(), "--name", &self.name])?;
        proc.wait_for_log("listening", Duration::from_secs(5))?;
        Ok(proc)
    }

    /// Starts a gRPC backend named after this Pod (`sk-pod grpc-server`) with extra
    /// flags (e.g. `["--refuse-ms", "2000"]`); returns once it has started, which may be
    /// before it listens when it is told to refuse first.
    pub fn start_grpc(&self, port: u16, extra: &[&str]) -> anyhow::Result<Proc> {
        let port = port.to_string();
        let mut args = vec!["grpc-server", "--port", &port, "--name", &self.name];
        args.extend(extra);
        self.spawn(&args)
    }

    /// Starts `sk-pod grpc-load` against `target`; wait for it and read its report with
    /// [`crate::grpc::load::LoadReport::parse`] on [`Proc::log`].
    pub fn start_grpc_load(
        &self,
        target: SocketAddr,
        rate: u32,
        duration: Duration,
    ) -> anyhow::Result<Proc> {
        self.start_grpc_load_with(target, rate, duration, &[])
    }

    /// [`Pod::start_grpc_load`] with extra flags (`--timeout-ms`, `--max-in-flight`, …).
    pub fn start_grpc_load_with(
        &self,
        target: SocketAddr,
        rate: u32,
        duration: Duration,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let (to, rate, ms) =
            (target.to_string(), rate.to_string(), duration.as_millis().to_string());
        let mut args = vec!["grpc-load", "--to", &to, "--rate", &rate, "--duration-ms", &ms];
        args.extend(extra);
        self.spawn(&args)
    }

    /// Runs `sk-pod tcp-probe` against `target` and returns its report.
    pub fn probe(
        &self,
        target: SocketAddr,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Report> {
        self.probe_within(target, count, concurrency, Duration::from_secs(2))
    }

    /// [`Pod::probe`] giving each connection `timeout` to connect and to echo (on a
    /// node loaded on purpose).
    pub fn probe_within(
        &self,
        target: SocketAddr,
        count: usize,
        concurrency: usize,
        timeout: Duration,
    ) -> anyhow::Result<Report> {
        let args = [
            "tcp-probe".to_string(),
            "--to".into(),
            target.to_string(),
            "--count".into(),
            count.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--timeout-ms".into(),
            timeout.as_millis().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = self.spawn(&args)?;
        proc.wait(Duration::from_secs(60))?;
        Report::parse(&proc.log()).with_context(|| format!("probe from {} to {target}", self.name))
    }
}

fn spawn(shared: &Shared, netns: &Netns, name: &str, command: Command) -> anyhow::Result<Proc> {
    spawn_in(shared, netns, name, command, &shared.cgroup)
}

/// [`spawn`] into `cgroup` (the test cgroup or one below it).
fn spawn_in(
    shared: &Shared,
    netns: &Netns,
    name: &str,
    command: Command,
    cgroup: &Path,
) -> anyhow::Result<Proc> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let log = shared.dir.join(format!("{n:03}-{}.log", name.replace([':', '/'], "-")));
    Proc::spawn(name, command, netns.open()?, Some(procs), &log)
}

/// The cgroup v2 mount point.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup2 filesystem is mounted")
}

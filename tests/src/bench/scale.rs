//! `bench scale`: a node of a big cluster. The agent knows `known` Services of 10
//! endpoints each (static config, or the fake API server with as many EndpointSlices
//! and 110 Pods on the node) and the client Pod uses `used` of them under light
//! load. Measured: time to ready (sync), RSS, idle CPU, connections to endpoints
//! (of used Services, and of the others: none expected), Services started, and with
//! `--kube` the time from an EndpointSlice change to the balancer's transition while
//! other changes arrive; apart, the time to evict 100 sockets among many others.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{Usage, say};
use crate::{
    Agent, GrpcNode, ServiceSpec, grpc_node::GRPC_PORT, grpc_node::finish_load, kube_api::FakeApi,
    node::NODE_IP4,
};

pub struct Options {
    /// Services known, one run each (the first is the baseline).
    pub known: Vec<usize>,
    pub used: usize,
    /// EndpointSlice changes timed, and other changes per second beside them.
    pub changes: usize,
    pub background_rate: u32,
    /// How long idle CPU is measured.
    pub window: Duration,
}

/// Endpoints per Service (backend Pods of the used Services).
const ENDPOINTS: usize = 10;
const NODE: &str = "node-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Static,
    Kube,
}

#[derive(Debug, serde::Serialize)]
pub struct Run {
    pub source: Source,
    pub known: usize,
    pub used: usize,
    /// From start to ready (discovery synced, VIPs in the kernel).
    pub sync_ms: u64,
    pub rss_ready_kib: u64,
    /// After the used Services ran under load and went quiet.
    pub rss_used_kib: u64,
    pub peak_rss_kib: u64,
    /// CPU at ready, before any call: what knowing the Services costs.
    pub ready_cpu_percent: f64,
    /// CPU while nothing is sent, the used Services still started.
    pub idle_cpu_percent: f64,
    pub calls: u64,
    pub failed_calls: u64,
    pub services_started: usize,
    /// The agent's TCP connections to the used Services' endpoints (health checks and
    /// upstream pools), and to any other Service's endpoint.
    pub connections_used: usize,
    pub connections_unused: usize,
    /// EndpointSlice change → the balancer's transition (`--kube` runs).
    pub update_p50_ms: Option<f64>,
    pub update_p99_ms: Option<f64>,
    pub updates_timed: usize,
}

pub fn run(options: &Options) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for source in [Source::Static, Source::Kube] {
        for &known in &options.known {
            say(&format!("{source:?}: {known} Services known, {} used", options.used));
            let run = run_one(source, known, options)?;
            say(&format!("{run:?}"));
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Used Service `i`'s VIP: 10.96.0.0/16, where the Pods route.
fn vip(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 96, (i / 250) as u8, (i % 250 + 1) as u8], GRPC_PORT))
}

/// An endpoint of an unused Service: an address on the node's bridge where nothing
/// answers, so that any connection the agent tried would show (SYN_SENT).
fn unused_endpoint(service: usize, k: usize) -> SocketAddr {
    SocketAddr::from(([10, 10, 0, 100 + k as u8], 20_000 + (service % 40_000) as u16))
}

fn unused_ip(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 10, 0] && v4.octets()[3] >= 100)
}

fn endpoints(node: &GrpcNode, i: usize, used: usize) -> Vec<SocketAddr> {
    (0..ENDPOINTS)
        .map(|k| {
            if i < used {
                node.sandbox.pod(&format!("b{}", k + 1)).addr(GRPC_PORT)
            } else {
                unused_endpoint(i, k)
            }
        })
        .collect()
}

fn run_one(source: Source, known: usize, o: &Options) -> anyhow::Result<Run> {
    let node = GrpcNode::new(ENDPOINTS)?;
    let used = o.used.min(known);
    let services: Vec<ServiceSpec> = (0..known)
        .map(|i| ServiceSpec {
            name: format!("s{i}"),
            vip: vip(i),
            endpoints: endpoints(&node, i, used),
            protocol: "grpc",
            policy: String::new(),
        })
        .collect();
    node.sandbox.set_kube_proxy(&services[..used])?;
    let started = Instant::now();
    // The client Pod's sandbox process, for the agent to find its namespace.
    let mut pause = None;
    let (agent, api) = match source {
        Source::Static => {
            let config = node.sandbox.agent_config(&[node.client()], &services);
            (node.sandbox.spawn_agent_named("agent", &config, &[])?, None)
        }
        Source::Kube => {
            let listener =
                node.sandbox.node().run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
            let api = FakeApi::start(listener)?;
            pause = Some(node.client().start_pause("0000-client")?);
            fill_api(&api, &services)?;
            (node.sandbox.spawn_agent_kube(&api.kubeconfig(), NODE, "")?, Some(api))
        }
    };
    agent.wait_ready(Duration::from_secs(600))?;
    let sync_ms = started.elapsed().as_millis() as u64;
    let pid = agent.proc().pid();
    let rss_ready_kib = Usage::of(pid)?.rss_kib;
    let ready_cpu_percent = cpu_percent(pid, o.window)?;

    // Light load: two calls a second to each used Service, for 10 s.
    let to: Vec<String> = (0..used).map(|i| vip(i).to_string()).collect();
    let (to, rate) = (to.join(","), (used * 2).to_string());
    let load = node.client().spawn(&[
        "grpc-load",
        "--to",
        &to,
        "--rate",
        &rate,
        "--duration-ms",
        "10000",
        "--timeout-ms",
        "5000",
    ])?;
    let load = finish_load(load)?;
    if load.failed > 0 {
        say(&format!("failed calls: {:?}", load.errors));
    }

    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu_percent = cpu_percent(pid, o.window)?;
    let (connections_used, connections_unused) = connections(&agent)?;
    let services_started = agent.log().matches("starting: a connection arrived").count();

    let (update_p50_ms, update_p99_ms, updates_timed) = match &api {
        Some(api) => updates(api, &agent, &node, used, known, o)?,
        None => (None, None, 0),
    };
    drop(pause);
    Ok(Run {
        source,
        known,
        used,
        sync_ms,
        rss_ready_kib,
        rss_used_kib: Usage::of(pid)?.rss_kib,
        peak_rss_kib: Usage::of(pid)?.peak_rss_kib,
        ready_cpu_percent,
        idle_cpu_percent,
        calls: load.sent,
        failed_calls: load.failed,
        services_started,
        connections_used,
        connections_unused,
        update_p50_ms,
        update_p99_ms,
        updates_timed,
    })
}

/// The share of a core process `pid` used over the next `window`.
fn cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = Usage::of(pid)?.cpu_seconds;
    std::thread::sleep(window);
    Ok((Usage::of(pid)?.cpu_seconds - before) / window.as_secs_f64() * 100.0)
}

/// The agent's TCP sockets to endpoints (its network namespace's, by remote
/// address): of used Services (established) and of unused ones (any state).
fn connections(agent: &Agent) -> anyhow::Result<(usize, usize)> {
    let table = std::fs::read_to_string(format!("/proc/{}/net/tcp", agent.proc().pid()))?;
    let (mut used, mut unused) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else { continue };
        let Some((ip, port)) = remote.split_once(':') else { continue };
        let ip = IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16)?.swap_bytes()));
        let port = u16::from_str_radix(port, 16)?;
        if unused_ip(ip) {
            unused += 1;
        } else if port == GRPC_PORT && *state == "01" && ip != IpAddr::V4(NODE_IP4) {
            used += 1;
        }
    }
    Ok((used, unused))
}

fn namespace(name: &str, enabled: bool) -> Value {
    let labels = if enabled { json!({"sockeye.dev/proxy": "enabled"}) } else { json!({}) };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, namespace: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": uid},
           "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running"}})
}

fn service(s: &ServiceSpec) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": s.name, "namespace": "shop"},
           "spec": {"type": "ClusterIP", "clusterIP": s.vip.ip().to_string(),
                    "clusterIPs": [s.vip.ip().to_string()],
                    "ports": [{"name": "grpc", "port": s.vip.port(), "protocol": "TCP"}]}})
}

/// The Service's slice; `changed` marks one endpoint terminating (`Some(true)`) or
/// leaves it out (`Some(false)`).
fn slice(s: &ServiceSpec, changed: Option<(usize, bool)>) -> Value {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .enumerate()
        .filter(|(k, _)| changed != Some((*k, false)))
        .map(|(k, e)| {
            let terminating = changed == Some((k, true));
            json!({"addresses": [e.ip().to_string()],
                   "conditions": {"ready": !terminating, "serving": true, "terminating": terminating}})
        })
        .collect();
    let port = s.endpoints.first().map_or(GRPC_PORT, SocketAddr::port);
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{}-abcde", s.name), "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": s.name}},
           "addressType": "IPv4",
           "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn fill_api(api: &FakeApi, services: &[ServiceSpec]) -> anyhow::Result<()> {
    api.apply(namespace("shop", true))?;
    api.apply(namespace("other", false))?;
    api.apply(pod("client", "shop", "0000-client"))?;
    // The rest of a full node's 110 Pods, in a namespace that is not opted in.
    for i in 1..110 {
        api.apply(pod(&format!("p{i}"), "other", &format!("0000-p{i}")))?;
    }
    for s in services {
        api.apply(service(s))?;
        api.apply(slice(s, None))?;
    }
    Ok(())
}

/// Times `o.changes` EndpointSlice changes of used Services (an endpoint terminating,
/// or removed) while `o.background_rate` changes a second go to unused ones: from
/// the change to the agent's log line of the endpoint's transition.
fn updates(
    api: &FakeApi,
    agent: &Agent,
    node: &GrpcNode,
    used: usize,
    known: usize,
    o: &Options,
) -> anyhow::Result<(Option<f64>, Option<f64>, usize)> {
    let specs: Vec<ServiceSpec> = (0..known)
        .map(|i| ServiceSpec {
            name: format!("s{i}"),
            vip: vip(i),
            endpoints: endpoints(node, i, used),
            protocol: "grpc",
            policy: String::new(),
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let background =
        std::thread::scope(|scope| -> anyhow::Result<Vec<(SystemTime, String, SocketAddr)>> {
            let (stop_bg, specs_bg) = (stop.clone(), &specs);
            let rate = o.background_rate.max(1);
            let bg = scope.spawn(move || -> anyhow::Result<()> {
                let unused = &specs_bg[used..];
                let mut n = 0usize;
                let start = Instant::now();
                while !stop_bg.load(Ordering::Relaxed) && !unused.is_empty() {
                    let s = &unused[n % unused.len()];
                    api.apply(slice(s, Some((n % ENDPOINTS, n.is_multiple_of(2)))))?;
                    n += 1;
                    let due = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                Ok(())
            });
            let mut timed = Vec::new();
            for k in 0..o.changes {
                let (i, round) = (k % used, k / used);
                let s = &specs[i];
                let e = round % ENDPOINTS;
                let at = SystemTime::now();
                api.apply(slice(s, Some((e, round % 2 == 0))))?;
                timed.push((at, format!("shop/s{i}:grpc"), s.endpoints[e]));
                // About 20 timed changes a second.
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
            bg.join().map_err(|_| anyhow::anyhow!("background changes panicked"))??;
            Ok(timed)
        })?;
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    let transitions: Vec<(f64, &str)> = log
        .lines()
        .filter(|l| l.contains(" endpoint service=") && l.contains("from=Some(Ready)"))
        .filter_map(|l| Some((log_time(l.split_whitespace().next()?)?, l)))
        .collect();
    let mut latencies: Vec<f64> = Vec::new();
    for (at, service, endpoint) in &background {
        let at = at.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
        let (service, endpoint) = (format!("service={service} "), format!("endpoint={endpoint} "));
        let seen = transitions
            .iter()
            .find(|(t, l)| *t >= at - 0.001 && l.contains(&service) && l.contains(&endpoint));
        if let Some((t, _)) = seen {
            latencies.push(((t - at) * 1000.0).max(0.0));
        }
    }
    if latencies.is_empty() {
        return Ok((None, None, 0));
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((Some(pick(0.5)), Some(pick(0.99)), latencies.len()))
}

/// Seconds since the epoch of a log line's RFC 3339 UTC time
/// (`2026-11-30T14:13:45.123456Z`).
fn log_time(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let s = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

#[derive(Debug, serde::Serialize)]
pub struct Eviction {
    /// Other sockets in the client's namespace.
    pub others: usize,
    pub evicted: usize,
    /// Each round's time, as the agent logged it.
    pub rounds_ms: Vec<f64>,
}

/// Evicting 100 sockets to one gone endpoint from a Pod that holds `others` more
/// to another endpoint: the agent's own measure of the eviction, per round.
pub fn eviction(others: usize, rounds: usize) -> anyhow::Result<Eviction> {
    let node = GrpcNode::new(2)?;
    let (b1, b2) = (node.sandbox.pod("b1").addr(GRPC_PORT), node.sandbox.pod("b2").addr(GRPC_PORT));
    let vip: SocketAddr = "10.96.200.1:50051".parse()?;
    let config = |endpoints: Vec<SocketAddr>| {
        let mut spec = ServiceSpec::tcp("evict", vip, endpoints);
        spec.policy = "  health: {enabled: false}\n".into();
        node.sandbox.agent_config(&[node.client()], &[spec])
    };
    let agent = node.sandbox.start_agent(&config(vec![b1, b2]))?;
    let hold = "600000";
    let (to, count) = (b1.to_string(), others.to_string());
    let mut many =
        node.client().spawn(&["tcp-idle", "--to", &to, "--count", &count, "--hold-ms", hold])?;
    many.wait_for_log(&format!("opened {others}"), Duration::from_secs(300))?;
    let mut rounds_ms = Vec::new();
    let mut evicted = 0;
    for round in 0..rounds {
        if round > 0 {
            agent.write_config(&config(vec![b1, b2]))?;
            std::thread::sleep(Duration::from_secs(1));
        }
        let to = b2.to_string();
        let mut few =
            node.client().spawn(&["tcp-idle", "--to", &to, "--count", "100", "--hold-ms", hold])?;
        few.wait_for_log("opened 100", Duration::from_secs(60))?;
        let seen = agent.log().matches("evicted direct connections").count();
        agent.write_config(&config(vec![b1]))?;
        let line = crate::wait_for("the eviction", Duration::from_secs(30), || {
            let log = agent.log();
            let lines: Vec<&str> =
                log.lines().filter(|l| l.contains("evicted direct connections")).collect();
            lines.get(seen).map(|l| l.to_string())
        })?;
        evicted = field(&line, "sockets=").and_then(|s| s.parse().ok()).unwrap_or(0);
        let elapsed = field(&line, "elapsed=").context("no elapsed= in the eviction line")?;
        rounds_ms.push(duration_ms(elapsed).context("odd elapsed")?);
        let _ = few.wait(Duration::ZERO);
    }
    let _ = many.wait(Duration::ZERO);
    Ok(Eviction { others, evicted, rounds_ms })
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|f| f.strip_prefix(name))
}

/// A `Debug`-printed duration (`812.4µs`, `3.2ms`, `1.1s`) in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let units = [("ns", 1e-6), ("µs", 1e-3), ("us", 1e-3), ("ms", 1.0), ("s", 1e3)];
    units
        .iter()
        .find_map(|(unit, scale)| Some(text.strip_suffix(unit)?.parse::<f64>().ok()? * scale))
}

/// The results as a markdown table: each run beside the baseline.
pub fn table(runs: &[Run], evictions: &[Eviction]) -> String {
    let mut out = String::from(
        "| discovery | Services known (used) | ready after | RSS ready → used | idle CPU ready / used | \
         calls (failed) | started | connections to used / unused endpoints | update p50 / p99 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let updates = match (r.update_p50_ms, r.update_p99_ms) {
            (Some(p50), Some(p99)) => {
                format!("{p50:.1} / {p99:.1} ms ({} changes)", r.updates_timed)
            }
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {:?} | {} ({}) | {:.1} s | {:.1} → {:.1} MiB | {:.2}% / {:.2}% | {} ({}) | {} | {} / {} | {} |\n",
            r.source,
            r.known,
            r.used,
            r.sync_ms as f64 / 1000.0,
            r.rss_ready_kib as f64 / 1024.0,
            r.rss_used_kib as f64 / 1024.0,
            r.ready_cpu_percent,
            r.idle_cpu_percent,
            r.calls,
            r.failed_calls,
            r.services_started,
            r.connections_used,
            r.connections_unused,
            updates,
        ));
    }
    out.push_str("\n| eviction: other sockets in the Pod | sockets evicted | time per round |\n|---|---|---|\n");
    for e in evictions {
        let rounds: Vec<String> = e.rounds_ms.iter().map(|ms| format!("{ms:.2} ms")).collect();
        out.push_str(&format!("| {} | {} | {} |\n", e.others, e.evicted, rounds.join(", ")));
    }
    out
}

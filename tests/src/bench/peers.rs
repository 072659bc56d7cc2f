//! The peers suite: the same gRPC unary load from a Pod to a Service of three
//! backends, side by side in one sandbox: straight to one Pod (the physical limit),
//! kube-proxy's DNAT, sockeye (hedging off, the default, then on), HAProxy and nginx
//! (both from Debian's packages, HTTP/2 on both sides, configured as
//! docs/benchmarks.md shows). For each proxy, what its processes spent per call over
//! the measured round: CPU (user and system), context switches, system calls (with
//! perf). For sockeye it also counts the extra tries the agent sent (retries and
//! hedges) as a share of the calls, and profiles the agent in an extra round.

use std::{net::SocketAddr, process::Command, time::Duration};

use serde::Serialize;

use super::{
    SUSTAINED_P99_US, Usage, load, perf, perf::SyscallCount, profile::Profile, ramp, ratio, say,
    start_load,
};
use crate::{
    GrpcNode, Pod, Proc, extra::ExtraLoad, grpc::load::Percentiles, grpc_node::GRPC_PORT,
    grpc_node::finish_load, node::NODE_IP4, rolling::HEDGING,
};

const HAPROXY_PORT: u16 = 9000;
const NGINX_PORT: u16 = 9001;
const SOCKEYE: &str = "sockeye";
/// sockeye with the service's `hedge` block on (every setting its default).
const SOCKEYE_HEDGING: &str = "sockeye, hedging";
/// Issue 17's bound for the cheapest L7 hop: a rate counts when p99 stays under it.
pub const TIGHT_P99_US: u64 = 5_000;
/// How long perf samples the agent in the profile round.
const PROFILE_FOR: Duration = Duration::from_secs(4);

pub struct Options {
    pub rate: u32,
    pub round: Duration,
    pub ramp: Vec<u32>,
}

/// The results of every path, and the agent's profile when perf could take one.
pub struct Outcome {
    pub paths: Vec<PathResult>,
    pub profile: Option<Profile>,
}

#[derive(Debug, Serialize)]
pub struct PathResult {
    pub path: &'static str,
    pub latency_us: Percentiles,
    pub failed: u64,
    /// What the proxy's processes spent (none for direct and DNAT).
    #[serde(flatten)]
    pub cost: Option<Cost>,
    /// sockeye: retries and hedges sent, as a share of the calls of the round.
    pub extra_load: Option<f64>,
    /// The highest rate of the ramp sustained with p99 under 20 ms.
    pub max_rate: u32,
    /// The same, with p99 under 5 ms ([`TIGHT_P99_US`]).
    pub max_rate_p99_5ms: u32,
    /// p99 at each rate of the ramp, until the first rate not sustained.
    pub ramp_p99_us: Vec<(u32, u64)>,
}

/// A proxy's processes over the measured round, per call that succeeded.
#[derive(Debug, Serialize)]
pub struct Cost {
    /// CPU seconds per 1,000 calls, and its user and system parts.
    pub cpu_seconds_per_1k: f64,
    pub user_seconds_per_1k: f64,
    pub system_seconds_per_1k: f64,
    /// Context switches per call, summed over every thread.
    pub voluntary_switches_per_call: f64,
    pub nonvoluntary_switches_per_call: f64,
    /// System calls entered per call (perf's `raw_syscalls:sys_enter`); none without
    /// perf.
    pub syscalls_per_call: Option<f64>,
    /// Resident memory after the round.
    pub rss_kib: u64,
}

impl Cost {
    fn of_round(before: &Usage, after: &Usage, calls: u64, syscalls: Option<u64>) -> Self {
        let calls = calls as f64;
        let per_1k = |seconds: f64| ratio(seconds, calls / 1000.0);
        let per_call = |n: u64| ratio(n as f64, calls);
        Self {
            cpu_seconds_per_1k: per_1k(after.cpu_seconds - before.cpu_seconds),
            user_seconds_per_1k: per_1k(after.user_seconds - before.user_seconds),
            system_seconds_per_1k: per_1k(after.system_seconds - before.system_seconds),
            voluntary_switches_per_call: per_call(
                after.voluntary_switches.saturating_sub(before.voluntary_switches),
            ),
            nonvoluntary_switches_per_call: per_call(
                after.nonvoluntary_switches.saturating_sub(before.nonvoluntary_switches),
            ),
            syscalls_per_call: syscalls.map(per_call),
            rss_kib: after.rss_kib,
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<Outcome> {
    say("building the sandbox: client (enrolled), outsider, backends b1-b3, agent, HAProxy, nginx");
    let mut node = GrpcNode::new(3)?;
    node.sandbox.add_pod("outsider")?;
    let service = node.service(&["b1", "b2", "b3"], "");
    let agent = node.start_agent(&service)?;
    node.wait_in_rotation(&["b1", "b2", "b3"])?;
    let backends: Vec<SocketAddr> = service.endpoints.clone();
    let haproxy = start_haproxy(&node, &backends)?;
    let nginx = start_nginx(&node, &backends)?;

    let paths: [(&'static str, &str, SocketAddr, Vec<u32>); 6] = [
        ("direct", "client", node.sandbox.pod("b1").addr(GRPC_PORT), vec![]),
        ("kube-proxy DNAT", "outsider", service.vip, vec![]),
        (SOCKEYE, "client", service.vip, vec![agent.proc().pid()]),
        (SOCKEYE_HEDGING, "client", service.vip, vec![agent.proc().pid()]),
        ("HAProxy", "client", SocketAddr::from((NODE_IP4, HAPROXY_PORT)), vec![haproxy.pid()]),
        ("nginx", "client", SocketAddr::from((NODE_IP4, NGINX_PORT)), process_tree(nginx.pid())),
    ];
    let (mut results, mut profile) = (Vec::new(), None);
    for (path, from, to, pids) in paths {
        if path == SOCKEYE_HEDGING {
            agent.apply_config(&node.config(&node.service(&["b1", "b2", "b3"], HEDGING)))?;
        }
        say(&format!("{path}: warm-up, then {} calls/s for {:?}", options.rate, options.round));
        let pod = node.sandbox.pod(from);
        load(pod, to, 500, Duration::from_secs(1))?;
        let is_proxy = !pids.is_empty();
        let syscalls = is_proxy.then(|| left_out("syscalls", SyscallCount::start(&pids))).flatten();
        let (before, extra) = (Usage::of_all(&pids)?, ExtraLoad::read(&agent, &service.name)?);
        let report = load(pod, to, options.rate, options.round)?;
        let after = Usage::of_all(&pids)?;
        let syscalls = syscalls.and_then(|count| left_out("syscalls", count.stop()));
        let extra = ExtraLoad::read(&agent, &service.name)?.since(&extra);
        let through_agent = to == service.vip && from == "client";
        if path == SOCKEYE {
            profile = left_out("the profile", profile_round(pod, to, options.rate, pids[0]));
        }
        let ramp = ramp(pod, to, &options.ramp, path)?;
        results.push(PathResult {
            path,
            latency_us: report.latency_us,
            failed: report.failed,
            cost: is_proxy.then(|| Cost::of_round(&before, &after, report.ok, syscalls)),
            extra_load: through_agent.then(|| extra.share()),
            max_rate: ramp.max_rate(SUSTAINED_P99_US),
            max_rate_p99_5ms: ramp.max_rate(TIGHT_P99_US),
            ramp_p99_us: ramp.p99_us(),
        });
    }
    drop((haproxy, nginx, agent));
    Ok(Outcome { paths: results, profile })
}

/// An extra round at `rate` with perf sampling the agent (`pid`), apart from the
/// measured one so that perf's own cost stays out of its numbers.
fn profile_round(pod: &Pod, to: SocketAddr, rate: u32, pid: u32) -> anyhow::Result<Profile> {
    say(&format!("{SOCKEYE}: {rate} calls/s again, the agent sampled by perf for {PROFILE_FOR:?}"));
    let load = start_load(pod, to, rate, PROFILE_FOR + Duration::from_secs(2))?;
    let script = perf::record(pid, PROFILE_FOR);
    finish_load(load)?;
    let profile = Profile::parse(&script?);
    say(&format!("profile: {} samples", profile.samples()));
    Ok(profile)
}

/// `result`'s value, or none after saying on stderr why `what` is left out.
fn left_out<T>(what: &str, result: anyhow::Result<T>) -> Option<T> {
    result.map_err(|err| say(&format!("{what} left out: {err:#}"))).ok()
}

/// The results as markdown: latency (added over the direct path) and rates, then what
/// each proxy spent per call.
pub fn table(results: &[PathResult]) -> String {
    let direct = &results[0].latency_us;
    let mut md = String::from(
        "| path | p50 µs | p99 µs | p999 µs | added p50 | added p99 | added p999 | failed | max rate/s, p99 < 20 ms | max rate/s, p99 < 5 ms | extra tries |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let p = &r.latency_us;
        let added = |a: u64, d: u64| a.saturating_sub(d);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.path,
            p.p50,
            p.p99,
            p.p999,
            added(p.p50, direct.p50),
            added(p.p99, direct.p99),
            added(p.p999, direct.p999),
            r.failed,
            r.max_rate,
            r.max_rate_p99_5ms,
            r.extra_load.map_or("-".into(), |e| format!("{:.1}%", e * 100.0)),
        ));
    }
    md.push_str(
        "\n| proxy | CPU s per 1k calls | user | system | context switches per call (voluntary + nonvoluntary) | syscalls per call | RSS MiB |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (path, c) in results.iter().filter_map(|r| Some((r.path, r.cost.as_ref()?))) {
        let (voluntary, nonvoluntary) =
            (c.voluntary_switches_per_call, c.nonvoluntary_switches_per_call);
        md.push_str(&format!(
            "| {path} | {:.3} | {:.3} | {:.3} | {:.2} ({voluntary:.2} + {nonvoluntary:.2}) | {} | {:.1} |\n",
            c.cpu_seconds_per_1k,
            c.user_seconds_per_1k,
            c.system_seconds_per_1k,
            voluntary + nonvoluntary,
            c.syscalls_per_call.map_or("-".into(), |s| format!("{s:.1}")),
            c.rss_kib as f64 / 1024.0,
        ));
    }
    md
}

/// Where the agent's time went in the profile round, as markdown.
pub fn profile_summary(profile: &Profile, rate: u32) -> String {
    format!(
        "\n### Where sockeye's time goes\n\n\
         `perf record -F 999 --call-graph dwarf,32768` of the agent for {PROFILE_FOR:?} at \
         {rate} calls/s, in an extra round: {} samples, {} of them with a stack cut short \
         (stacks in sockeye-profile.folded). Self: samples with it as the leaf frame; \
         total: samples with it anywhere on the stack.\n\n{}",
        profile.samples(),
        profile.cut_short(),
        profile.summary(15),
    )
}

/// p99 over the ramp, one line per path, as an SVG.
pub fn plot(results: &[PathResult], ramp: &[u32]) -> String {
    const COLORS: [&str; 6] = ["gray", "#d62728", "#1f77b4", "#17becf", "#2ca02c", "#9467bd"];
    let series: Vec<crate::plot::Series> = results
        .iter()
        .zip(COLORS)
        .map(|(r, color)| crate::plot::Series {
            name: r.path,
            color,
            dashed: false,
            values: r.ramp_p99_us.iter().map(|(_, p99)| *p99 as f64 / 1000.0).collect(),
        })
        .collect();
    let steps: Vec<String> = ramp.iter().map(u32::to_string).collect();
    crate::plot::lines(
        "gRPC unary p99 by offered rate (3 backends)",
        &format!("ramp step (calls/s: {})", steps.join(", ")),
        "p99 ms",
        &series,
    )
}

/// A process and its children (nginx's master and workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
}

fn start_haproxy(node: &GrpcNode, backends: &[SocketAddr]) -> anyhow::Result<Proc> {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server b{} {b} proto h2 check inter 1s\n", i + 1))
        .collect();
    let config = format!(
        "global\n  nbthread 2\n  log stderr format raw local0 err\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         frontend grpc\n  bind {NODE_IP4}:{HAPROXY_PORT} proto h2\n  default_backend backends\n\
         backend backends\n  balance roundrobin\n{servers}"
    );
    let path = node.sandbox.dir().join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&path);
    let proc = node.sandbox.spawn_in_node("haproxy", command)?;
    wait_listening(node, HAPROXY_PORT, &proc)?;
    Ok(proc)
}

fn start_nginx(node: &GrpcNode, backends: &[SocketAddr]) -> anyhow::Result<Proc> {
    let dir = node.sandbox.dir();
    let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
    let config = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log stderr error;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
         upstream backends {{\n{servers}    keepalive 32;\n  }}\n\
         server {{\n    listen {NODE_IP4}:{NGINX_PORT} http2;\n    location / {{ grpc_pass grpc://backends; }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new("nginx");
    command.arg("-c").arg(&path).arg("-e").arg("stderr");
    let proc = node.sandbox.spawn_in_node("nginx", command)?;
    wait_listening(node, NGINX_PORT, &proc)?;
    Ok(proc)
}

/// Waits until something accepts on the node's `port`.
fn wait_listening(node: &GrpcNode, port: u16, proc: &Proc) -> anyhow::Result<()> {
    let addr = SocketAddr::from((NODE_IP4, port));
    crate::wait_for(&format!("{} on {addr}", proc.name()), Duration::from_secs(10), || {
        node.sandbox.node().run(|| std::net::TcpStream::connect(addr).is_ok()).ok().filter(|ok| *ok)
    })
    .map_err(|e| anyhow::anyhow!("{e}: {}", proc.log()))?;
    Ok(())
}

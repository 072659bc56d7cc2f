//! The `tcp` suite: one plain TCP service (a byte mirror in one Pod) reached from a Pod
//! five ways: straight to the Pod, kube-proxy's DNAT, sockeye's kernel mode, and
//! sockeye's relay mode with socket acceleration off and on. For each: connect rate and
//! latency (connect and close, one at a time), round trips of 100 bytes, stream
//! throughput, and the agent's CPU per 1,000 connections; the median of a few rounds.

use std::time::Duration;

use serde::Serialize;

use super::{
    Usage,
    accel::{self, Traffic, report},
    say,
};
use crate::{Agent, EchoNode, Pod, ServiceSpec, echo_node::MIRROR_PORT, kernel_lb};

const KERNEL_VIP: &str = "10.96.0.11:7001";
const RELAY_VIP: &str = "10.96.0.12:7001";

pub struct Options {
    pub round: Duration,
    pub connections: usize,
    /// Connects per path in the connect test.
    pub connects: usize,
    /// Measurements of each path, interleaved; the median is kept.
    pub rounds: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct PathResult {
    pub path: &'static str,
    pub connects_per_second: f64,
    pub connect_p50_us: u64,
    pub connect_p99_us: u64,
    /// Over all rounds.
    pub connects_failed: u64,
    /// Agent CPU (user and system) per 1,000 connects, in milliseconds, above what it
    /// spends idle (heartbeat, health checks) in the same time.
    pub agent_cpu_ms_per_1k_connections: f64,
    pub traffic: Traffic,
}

/// Measures every path `options.rounds` times, in turn, and keeps the median of each
/// number.
pub fn run(options: &Options) -> anyhow::Result<Vec<PathResult>> {
    let plain = mirror_node(false)?;
    let accelerated = mirror_node(true)?;
    let idle = [idle_cpu(&plain.1)?, idle_cpu(&accelerated.1)?];
    let b1 = plain.0.sandbox.pod("b1").addr(MIRROR_PORT).to_string();
    let (client, outsider) = (plain.0.client(), plain.0.outsider());
    let paths: [(&'static str, &Pod, &str, &Agent, f64); 5] = [
        ("direct to the Pod", client, &b1, &plain.1, idle[0]),
        ("kube-proxy DNAT", outsider, KERNEL_VIP, &plain.1, idle[0]),
        ("kernel mode", client, KERNEL_VIP, &plain.1, idle[0]),
        ("relay mode", client, RELAY_VIP, &plain.1, idle[0]),
        ("relay mode, acceleration on", accelerated.0.client(), RELAY_VIP, &accelerated.1, idle[1]),
    ];
    let mut rounds: Vec<Vec<PathResult>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        for ((path, pod, to, agent, idle), results) in paths.iter().zip(&mut rounds) {
            say(&format!("tcp, round {round}: {path}"));
            results.push(measure(path, pod, to, agent, *idle, options)?);
        }
    }
    Ok(rounds.iter().map(|results| median(results)).collect())
}

/// The median of each number over the rounds of one path.
fn median(rounds: &[PathResult]) -> PathResult {
    fn mid<T: Copy + PartialOrd>(rounds: &[PathResult], field: impl Fn(&PathResult) -> T) -> T {
        let mut values: Vec<T> = rounds.iter().map(field).collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    PathResult {
        path: rounds[0].path,
        connects_per_second: mid(rounds, |r| r.connects_per_second),
        connect_p50_us: mid(rounds, |r| r.connect_p50_us),
        connect_p99_us: mid(rounds, |r| r.connect_p99_us),
        connects_failed: rounds.iter().map(|r| r.connects_failed).sum(),
        agent_cpu_ms_per_1k_connections: mid(rounds, |r| r.agent_cpu_ms_per_1k_connections),
        traffic: Traffic {
            round_trips_per_second: mid(rounds, |r| r.traffic.round_trips_per_second),
            p50_us: mid(rounds, |r| r.traffic.p50_us),
            p99_us: mid(rounds, |r| r.traffic.p99_us),
            stream_mib_per_second: mid(rounds, |r| r.traffic.stream_mib_per_second),
        },
    }
}

/// A byte mirror in b1 behind two VIPs, one in kernel mode and one in relay mode, and
/// the agent (acceleration on or off).
fn mirror_node(accel: bool) -> anyhow::Result<(EchoNode, Agent, crate::Proc)> {
    let node = EchoNode::new(1)?;
    let (mut relay, mirror) = node.mirror("b1", RELAY_VIP)?;
    // A burst of connects can overflow the mirror's accept queue; the agent's connects
    // that time out then would eject the only endpoint. This measures the path, not
    // the policy.
    relay.policy = "  outlier:\n    enabled: false\n".into();
    let kernel = ServiceSpec { name: "kernel".into(), vip: KERNEL_VIP.parse()?, ..relay.clone() };
    let kernel = kernel_lb::in_mode(kernel, "kernel", "");
    let services = [kernel.clone(), relay];
    node.sandbox.set_kube_proxy(&services)?;
    let config = node.agent_config(&services);
    // At debug the kernel programs would log every connect, and the agent every relay.
    let flags = ["--accel", if accel { "on" } else { "off" }, "--log-level", "info"];
    let agent = node.sandbox.start_agent_with(&config, &flags)?;
    let pin_dir = node.sandbox.pin_dir();
    kernel_lb::wait_table_holds(pin_dir, kernel.vip, &kernel.endpoints, Duration::from_secs(10))?;
    Ok((node, agent, mirror))
}

/// The agent's CPU seconds per second while nothing is connecting.
fn idle_cpu(agent: &Agent) -> anyhow::Result<f64> {
    let pid = agent.proc().pid();
    let (before, started) = (Usage::of(pid)?.cpu_seconds, std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    Ok((Usage::of(pid)?.cpu_seconds - before) / started.elapsed().as_secs_f64())
}

fn measure(
    path: &'static str,
    pod: &Pod,
    to: &str,
    agent: &Agent,
    idle: f64,
    options: &Options,
) -> anyhow::Result<PathResult> {
    let pid = agent.proc().pid();
    let (before, started) = (Usage::of(pid)?.cpu_seconds, std::time::Instant::now());
    let count = options.connects.to_string();
    let connects =
        report(pod, &["tcp-connect", "--to", to, "--count", &count], Duration::from_secs(120))?;
    let busy = Usage::of(pid)?.cpu_seconds - before;
    let cpu = (busy - idle * started.elapsed().as_secs_f64()).max(0.0);
    let traffic = accel::traffic(
        pod,
        to,
        &accel::Options { round: options.round, connections: options.connections },
    )?;
    Ok(PathResult {
        path,
        connects_per_second: connects["per_second"].as_f64().unwrap_or(0.0),
        connect_p50_us: connects["p50_us"].as_u64().unwrap_or(0),
        connect_p99_us: connects["p99_us"].as_u64().unwrap_or(0),
        connects_failed: connects["failed"].as_u64().unwrap_or(0),
        agent_cpu_ms_per_1k_connections: cpu * 1000.0 * 1000.0 / options.connects as f64,
        traffic,
    })
}

pub fn table(results: &[PathResult]) -> String {
    let mut out = String::from(
        "| path | connects/s | connect p50 µs | connect p99 µs | round trips/s (100 B) | p50 µs | p99 µs | stream MiB/s | agent CPU ms per 1k connections |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0} | {:.1} |\n",
            r.path,
            r.connects_per_second,
            r.connect_p50_us,
            r.connect_p99_us,
            r.traffic.round_trips_per_second,
            r.traffic.p50_us,
            r.traffic.p99_us,
            r.traffic.stream_mib_per_second,
            r.agent_cpu_ms_per_1k_connections,
        ));
    }
    out
}

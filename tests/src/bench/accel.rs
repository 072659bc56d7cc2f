//! The `accel` suite: the Pod→agent hop with socket acceleration off and on (small
//! request/response round trips and bulk streams through an opaque TCP service to a
//! byte mirror), and the cost of steering a connect: direct to the Pod, sockeye's
//! connect-time rewrite, and an iptables REDIRECT rule (per-packet NAT).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;

use super::{Usage, say};
use crate::{EchoNode, Pod, ServiceSpec, echo_node::MIRROR_PORT};

const VIP: &str = "10.96.0.11:7001";
/// Not a VIP sockeye knows: connects to it are left to the REDIRECT rule.
const REDIRECTED: &str = "10.96.0.12:7002";
const REDIRECT_PORT: u16 = 15002;

pub struct Options {
    pub round: Duration,
    pub connections: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Hop {
    pub accel: bool,
    pub round_trips_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub stream_mib_per_second: f64,
    /// Agent CPU seconds for the whole run of this path.
    pub agent_cpu_seconds: f64,
    pub redirected_messages: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Connect {
    pub path: &'static str,
    pub p50_us: u64,
    pub p99_us: u64,
    pub failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub hops: Vec<Hop>,
    pub connects: Vec<Connect>,
}

pub fn run(options: &Options) -> anyhow::Result<Results> {
    let mut results = Results::default();
    for accel in [false, true, false, true] {
        say(&format!("Pod→agent hop, acceleration {}", if accel { "on" } else { "off" }));
        let (node, service, _mirror) = mirror_node()?;
        let flag = if accel { "on" } else { "off" };
        let config = node.agent_config(std::slice::from_ref(&service));
        let agent = node.sandbox.start_agent_with(&config, &["--accel", flag])?;
        let before = Usage::of(agent.proc().pid())?;
        let hop = hop(&node, options, accel)?;
        let cpu = Usage::of(agent.proc().pid())?.cpu_seconds - before.cpu_seconds;
        let redirected = agent.counters()?["accel_redirected"];
        results.hops.push(Hop { agent_cpu_seconds: cpu, redirected_messages: redirected, ..hop });
        if !accel && results.connects.is_empty() {
            results.connects = connects(&node)?;
        }
    }
    Ok(results)
}

fn mirror_node() -> anyhow::Result<(EchoNode, ServiceSpec, crate::Proc)> {
    let node = EchoNode::new(1)?;
    let (service, mirror) = node.mirror("b1", VIP)?;
    Ok((node, service, mirror))
}

/// Runs `sk-pod ARGS` in `pod` and reads the JSON line it ends with.
pub(super) fn report(
    pod: &Pod,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut run = pod.spawn(args)?;
    run.wait(timeout)?;
    let log = run.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("sk-pod {} in {}: {log}", args.join(" "), pod.name))?;
    Ok(serde_json::from_str(line)?)
}

fn hop(node: &EchoNode, options: &Options, accel: bool) -> anyhow::Result<Hop> {
    let traffic = traffic(node.client(), VIP, options)?;
    Ok(Hop {
        accel,
        round_trips_per_second: traffic.round_trips_per_second,
        p50_us: traffic.p50_us,
        p99_us: traffic.p99_us,
        stream_mib_per_second: traffic.stream_mib_per_second,
        ..Hop::default()
    })
}

/// Round trips of 100 bytes and 64 MiB streams from `pod` to a byte mirror at `to`,
/// over `options.connections` connections.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    pub round_trips_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub stream_mib_per_second: f64,
}

pub(super) fn traffic(pod: &Pod, to: &str, options: &Options) -> anyhow::Result<Traffic> {
    let (n, ms) = (options.connections.to_string(), options.round.as_millis().to_string());
    let args =
        ["tcp-pingpong", "--to", to, "--connections", &n, "--duration-ms", &ms, "--size", "100"];
    let pingpong = report(pod, &args, options.round * 4)?;
    let bytes = 64u64 << 20;
    let args = [
        "tcp-stream",
        "--to",
        to,
        "--connections",
        &n,
        "--bytes",
        &bytes.to_string(),
        "--chunk",
        "65536",
    ];
    let stream = report(pod, &args, Duration::from_secs(120))?;
    anyhow::ensure!(stream["intact"] == options.connections, "stream not intact: {stream}");
    let seconds = stream["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    Ok(Traffic {
        round_trips_per_second: pingpong["rate"].as_f64().unwrap_or(0.0),
        p50_us: pingpong["p50_us"].as_u64().unwrap_or(0),
        p99_us: pingpong["p99_us"].as_u64().unwrap_or(0),
        stream_mib_per_second: super::ratio(
            ((bytes * options.connections as u64) >> 20) as f64,
            seconds,
        ),
    })
}

/// Connect latency: straight to the Pod, steered by sockeye's connect hook to its
/// listener, and redirected by iptables to a listener on the node.
fn connects(node: &EchoNode) -> anyhow::Result<Vec<Connect>> {
    say("connect paths: direct, sockeye steering, iptables REDIRECT");
    let redirected: SocketAddr = REDIRECTED.parse()?;
    let (ip, port) = (redirected.ip().to_string(), redirected.port().to_string());
    node.sandbox.node().exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &ip,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-ports",
            &REDIRECT_PORT.to_string(),
        ],
        "",
    )?;
    let listener =
        node.sandbox.node().run(|| std::net::TcpListener::bind(("0.0.0.0", REDIRECT_PORT)))??;
    listener.set_nonblocking(true)?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let direct = node.sandbox.pod("b1").addr(MIRROR_PORT).to_string();
        let paths = [
            ("direct to the Pod", direct.as_str()),
            ("sockeye connect steering", VIP),
            ("iptables REDIRECT", REDIRECTED),
        ];
        let measured = paths
            .iter()
            .map(|(path, to)| {
                let r = report(
                    node.client(),
                    &["tcp-connect", "--to", to, "--count", "3000"],
                    Duration::from_secs(60),
                )?;
                Ok(Connect {
                    path,
                    p50_us: r["p50_us"].as_u64().unwrap_or(0),
                    p99_us: r["p99_us"].as_u64().unwrap_or(0),
                    failed: r["failed"].as_u64().unwrap_or(0),
                })
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        measured
    })
}

pub fn table(results: &Results) -> String {
    let mut out = String::from(
        "| Pod→agent hop | round trips/s | p50 µs | p99 µs | stream MiB/s | agent CPU s | messages redirected |\n|---|---|---|---|---|---|---|\n",
    );
    for h in &results.hops {
        out.push_str(&format!(
            "| acceleration {} | {:.0} | {} | {} | {:.0} | {:.2} | {} |\n",
            if h.accel { "on" } else { "off" },
            h.round_trips_per_second,
            h.p50_us,
            h.p99_us,
            h.stream_mib_per_second,
            h.agent_cpu_seconds,
            h.redirected_messages
        ));
    }
    out.push_str("\n| connect path | p50 µs | p99 µs | failed |\n|---|---|---|---|\n");
    for c in &results.connects {
        out.push_str(&format!("| {} | {} | {} | {} |\n", c.path, c.p50_us, c.p99_us, c.failed));
    }
    out
}

//! The gRPC suite: unary calls from an enrolled Pod, straight to a backend Pod and
//! through the agent (the service VIP, steered by the kernel) to the same backend.
//! Open-loop constant rate, latency from each call's scheduled send time.

use std::time::Duration;

use serde::Serialize;

use super::{SUSTAINED_P99_US, Usage, load, ramp, ratio, say};
use crate::{
    GrpcNode,
    grpc::load::{LoadReport, Percentiles},
    grpc_node::GRPC_PORT,
};

pub struct Options {
    /// Calls per second in the latency rounds.
    pub rate: u32,
    pub round: Duration,
    /// Latency rounds per path, interleaved (direct, agent, direct, agent, …).
    pub rounds: usize,
    /// Rates tried, in order, for the maximum sustainable rate.
    pub ramp: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub rate: u32,
    pub calls_per_path: u64,
    /// Per path, the median over rounds of each percentile, in microseconds.
    pub direct_us: Percentiles,
    pub agent_us: Percentiles,
    pub failed_direct: u64,
    pub failed_agent: u64,
    pub agent_cpu_seconds_per_1k: f64,
    pub agent_rss_kib: u64,
    pub agent_peak_rss_kib: u64,
    pub max_rate_direct: u32,
    pub max_rate_agent: u32,
}

pub fn run(options: &Options) -> anyhow::Result<Results> {
    say("building the sandbox: client (enrolled), backend b1, agent with service greeter -> b1");
    let node = GrpcNode::new(1)?;
    let service = node.service(&["b1"], "");
    let agent = node.start_agent(&service)?;
    let direct = node.sandbox.pod("b1").addr(GRPC_PORT);
    let vip = service.vip;

    say("warming up both paths");
    let client = node.client();
    load(client, direct, 500, Duration::from_secs(1))?;
    load(client, vip, 500, Duration::from_secs(1))?;

    let (mut direct_rounds, mut agent_rounds) = (Vec::new(), Vec::new());
    let mut agent_cpu = 0.0;
    for round in 1..=options.rounds {
        say(&format!(
            "round {round}/{}: {} calls/s for {:?}, direct then via the agent",
            options.rounds, options.rate, options.round
        ));
        direct_rounds.push(load(client, direct, options.rate, options.round)?);
        let before = Usage::of(agent.proc().pid())?;
        agent_rounds.push(load(client, vip, options.rate, options.round)?);
        agent_cpu += Usage::of(agent.proc().pid())?.cpu_seconds - before.cpu_seconds;
    }
    let usage = Usage::of(agent.proc().pid())?;
    let agent_ok: u64 = agent_rounds.iter().map(|r| r.ok).sum();

    let max_rate_direct =
        ramp(client, direct, &options.ramp, "ramp direct")?.max_rate(SUSTAINED_P99_US);
    let max_rate_agent = ramp(client, vip, &options.ramp, "ramp agent")?.max_rate(SUSTAINED_P99_US);
    Ok(Results {
        rate: options.rate,
        calls_per_path: agent_rounds.iter().map(|r| r.sent).sum(),
        direct_us: median(&direct_rounds),
        agent_us: median(&agent_rounds),
        failed_direct: direct_rounds.iter().map(|r| r.failed).sum(),
        failed_agent: agent_rounds.iter().map(|r| r.failed).sum(),
        agent_cpu_seconds_per_1k: ratio(agent_cpu, agent_ok as f64 / 1000.0),
        agent_rss_kib: usage.rss_kib,
        agent_peak_rss_kib: usage.peak_rss_kib,
        max_rate_direct,
        max_rate_agent,
    })
}

pub fn print(r: &Results) {
    let row = |name: &str, p: &Percentiles| {
        println!("{name:<22} {:>9} {:>9} {:>9}", p.p50, p.p99, p.p999);
    };
    println!("\n== gRPC unary at {} calls/s, {} calls per path ==\n", r.rate, r.calls_per_path);
    println!("{:<22} {:>9} {:>9} {:>9}", "latency (µs)", "p50", "p99", "p999");
    row("direct to the Pod", &r.direct_us);
    row("through the agent", &r.agent_us);
    let added = |a: u64, d: u64| a.saturating_sub(d);
    println!(
        "{:<22} {:>9} {:>9} {:>9}",
        "added by the agent",
        added(r.agent_us.p50, r.direct_us.p50),
        added(r.agent_us.p99, r.direct_us.p99),
        added(r.agent_us.p999, r.direct_us.p999)
    );
    let x = |a: u64, d: u64| format!("{:.2}x", ratio(a as f64, d as f64));
    println!(
        "{:<22} {:>9} {:>9} {:>9}",
        "agent / direct",
        x(r.agent_us.p50, r.direct_us.p50),
        x(r.agent_us.p99, r.direct_us.p99),
        x(r.agent_us.p999, r.direct_us.p999)
    );
    println!("\nfailed calls: direct {}, agent {}", r.failed_direct, r.failed_agent);
    println!("agent CPU: {:.4} s per 1k calls", r.agent_cpu_seconds_per_1k);
    println!("agent RSS: {} KiB now, {} KiB peak", r.agent_rss_kib, r.agent_peak_rss_kib);
    println!(
        "max sustained rate (no failure, p99 < {} ms): direct {} calls/s, agent {} calls/s ({:.2}x)",
        SUSTAINED_P99_US / 1000,
        r.max_rate_direct,
        r.max_rate_agent,
        ratio(f64::from(r.max_rate_agent), f64::from(r.max_rate_direct))
    );
}

fn median(rounds: &[LoadReport]) -> Percentiles {
    let pick = |f: fn(&Percentiles) -> u64| {
        let mut values: Vec<u64> = rounds.iter().map(|r| f(&r.latency_us)).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    Percentiles {
        p50: pick(|p| p.p50),
        p90: pick(|p| p.p90),
        p99: pick(|p| p.p99),
        p999: pick(|p| p.p999),
        max: pick(|p| p.max),
    }
}

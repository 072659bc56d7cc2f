//! Many idle downstream connections and steady gRPC load at once: nothing fails, and
//! the agent's memory stays bounded. `tests/tests/limits.rs` runs it small; `bench
//! load` runs it at the scale (10,000 idle connections, 5,000 calls/s, 60 s).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;

use super::{Usage, say};
use crate::{GrpcNode, ServiceSpec, grpc::load::LoadReport, grpc_node::finish_load};

/// The opaque-TCP service the idle connections go to (the gRPC backends' port).
const IDLE_VIP: &str = "10.96.0.20:9000";

#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub idle: usize,
    pub rate: u32,
    pub duration: Duration,
}

#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub idle_opened: usize,
    /// Idle connections the agent still held at the end.
    pub idle_still_open: usize,
    pub load: LoadReport,
    /// The agent's resident memory before the idle connections, in KiB.
    pub rss_before_kib: u64,
    /// Its peak resident memory, in KiB.
    pub peak_rss_kib: u64,
}

pub fn run(scale: Scale) -> anyhow::Result<Outcome> {
    let node = GrpcNode::new(3)?;
    let greeter = node.service(&["b1", "b2", "b3"], "");
    let idle_vip: SocketAddr = IDLE_VIP.parse()?;
    let idle = ServiceSpec::tcp("idle", idle_vip, greeter.endpoints.clone());
    let services = [greeter.clone(), idle];
    node.sandbox.set_kube_proxy(&services)?;
    let agent =
        node.sandbox.start_agent(&node.sandbox.agent_config(&[node.client()], &services))?;
    node.wait_in_rotation(&["b1", "b2", "b3"])?;
    let rss_before_kib = Usage::of(agent.proc().pid())?.rss_kib;

    say(&format!("opening {} idle connections through the agent", scale.idle));
    let hold = scale.duration + Duration::from_secs(2);
    let (to, count, hold_ms) =
        (idle_vip.to_string(), scale.idle.to_string(), hold.as_millis().to_string());
    let mut idlers = node.client().spawn(&[
        "tcp-idle",
        "--to",
        &to,
        "--count",
        &count,
        "--hold-ms",
        &hold_ms,
    ])?;
    let opened = format!("opened {}", scale.idle);
    idlers.wait_for_log(&opened, Duration::from_secs(120)).with_context(|| {
        let log = agent.log();
        let notable = log.lines().filter(|l| l.contains("WARN") || l.contains("refused"));
        format!("tcp-idle: {}\nagent: {}", idlers.log(), last(notable, 5))
    })?;

    say(&format!("{} calls/s for {:?} beside them", scale.rate, scale.duration));
    let load = node.client().start_grpc_load_with(
        greeter.vip,
        scale.rate,
        scale.duration,
        &["--max-in-flight", "2000"],
    )?;
    let load = finish_load(load)?;
    let peak_rss_kib = Usage::of(agent.proc().pid())?.peak_rss_kib;
    idlers.wait(hold + Duration::from_secs(30))?;
    let log = idlers.log();
    let line = log.lines().rev().find(|l| l.starts_with('{')).context("no tcp-idle report")?;
    let idle: serde_json::Value = serde_json::from_str(line)?;
    let count = |field: &str| idle[field].as_u64().unwrap_or(0) as usize;
    Ok(Outcome {
        idle_opened: count("opened"),
        idle_still_open: count("still_open"),
        load,
        rss_before_kib,
        peak_rss_kib,
    })
}

/// The outcome as a markdown table.
pub fn table(o: &Outcome) -> String {
    let l = &o.load;
    format!(
        "| idle connections (kept) | calls (failed) | p50 / p99 / max µs | agent RSS before → peak |\n\
         |---|---|---|---|\n\
         | {} ({}) | {} ({}) | {} / {} / {} | {:.1} → {:.1} MiB |\n",
        o.idle_opened,
        o.idle_still_open,
        l.sent,
        l.failed,
        l.latency_us.p50,
        l.latency_us.p99,
        l.latency_us.max,
        o.rss_before_kib as f64 / 1024.0,
        o.peak_rss_kib as f64 / 1024.0,
    )
}

/// The last `n` of `lines`, joined.
fn last<'a>(lines: impl DoubleEndedIterator<Item = &'a str>, n: usize) -> String {
    let mut kept: Vec<&str> = lines.rev().take(n).collect();
    kept.reverse();
    kept.join("\n")
}

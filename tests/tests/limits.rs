//! Load and limits: many idle connections beside steady gRPC load, and the connection
//! caps (global and per endpoint) with their metric.

use std::time::Duration;

use sandbox::{
    EchoNode,
    bench::load::{Scale, run},
    serial,
};

#[test]
fn idle_connections_beside_steady_load_fail_nothing_and_memory_stays_bounded() {
    let _serial = serial();
    let scale = Scale { idle: 2_000, rate: 1_000, duration: Duration::from_secs(5) };
    let outcome = run(scale).unwrap();
    println!(
        "{} idle connections and {} calls: {} failed, {} idle still open; agent RSS {} KiB \
         before, peak {} KiB",
        outcome.idle_opened,
        outcome.load.sent,
        outcome.load.failed,
        outcome.idle_still_open,
        outcome.rss_before_kib,
        outcome.peak_rss_kib
    );
    assert_eq!(outcome.load.failed, 0, "{:?}", outcome.load);
    assert_eq!(outcome.idle_still_open, scale.idle, "{outcome:?}");
    // An idle connection holds two 512-byte buffers and two sockets, not 16 KiB.
    let per_idle_kib = outcome.peak_rss_kib.saturating_sub(outcome.rss_before_kib) / 2_000;
    assert!(per_idle_kib < 8, "{per_idle_kib} KiB per idle connection: {outcome:?}");
}

/// An agent with `limits` (YAML lines) over one echo backend, and two connections
/// held through it.
fn two_held_with(limits: &str) -> (EchoNode, sandbox::Agent, sandbox::Proc) {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", VIP, &["b1"]);
    let config = format!("{}limits:\n{limits}", node.agent_config(std::slice::from_ref(&echo)));
    node.sandbox.set_kube_proxy(std::slice::from_ref(&echo)).unwrap();
    let agent = node.sandbox.start_agent(&config).unwrap();
    let held = node.client().spawn(&["tcp-hold", "--to", VIP, "--count", "2"]).unwrap();
    held.wait_for_log("held 2", Duration::from_secs(5)).unwrap();
    (node, agent, held)
}

const VIP: &str = "10.96.0.10:7000";

fn limit_hits(agent: &sandbox::Agent, limit: &str) -> f64 {
    let series = format!("sockeye_connection_limit_hits_total{{limit=\"{limit}\"}}");
    agent.metric(&series).unwrap().unwrap_or(0.0)
}

#[test]
fn past_the_global_cap_a_connection_is_refused_and_counted() {
    let (node, agent, _held) = two_held_with("  max_connections: 2\n");
    let third = node.client().probe(VIP.parse().unwrap(), 1, 1).unwrap();
    assert_eq!(third.failed, 1, "{third:?}");
    assert_eq!(limit_hits(&agent, "global"), 1.0);
}

#[test]
fn past_the_per_endpoint_cap_a_connection_finds_no_endpoint_until_one_closes() {
    let (node, agent, held) = two_held_with("  max_connections_per_endpoint: 2\n");
    let third = node.client().probe(VIP.parse().unwrap(), 1, 1).unwrap();
    assert_eq!(third.failed, 1, "{third:?}");
    assert_eq!(limit_hits(&agent, "endpoint"), 1.0);
    assert_eq!(limit_hits(&agent, "global"), 0.0);

    drop(held);
    sandbox::wait_for("a slot on b1 again", Duration::from_secs(5), || {
        (node.client().probe(VIP.parse().unwrap(), 1, 1).ok()?.ok == 1).then_some(())
    })
    .unwrap();
}

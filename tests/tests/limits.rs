//! Load and limits: many idle connections beside steady gRPC load, and the connection
//! caps (global and per endpoint) with their metric.

use std::time::Duration;

use sandbox::{
    EchoNode,
    bench::load::{Scale, run},
    node::NODE_IP4,
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

/// An agent with `limits` (YAML lines) over one echo backend, a second enrolled Pod
/// (`client2`), and two connections held through it from the client.
fn two_held_with(limits: &str) -> (EchoNode, sandbox::Agent, sandbox::Proc) {
    held_with(limits, 2)
}

/// [`two_held_with`], holding `count` connections.
fn held_with(limits: &str, count: usize) -> (EchoNode, sandbox::Agent, sandbox::Proc) {
    let mut node = EchoNode::new(1).unwrap();
    node.sandbox.add_pod("client2").unwrap();
    let echo = node.service("echo", VIP, &["b1"]);
    let enrolled = [node.client(), node.sandbox.pod("client2")];
    let config = format!(
        "{}limits:\n{limits}",
        node.sandbox.agent_config(&enrolled, std::slice::from_ref(&echo))
    );
    node.sandbox.set_kube_proxy(std::slice::from_ref(&echo)).unwrap();
    let agent = node.sandbox.start_agent(&config).unwrap();
    let count = count.to_string();
    let held = node.client().spawn(&["tcp-hold", "--to", VIP, "--count", &count]).unwrap();
    held.wait_for_log(&format!("held {count}"), Duration::from_secs(5)).unwrap();
    (node, agent, held)
}

const VIP: &str = "10.96.0.10:7000";

fn limit_hits(agent: &sandbox::Agent, limit: &str) -> f64 {
    let series = format!("sockeye_connection_limit_hits_total{{limit=\"{limit}\"}}");
    agent.metric(&series).unwrap().unwrap_or(0.0)
}

/// The peer the backend saw for one connect from `pod`: the node (through the agent)
/// or the Pod itself (DNAT, failed open).
fn one_connect(pod: &sandbox::Pod) -> String {
    let report = pod.probe(VIP.parse().unwrap(), 1, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    report.only_peer().unwrap_or_default().to_string()
}

#[test]
fn past_the_global_cap_new_connects_fail_open_until_there_is_room_again() {
    let (node, agent, held) = two_held_with("  max_connections: 2\n  max_connections_per_pod: 2\n");
    let client_ip = node.client().ip4.to_string();
    assert_eq!(one_connect(node.client()), client_ip, "failed open to DNAT, not refused");
    assert_eq!(limit_hits(&agent, "global"), 1.0);
    assert!(agent.counters().unwrap()["skip_agent_full"] >= 1);

    drop(held);
    sandbox::wait_for("the agent to take connections again", Duration::from_secs(5), || {
        (one_connect(node.client()) == NODE_IP4.to_string()).then_some(())
    })
    .unwrap();
}

#[test]
fn a_pod_at_its_cap_fails_open_while_another_pod_is_served_alongside() {
    // A cap of 5: room for the other Pod's sequential connects, which may overlap
    // by one while the agent sees the previous one close.
    let (node, agent, _held) = held_with("  max_connections_per_pod: 5\n", 5);
    assert_eq!(one_connect(node.client()), node.client().ip4.to_string());
    assert_eq!(limit_hits(&agent, "pod"), 1.0);
    assert!(agent.counters().unwrap()["skip_pod_full"] >= 1);
    let other = node.sandbox.pod("client2").probe(VIP.parse().unwrap(), 20, 1).unwrap();
    assert_eq!(other.failed, 0, "{other:?}");
    assert_eq!(other.only_peer(), Some(NODE_IP4.to_string().as_str()), "{other:?}");
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

#[test]
fn a_flood_of_idle_admin_connections_takes_no_descriptors_from_the_pods_traffic() {
    let _serial = serial();
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", VIP, &["b1"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    node.client().probe(echo.vip, 1, 1).unwrap(); // the service starts with its first use
    let before = agent.proc().open_files().unwrap();

    let flood = node
        .sandbox
        .spawn_on_node(&[
            "tcp-idle",
            "--to",
            sandbox::ADMIN,
            "--count",
            "3000",
            "--hold-ms",
            "3000",
        ])
        .unwrap();
    flood.wait_for_log("opened 3000", Duration::from_secs(30)).unwrap();
    // Connections past the cap close as the agent gets to them.
    let bound = before + 2 * sandbox::ADMIN_CONNECTIONS;
    let during =
        sandbox::wait_for("the admin connections to settle", Duration::from_secs(10), || {
            let open = agent.proc().open_files().ok()?;
            (open < bound).then_some(open)
        })
        .unwrap();
    let served = node.client().probe(echo.vip, 50, 4).unwrap();
    assert_eq!(served.failed, 0, "{served:?}");
    assert_eq!(served.only_peer(), Some(NODE_IP4.to_string().as_str()), "{served:?}");
    assert_eq!(agent.admin_get("/healthz").unwrap().0, 200, "a probe gets through the flood");
    println!(
        "agent descriptors: {before} before, {during} during a flood of 3000 admin connections"
    );
}

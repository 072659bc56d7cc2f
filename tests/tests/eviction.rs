//! Kernel eviction: when an endpoint is gone, an enrolled Pod's connections straight to
//! its address (not through the agent) are destroyed at once, and others are not.

use std::time::Duration;

use sandbox::{EchoNode, echo_node::ECHO_PORT};

#[test]
fn direct_connections_to_a_gone_endpoint_are_destroyed() {
    let node = EchoNode::new(2).unwrap();
    let mut echo = node.service("echo", "10.96.0.10:7000", &["b1", "b2"]);
    echo.policy = "  timeout:\n    drain: 200ms\n".into();
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();

    let b1 = node.sandbox.pod("b1").addr(ECHO_PORT).to_string();
    let b2 = node.sandbox.pod("b2").addr(ECHO_PORT).to_string();
    let mut to_b1 = node.client().spawn(&["tcp-hold", "--to", &b1, "--count", "5"]).unwrap();
    let mut to_b2 = node.client().spawn(&["tcp-hold", "--to", &b2, "--count", "3"]).unwrap();
    to_b1.wait_for_log("held 5", Duration::from_secs(5)).unwrap();
    to_b2.wait_for_log("held 3", Duration::from_secs(5)).unwrap();

    // b1 leaves the service: Draining, then Gone at the drain deadline.
    let mut after = node.service("echo", "10.96.0.10:7000", &["b2"]);
    after.policy = echo.policy.clone();
    agent.write_config(&node.agent_config(&[after])).unwrap();

    to_b1.wait(Duration::from_secs(15)).unwrap();
    let ended = to_b1.wait_for_log("ended aborted=", Duration::from_secs(1)).unwrap();
    assert_eq!(ended, "ended aborted=5 eof=0", "{}", to_b1.log());
    assert!(to_b1.log().contains("Software caused connection abort"), "{}", to_b1.log());
    let line =
        agent.proc().wait_for_log("evicted direct connections", Duration::from_secs(1)).unwrap();
    println!("{line}");
    assert!(line.contains(&format!("endpoint={b1}")) && line.contains("sockets=5"), "{line}");

    assert!(to_b2.wait(Duration::from_millis(300)).is_err(), "connections to b2 stay open");
    let (_, metrics) = agent.admin_get("/metrics").unwrap();
    assert!(metrics.contains("sockeye_evictions_total{service=\"echo\"} 5"), "{metrics}");
}

//! cgroup/connect4: which IPv4 connects are steered into the agent, and fail open.
//! Needs root: each test builds a sandbox node.

use std::time::Duration;

use sandbox::{EchoNode, kernel, node::NODE_IP4, wait_for};

const VIP: &str = "10.96.0.10:7000";
const OTHER_VIP: &str = "10.96.0.11:7000";

#[test]
fn enrolled_connects_to_a_vip_reach_the_right_service_through_the_agent() {
    let node = EchoNode::new(3).unwrap();
    let echo = node.service("echo", VIP, &["b1", "b2"]);
    let other = node.service("other", OTHER_VIP, &["b3"]);
    let agent = node.start_agent(&[echo.clone(), other.clone()]).unwrap();

    let report = node.client().probe(echo.vip, 20, 4).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ["b1", "b2"], "round robin over echo's endpoints");
    // The agent connects to backends from the node: the backend sees the node's address.
    assert_eq!(report.only_peer(), Some(NODE_IP4.to_string().as_str()), "{report:?}");

    // Same port, another VIP: the agent must have read each connection's own VIP.
    let report = node.client().probe(other.vip, 5, 1).unwrap();
    assert_eq!(report.backend_names(), ["b3"], "{report:?}");

    let counters = agent.counters().unwrap();
    assert_eq!(counters["steered"], 25, "{counters:?}");
    assert_eq!(counters["orig_dst_filed"], 25, "{counters:?}");
}

#[test]
fn a_namespace_that_is_not_enrolled_takes_the_dnat_path() {
    let node = EchoNode::new(2).unwrap();
    let echo = node.service("echo", VIP, &["b1", "b2"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();

    // The outsider runs in the same cgroup: only its namespace differs.
    let report = node.outsider().probe(echo.vip, 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    // DNAT keeps the client's address; the agent's path would show the node's.
    assert_eq!(report.only_peer(), Some(node.outsider().ip4.to_string().as_str()));
    let counters = agent.counters().unwrap();
    assert_eq!(counters["steered"], 0, "{counters:?}");
    assert!(counters["skip_not_enrolled"] >= 10, "{counters:?}");
}

#[test]
fn an_enrolled_connect_to_an_address_that_is_not_a_vip_is_left_alone() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", VIP, &["b1"]);
    let agent = node.start_agent(&[echo]).unwrap();

    let direct = node.sandbox.pod("b1").addr(sandbox::echo_node::ECHO_PORT);
    let report = node.client().probe(direct, 5, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.only_peer(), Some(node.client().ip4.to_string().as_str()));
    let counters = agent.counters().unwrap();
    assert_eq!(counters["steered"], 0, "{counters:?}");
    assert!(counters["skip_not_vip"] >= 5, "{counters:?}");
}

#[test]
fn after_the_agent_is_killed_the_very_next_connect_fails_open_to_dnat() {
    let node = EchoNode::new(2).unwrap();
    let echo = node.service("echo", VIP, &["b1", "b2"]);
    let mut agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    let steered = node.client().probe(echo.vip, 3, 1).unwrap();
    assert_eq!(steered.only_peer(), Some(NODE_IP4.to_string().as_str()), "{steered:?}");

    agent.proc().signal(libc::SIGKILL).unwrap();
    agent.proc_mut().wait(Duration::from_secs(5)).unwrap();
    // The programs stay attached through their pinned links and the heartbeat is still
    // fresh, but the listener closed with the process: no connect goes to the dead port.
    assert!(node.sandbox.pin_dir().join("link_sk_connect4").exists());
    let client_ip = node.client().ip4.to_string();
    let first = node.client().probe(echo.vip, 20, 1).unwrap();
    assert_eq!(first.failed, 0, "{first:?}");
    assert_eq!(first.only_peer(), Some(client_ip.as_str()), "{first:?}");
    let counters = sandbox::kernel::counters(node.sandbox.pin_dir()).unwrap();
    assert!(counters["skip_agent_dead"] >= 20, "{counters:?}");
}

#[test]
fn a_hung_agent_is_left_alone_once_its_heartbeat_is_stale_and_steered_to_when_it_resumes() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", VIP, &["b1"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    let pin_dir = node.sandbox.pin_dir();
    let (node_ip, client_ip) = (NODE_IP4.to_string(), node.client().ip4.to_string());

    // Frozen, its listener stays open: only the heartbeat tells the kernel it hangs.
    agent.proc().signal(libc::SIGSTOP).unwrap();
    let max_age = Duration::from_nanos(proxy_common::agent::HEARTBEAT_MAX_AGE_NS);
    wait_for("the heartbeat to go stale", Duration::from_secs(5), || {
        (kernel::heartbeat_age(pin_dir).unwrap() > max_age).then_some(())
    })
    .unwrap();
    let frozen = node.client().probe(echo.vip, 10, 1).unwrap();
    assert_eq!(frozen.failed, 0, "{frozen:?}");
    assert_eq!(frozen.only_peer(), Some(client_ip.as_str()), "DNAT while frozen: {frozen:?}");
    let counters = kernel::counters(pin_dir).unwrap();
    assert_eq!(counters["skip_agent_stale"], 10, "{counters:?}");
    assert_eq!(counters["skip_agent_dead"], 0, "{counters:?}");

    agent.proc().signal(libc::SIGCONT).unwrap();
    wait_for("the heartbeat to be fresh", Duration::from_secs(5), || {
        (kernel::heartbeat_age(pin_dir).unwrap() < max_age).then_some(())
    })
    .unwrap();
    let resumed = node.client().probe(echo.vip, 10, 1).unwrap();
    assert_eq!(resumed.failed, 0, "{resumed:?}");
    assert_eq!(resumed.only_peer(), Some(node_ip.as_str()), "agent once resumed: {resumed:?}");
}

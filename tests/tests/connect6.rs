//! cgroup/connect6: IPv6 VIPs are steered to the agent's IPv6 listener, and dual-stack
//! sockets connecting to an IPv4-mapped VIP are steered to the IPv4 listener.

use sandbox::{
    EchoNode,
    node::{NODE_IP4, NODE_IP6},
};

#[test]
fn enrolled_connects_to_an_ipv6_vip_reach_a_backend_through_the_agent() {
    let node = EchoNode::new(2).unwrap();
    let echo6 = node.service("echo6", "[fd96::10]:7000", &["b1", "b2"]);
    let agent = node.start_agent(std::slice::from_ref(&echo6)).unwrap();

    let report = node.client().probe(echo6.vip, 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ["b1", "b2"]);
    assert_eq!(report.only_peer(), Some(NODE_IP6.to_string().as_str()), "{report:?}");
    assert_eq!(agent.counters().unwrap()["steered"], 10);

    // Not enrolled: DNAT, and the backend sees the client's own IPv6 address.
    let report = node.outsider().probe(echo6.vip, 4, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.only_peer(), Some(node.outsider().ip6.to_string().as_str()));
}

#[test]
fn a_dual_stack_socket_to_an_ipv4_mapped_vip_is_steered_to_the_ipv4_listener() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let agent = node.start_agent(&[echo]).unwrap();

    let mapped = "[::ffff:10.96.0.10]:7000".parse().unwrap();
    let report = node.client().probe(mapped, 5, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.only_peer(), Some(NODE_IP4.to_string().as_str()), "{report:?}");
    let counters = agent.counters().unwrap();
    assert_eq!((counters["steered"], counters["orig_dst_filed"]), (5, 5), "{counters:?}");
}

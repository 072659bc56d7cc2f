//! cgroup/getpeername4 and getpeername6: an app whose connect to a VIP the kernel
//! rewrote (straight to an endpoint in kernel mode, to the agent in relay mode) sees
//! the VIP as its peer, as if nothing had been rewritten.
//! Needs root: each test builds a sandbox node.

use sandbox::{EchoNode, echo_node::ECHO_PORT, kernel_lb::in_mode, node::NODE_IP4};

/// The peers getpeername() gave the client, with how many connections.
fn remote_addrs(report: &sandbox::probe::Report) -> Vec<(&str, usize)> {
    report.remote_addrs.iter().map(|(addr, n)| (addr.as_str(), *n)).collect()
}

#[test]
fn an_app_sees_the_vip_it_dialled_in_kernel_and_relay_mode() {
    let node = EchoNode::new(2).unwrap();
    let direct = in_mode(node.service("direct", "10.96.0.10:7000", &["b1", "b2"]), "kernel", "");
    let relayed = node.service("relayed", "10.96.0.11:7000", &["b1", "b2"]);
    let agent = node.start_agent(&[direct.clone(), relayed.clone()]).unwrap();
    sandbox::kernel_lb::wait_table(
        &node,
        &direct,
        &["b1", "b2"],
        std::time::Duration::from_secs(10),
    )
    .unwrap();

    let report = node.client().probe(direct.vip, 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(remote_addrs(&report), [("10.96.0.10:7000", 10)]);
    let report = node.client().probe(relayed.vip, 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.only_peer(), Some(NODE_IP4.to_string().as_str()), "through the agent");
    assert_eq!(remote_addrs(&report), [("10.96.0.11:7000", 10)]);
    let counters = agent.counters().unwrap();
    assert_eq!(counters["peer_restored"], 20, "{counters:?}");

    // A connect straight to a Pod keeps its own peer.
    let b1 = node.sandbox.pod("b1").addr(ECHO_PORT);
    let report = node.client().probe(b1, 5, 1).unwrap();
    assert_eq!(remote_addrs(&report), [(b1.to_string().as_str(), 5)]);
    assert_eq!(agent.counters().unwrap()["peer_restored"], 20);
}

#[test]
fn ipv6_and_ipv4_mapped_sockets_see_the_vip_they_dialled() {
    let node = EchoNode::new(2).unwrap();
    let v4 = in_mode(node.service("v4", "10.96.0.10:7000", &["b1", "b2"]), "kernel", "");
    let v6 = in_mode(node.service("v6", "[fd96::10]:7000", &["b1", "b2"]), "kernel", "");
    let relayed6 = node.service("relayed6", "[fd96::11]:7000", &["b1"]);
    let agent = node.start_agent(&[v4.clone(), v6.clone(), relayed6.clone()]).unwrap();
    for spec in [&v4, &v6] {
        sandbox::kernel_lb::wait_table(
            &node,
            spec,
            &["b1", "b2"],
            std::time::Duration::from_secs(10),
        )
        .unwrap();
    }

    let report = node.client().probe(v6.vip, 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(remote_addrs(&report), [("[fd96::10]:7000", 10)]);
    assert_eq!(report.only_peer(), Some(node.client().ip6.to_string().as_str()), "straight");
    let report = node.client().probe(relayed6.vip, 5, 1).unwrap();
    assert_eq!(remote_addrs(&report), [("[fd96::11]:7000", 5)]);
    // A dual-stack socket dialling the IPv4 VIP mapped goes to an IPv4 endpoint and
    // sees the mapped VIP.
    let report = node.client().probe("[::ffff:10.96.0.10]:7000".parse().unwrap(), 10, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(remote_addrs(&report), [("[::ffff:10.96.0.10]:7000", 10)]);
    let counters = agent.counters().unwrap();
    assert_eq!((counters["lb_picked"], counters["peer_restored"]), (20, 25), "{counters:?}");
}

//! sockops: each steered connection's original destination is filed under its 4-tuple
//! when it is established, and the agent takes it after `accept`.

use sandbox::{EchoNode, kernel};

#[test]
fn every_steered_connection_is_filed_once_and_taken_by_the_agent() {
    let node = EchoNode::new(2).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1", "b2"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();

    let report = node.client().probe(echo.vip, 50, 10).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    // Connections that were not steered are never filed.
    node.outsider().probe(echo.vip, 5, 1).unwrap();
    node.client().probe(node.sandbox.pod("b1").addr(7000), 5, 1).unwrap();

    let counters = agent.counters().unwrap();
    assert_eq!(counters["steered"], 50, "{counters:?}");
    assert_eq!(counters["orig_dst_filed"], 50, "{counters:?}");
    assert_eq!(counters["orig_dst_file_failed"], 0, "{counters:?}");
    assert_eq!(kernel::pending_orig_dst(node.sandbox.pin_dir()).unwrap(), 0, "all taken");
}

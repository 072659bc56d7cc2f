//! Opaque TCP forwarding moves on to the next endpoint when a connect is refused.

use sandbox::EchoNode;

#[test]
fn with_one_of_three_endpoints_refusing_all_connections_succeed() {
    let mut node = EchoNode::new(3).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1", "b2", "b3"]);
    let _agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    node.stop_backend("b2");

    let report = node.client().probe(echo.vip, 100, 10).unwrap();
    assert_eq!((report.ok, report.failed), (100, 0), "{report:?}");
    assert_eq!(report.backend_names(), ["b1", "b3"], "{report:?}");
}

//! The agent process: kernel logs reach its log, and SIGTERM leaves nothing behind.

use std::time::Duration;

use sandbox::{EchoNode, node::NODE_IP4};

#[test]
fn kernel_program_logs_reach_the_agent_log() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    node.client().probe(echo.vip, 1, 1).unwrap();
    // connect.rs logs each steered connect at debug through aya-log.
    let line = agent.proc().wait_for_log("steer cookie=", Duration::from_secs(5)).unwrap();
    assert!(line.contains("port=7000"), "{line}");
}

#[test]
fn sigterm_detaches_unpins_and_exits_cleanly() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let mut agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    let report = node.client().probe(echo.vip, 2, 1).unwrap();
    assert_eq!(report.only_peer(), Some(NODE_IP4.to_string().as_str()));

    agent.proc().signal(libc::SIGTERM).unwrap();
    assert_eq!(agent.proc_mut().wait(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(!node.sandbox.pin_dir().exists(), "pins left: {}", agent.log());
    // Detached, not merely stale: the very next connect takes the DNAT path.
    let report = node.client().probe(echo.vip, 1, 1).unwrap();
    assert_eq!(report.only_peer(), Some(node.client().ip4.to_string().as_str()), "{report:?}");
}

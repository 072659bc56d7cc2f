//! Hot reload of the static config: endpoints and services come and go without a
//! restart; an invalid file is rejected and the last good config keeps serving.

use std::time::Duration;

use sandbox::{EchoNode, wait_for};

const RELOAD: Duration = Duration::from_secs(10);

#[test]
fn reload_adds_and_removes_endpoints_and_rejects_an_invalid_file() {
    let node = EchoNode::new(3).unwrap();
    let before = node.service("echo", "10.96.0.10:7000", &["b1", "b2"]);
    let agent = node.start_agent(std::slice::from_ref(&before)).unwrap();
    let report = node.client().probe(before.vip, 12, 3).unwrap();
    assert_eq!(report.backend_names(), ["b1", "b2"], "{report:?}");

    // b1 leaves, b3 joins; and a second service appears.
    let after = node.service("echo", "10.96.0.10:7000", &["b2", "b3"]);
    let added = node.service("added", "10.96.0.20:7000", &["b1"]);
    agent.write_config(&node.agent_config(&[after.clone(), added.clone()])).unwrap();
    let report = wait_for("b3 in and b1 out of rotation", RELOAD, || {
        let report = node.client().probe(after.vip, 12, 3).ok()?;
        (report.backend_names() == ["b2", "b3"] && report.failed == 0).then_some(report)
    })
    .unwrap();
    println!("after reload: {report:?}");
    let steered = agent.counters().unwrap()["steered"];
    let report = node.client().probe(added.vip, 3, 1).unwrap();
    assert_eq!(report.backend_names(), ["b1"], "the added service is steered: {report:?}");
    assert_eq!(agent.counters().unwrap()["steered"], steered + 3);

    // A broken file is rejected with the problem named, and traffic goes on.
    agent.write_config("services:\n- name: echo\n  vip: 10.96.0.10:0\n").unwrap();
    let line = agent.proc().wait_for_log("config reload rejected", RELOAD).unwrap();
    assert!(line.contains("services[0].vip"), "{line}");
    let report = node.client().probe(after.vip, 12, 3).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ["b2", "b3"], "{report:?}");
    let (status, _) = agent.admin_get("/readyz").unwrap();
    assert_eq!(status, 200);
}

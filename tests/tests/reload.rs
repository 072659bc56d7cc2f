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

/// `n` services of one endpoint each, at VIPs 10.96.1.1.. on port 7000.
fn services(node: &EchoNode, n: usize) -> Vec<sandbox::ServiceSpec> {
    (0..n)
        .map(|i| node.service(&format!("s{i}"), &format!("10.96.1.{}:7000", i + 1), &["b1"]))
        .collect()
}

fn debug_services(agent: &sandbox::Agent) -> usize {
    let (_, body) = agent.admin_get("/debug/state").unwrap();
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    state["services"].as_array().unwrap().len()
}

#[test]
fn a_reload_that_does_not_fit_the_kernel_changes_nothing_anywhere() {
    let node = EchoNode::new(1).unwrap();
    let capacity = "capacity:\n  services: 10\n";
    let three = services(&node, 3);
    let agent =
        node.sandbox.start_agent(&format!("{capacity}{}", node.agent_config(&three))).unwrap();
    let pin_dir = node.sandbox.pin_dir();
    assert_eq!(sandbox::kernel::vip_count(pin_dir).unwrap(), 3);

    agent.write_config(&format!("{capacity}{}", node.agent_config(&services(&node, 11)))).unwrap();
    let needle = "capacity.services: 11 services do not fit the kernel map of 10";
    let line = agent.proc().wait_for_log(needle, RELOAD).unwrap();
    assert!(line.contains("rejected"), "{line}");
    assert_eq!(sandbox::kernel::vip_count(pin_dir).unwrap(), 3, "the kernel kept the old state");
    assert_eq!(debug_services(&agent), 3, "so did the agent");
    let rejected = "sockeye_config_updates_total{result=\"rejected\"}";
    assert_eq!(agent.metric(rejected).unwrap(), Some(1.0));

    // A file that raises the capacity passes its own checks, but the kernel's maps
    // keep the size they were made with until the agent restarts.
    let raised = format!("capacity:\n  services: 20\n{}", node.agent_config(&services(&node, 11)));
    agent.write_config(&raised).unwrap();
    let line = agent.proc().wait_for_log("config not applied", RELOAD).unwrap();
    assert!(line.contains("11 services do not fit the kernel map of 10"), "{line}");
    assert_eq!(sandbox::kernel::vip_count(pin_dir).unwrap(), 3, "the kernel kept the old state");
    assert_eq!(debug_services(&agent), 3, "so did the agent");
    assert_eq!(agent.metric(rejected).unwrap(), Some(2.0));
    let report = node.client().probe(three[0].vip, 3, 1).unwrap();
    assert_eq!((report.failed, report.backend_names()), (0, vec!["b1"]), "{report:?}");
}

#[test]
fn an_empty_or_truncated_file_keeps_every_service_and_an_explicit_empty_list_removes_them() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();

    for (accident, said) in
        [("", "is empty"), ("listen: 169.254.77.1:15001\n", "no `services` key")]
    {
        agent.write_config(accident).unwrap();
        let line = agent.proc().wait_for_log(said, RELOAD).unwrap();
        assert!(line.contains("config reload rejected"), "{line}");
        assert_eq!(debug_services(&agent), 1);
        let report = node.client().probe(echo.vip, 3, 1).unwrap();
        assert_eq!(
            report.only_peer(),
            Some(sandbox::node::NODE_IP4.to_string().as_str()),
            "{report:?}"
        );
    }
    agent.write_config("services: []\n").unwrap();
    wait_for("every service gone", RELOAD, || (debug_services(&agent) == 0).then_some(())).unwrap();
    assert_eq!(sandbox::kernel::vip_count(node.sandbox.pin_dir()).unwrap(), 0);
}

//! Active gRPC health checks decide rotation: a new backend gets its first call only
//! once it serves, and one that turns NOT_SERVING leaves at once (streaming Watch).

use std::time::Duration;

use sandbox::{GrpcNode, grpc_node::finish_load, serial, wait_for};

/// The `t_ns=` stamp of the first log line containing `needle`.
fn stamp(log: &str, needle: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    line.split("t_ns=").nth(1)?.trim().parse().ok()
}

#[test]
fn a_new_backend_gets_its_first_call_only_once_serving() {
    let _serial = serial();
    let mut node = GrpcNode::new(2).unwrap();
    let agent = node.start_agent(&node.service(&["b1", "b2"], "")).unwrap();
    node.wait_in_rotation(&["b1", "b2"]).unwrap();
    let load = node.start_load(node.service(&[], "").vip, 200, Duration::from_secs(8)).unwrap();

    // Like a new Pod: refuses connections for 2 s, then NOT_SERVING for 2 s.
    node.add_backend("b3", &["--refuse-ms", "2000", "--not-serving-ms", "2000"]).unwrap();
    agent.write_config(&node.config(&node.service(&["b1", "b2", "b3"], ""))).unwrap();

    let report = finish_load(load).unwrap();
    println!("{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.backends.get("b3").is_some_and(|&n| n > 0), "b3 joined: {report:?}");
    let log = node.backend("b3").log();
    assert!(!log.contains("call while not serving"), "{log}");
    let serving = stamp(&log, "b3 serving t_ns=").expect("b3 served");
    let first = stamp(&log, "b3 first call t_ns=").expect("b3 got calls");
    assert!(first >= serving, "{log}");
    println!(
        "b3's first call came {:.1} ms after it began serving",
        (first - serving) as f64 / 1e6
    );
}

#[test]
fn a_backend_turning_not_serving_leaves_rotation_at_once() {
    let _serial = serial();
    let mut node = GrpcNode::new(3).unwrap();
    let service = node.service(&["b1", "b2", "b3"], "");
    let _agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();
    let load = node.start_load(service.vip, 500, Duration::from_secs(4)).unwrap();
    wait_for("calls on b1", Duration::from_secs(10), || {
        (node.calls("b1").ok()? >= 100).then_some(())
    })
    .unwrap();

    node.backend("b1").send("health not_serving").unwrap();
    let report = finish_load(load).unwrap();
    assert_eq!(report.failed, 0, "calls b1 refused were retried: {report:?}");

    let log = node.backend("b1").log();
    let turned = stamp(&log, "b1 not serving t_ns=").expect("b1 turned");
    let last_call = log
        .lines()
        .filter(|l| l.contains("call while not serving"))
        .filter_map(|l| l.split("t_ns=").nth(1)?.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(turned);
    let delay_ms = (last_call - turned) as f64 / 1e6;
    println!("b1 left rotation {delay_ms:.1} ms after it reported NOT_SERVING (goal: 100 ms)");
    // Polling Check at its 1 s interval could not do this; the Watch stream does.
    assert!(delay_ms < 500.0, "{delay_ms} ms");
}

#[test]
fn a_backend_without_watch_is_polled_with_check() {
    let _serial = serial();
    let mut node = GrpcNode::new(1).unwrap();
    let agent = node.start_agent(&node.service(&["b1"], "")).unwrap();
    node.wait_in_rotation(&["b1"]).unwrap();

    node.add_backend("b2", &["--no-watch", "true", "--not-serving-ms", "1500"]).unwrap();
    agent.write_config(&node.config(&node.service(&["b1", "b2"], ""))).unwrap();
    node.wait_in_rotation(&["b1", "b2"]).unwrap();
    let log = node.backend("b2").log();
    assert!(!log.contains("call while not serving"), "{log}");
    assert!(stamp(&log, "b2 first call t_ns=") >= stamp(&log, "b2 serving t_ns="), "{log}");
}

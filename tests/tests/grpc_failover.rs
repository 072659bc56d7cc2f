//! gRPC through the agent while a backend, under load, dies abruptly, freezes and
//! resumes, resets its connections mid-response, or loses packets: the client sees no
//! failed call.

use std::time::Duration;

use sandbox::{GrpcNode, grpc_node::finish_load, serial};

/// A frozen backend holds a try until this timeout, then the call goes elsewhere:
/// retrying a try that timed out is opt-in (field report 3).
const FAST_RETRY: &str = "  retry:\n    per_try_timeout: 500ms\n    retry_on: [connect-failure, \
                          refused-stream, reset, gateway-error, unavailable, deadline-exceeded]\n";

fn node_with_load(
    policy: &str,
    rate: u32,
    seconds: u64,
) -> (GrpcNode, sandbox::Agent, sandbox::Proc) {
    let node = GrpcNode::new(3).unwrap();
    let service = node.service(&["b1", "b2", "b3"], policy);
    let agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();
    let load = node
        .client()
        .start_grpc_load_with(
            service.vip,
            rate,
            Duration::from_secs(seconds),
            &["--timeout-ms", "5000"],
        )
        .unwrap();
    (node, agent, load)
}

#[test]
fn a_backend_closed_abruptly_mid_load_fails_no_call() {
    let _serial = serial();
    let (mut node, _agent, load) = node_with_load("", 400, 4);
    node.wait_for_calls("b1", 100).unwrap();
    node.kill_backend("b1");

    let report = finish_load(load).unwrap();
    println!("{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.backends["b2"] > 0 && report.backends["b3"] > 0, "{report:?}");
}

#[test]
fn a_frozen_backend_fails_no_call_and_returns_once_resumed() {
    let _serial = serial();
    // A short ejection, so the resumed backend is back within the test's patience.
    let policy = format!("{FAST_RETRY}  outlier:\n    base_ejection_time: 2s\n    interval: 1s\n");
    let (mut node, _agent, load) = node_with_load(&policy, 200, 6);
    node.wait_for_calls("b1", 50).unwrap();
    // Stopped: the kernel still accepts for it, but nothing answers and nothing resets.
    node.backend("b1").signal(libc::SIGSTOP).unwrap();

    let report = finish_load(load).unwrap();
    println!(
        "calls caught on the frozen backend waited at most {} ms (p999 {} ms) before a \
         retry answered them",
        report.latency_us.max / 1000,
        report.latency_us.p999 / 1000
    );
    assert_eq!(report.failed, 0, "{report:?}");

    // Resumed, it comes back into rotation (Watch says SERVING once; the checker counts
    // it each interval until healthy_threshold is met).
    node.backend("b1").signal(libc::SIGCONT).unwrap();
    let resumed = std::time::Instant::now();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();
    println!("b1 back in rotation {:?} after SIGCONT", resumed.elapsed());
}

#[test]
fn calls_in_flight_on_a_drained_endpoint_are_retried_at_the_drain_deadline() {
    let _serial = serial();
    let mut node = GrpcNode::new(2).unwrap();
    let policy = "  timeout:\n    drain: 500ms\n  retry:\n    per_try_timeout: 10s\n";
    let agent = node.start_agent(&node.service(&["b1", "b2"], policy)).unwrap();
    node.wait_in_rotation(&["b1", "b2"]).unwrap();
    // b1 answers only after 4 s: its calls are still in flight when it is removed.
    node.backend("b1").send("delay 4000").unwrap();
    node.backend("b1")
        .wait_for_log("control \"delay 4000\" applied", Duration::from_secs(5))
        .unwrap();
    let before = node.calls("b1").unwrap();
    let vip = node.service(&[], "").vip;
    let load = node
        .client()
        .start_grpc_load_with(vip, 50, Duration::from_secs(3), &["--timeout-ms", "8000"])
        .unwrap();
    node.wait_for_calls("b1", before + 1).unwrap();
    agent.write_config(&node.config(&node.service(&["b2"], policy))).unwrap();

    let report = finish_load(load).unwrap();
    println!("{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backends.keys().collect::<Vec<_>>(), ["b2"], "b1 never answered in time");
    // Calls caught on b1 were retried at the drain deadline, not left for b1's 4 s.
    assert!(report.latency_us.max < 3_000_000, "{report:?}");
    println!("the slowest call took {} ms", report.latency_us.max / 1000);
}

/// nft in a backend's namespace answers every packet to the gRPC port with a TCP reset.
const RESET_RULES: &str = "table inet sk_fault {\n  chain input {\n    type filter hook input \
                           priority 0;\n    tcp dport 50051 reject with tcp reset\n  }\n}\n";

#[test]
fn a_backend_resetting_its_connections_mid_response_fails_no_call() {
    let _serial = serial();
    let (mut node, _agent, load) = node_with_load(FAST_RETRY, 300, 5);
    node.wait_for_calls("b1", 50).unwrap();
    // Slow answers, so calls are in flight on b1's connection when the resets start.
    node.backend("b1").send("delay 100").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b1 = sandbox::Netns::borrowed(node.sandbox.pod("b1").netns().name());
    b1.exec("nft", &["-f", "-"], RESET_RULES).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    b1.exec("nft", &["delete", "table", "inet", "sk_fault"], "").unwrap();
    node.backend("b1").send("delay 0").unwrap();

    let report = finish_load(load).unwrap();
    println!("resets mid-response: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
}

/// Drops a fifth of the packets b1 sends, at random (this kernel has no netem qdisc).
const LOSS_RULES: &str = "table inet sk_fault {\n  chain output {\n    type filter hook output \
                          priority 0;\n    numgen random mod 100 < 20 drop\n  }\n}\n";

#[test]
fn packet_loss_on_a_backends_link_fails_no_call() {
    let _serial = serial();
    let (mut node, _agent, load) = node_with_load(FAST_RETRY, 200, 6);
    node.wait_for_calls("b1", 50).unwrap();
    let b1 = sandbox::Netns::borrowed(node.sandbox.pod("b1").netns().name());
    b1.exec("nft", &["-f", "-"], LOSS_RULES).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    b1.exec("nft", &["delete", "table", "inet", "sk_fault"], "").unwrap();

    let report = finish_load(load).unwrap();
    println!(
        "20% loss on b1's link for 3 s: {} calls, {} failed, p99 {} ms, max {} ms",
        report.sent,
        report.failed,
        report.latency_us.p99 / 1000,
        report.latency_us.max / 1000
    );
    assert_eq!(report.failed, 0, "{report:?}");
}

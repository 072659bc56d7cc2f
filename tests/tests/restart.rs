//! The agent replaced under gRPC load from an enrolled Pod: killed and restarted (the
//! successor adopts the pinned programs and maps), or upgraded in place (the running
//! agent hands its listeners to the successor and drains).

use std::time::Duration;

use sandbox::{Agent, GrpcNode, Proc, ServiceSpec, grpc_node::finish_load, serial};

const REQUESTS: &str = "sockeye_requests_total{service=\"greeter\",protocol=\"grpc\"}";

/// Backends b1 and b2 behind an agent, and 4 s of load at `rate` calls/s from the
/// enrolled client, already reaching b1.
fn under_load(rate: u32) -> (GrpcNode, ServiceSpec, Agent, Proc) {
    let mut node = GrpcNode::new(2).unwrap();
    let service = node.service(&["b1", "b2"], "");
    let agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2"]).unwrap();
    let load = node.start_load(service.vip, rate, Duration::from_secs(4)).unwrap();
    node.wait_for_calls("b1", u64::from(rate / 4)).unwrap();
    (node, service, agent, load)
}

#[test]
fn a_killed_agent_fails_open_and_a_new_one_adopts_its_pins() {
    let _serial = serial();
    let (node, service, mut old, load) = under_load(200);

    old.proc().signal(libc::SIGKILL).unwrap();
    old.proc_mut().wait(Duration::from_secs(5)).unwrap();
    let steered_at_kill = sandbox::kernel::counters(node.sandbox.pin_dir()).unwrap()["steered"];
    let new = node.sandbox.start_agent_named("agent-2", &node.config(&service), &[]).unwrap();
    assert!(new.log().contains("adopting the maps a previous agent pinned"), "{}", new.log());

    let report = finish_load(load).unwrap();
    println!("load across SIGKILL and restart: {report:?}");
    // The calls in flight on the killed agent's connection die with it; the client's
    // reconnect goes straight to a backend (DNAT) while no agent listens.
    assert!(report.failed <= 2, "{report:?}");
    // A client connecting now is steered to the new agent, and served.
    node.wait_in_rotation(&["b1", "b2"]).unwrap();
    let counters = sandbox::kernel::counters(node.sandbox.pin_dir()).unwrap();
    assert!(counters["steered"] > steered_at_kill, "{counters:?}");
    assert!(new.metric(REQUESTS).unwrap().unwrap_or(0.0) > 0.0, "{}", new.log());
}

#[test]
fn an_upgrade_hands_the_listeners_over_and_fails_no_call() {
    let _serial = serial();
    let (node, service, mut old, load) = under_load(400);

    let new = node.sandbox.start_agent_named("agent-2", &node.config(&service), &[]).unwrap();
    assert!(new.log().contains("took the listeners over"), "{}", new.log());
    // The old agent sends GOAWAY, lets its calls finish and exits, leaving the pins.
    assert_eq!(old.proc_mut().wait(Duration::from_secs(10)).unwrap(), Some(0), "{}", old.log());
    assert!(old.log().contains("left to the successor"), "{}", old.log());
    assert!(node.sandbox.pin_dir().join("link_sk_connect4").exists());

    let report = finish_load(load).unwrap();
    println!("load across the hand-off: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    // The client reconnected after GOAWAY, through the same listening socket, to the
    // new agent.
    assert!(new.metric(REQUESTS).unwrap().unwrap_or(0.0) > 0.0, "{}", new.log());
}

#[test]
fn an_agent_stopped_while_its_successor_gets_ready_serves_until_the_hand_off() {
    let _serial = serial();
    let (node, service, mut old, load) = under_load(400);

    // A DaemonSet rollout with maxSurge: the new Pod starts, then the old one gets
    // SIGTERM before the new agent is ready (held here with SIGSTOP).
    let new = node.sandbox.spawn_agent_named("agent-2", &node.config(&service), &[]).unwrap();
    new.proc().wait_for_log("taking over from it once ready", Duration::from_secs(10)).unwrap();
    new.proc().signal(libc::SIGSTOP).unwrap();
    old.proc().wait_for_log("a successor is starting", Duration::from_secs(10)).unwrap();
    old.proc().signal(libc::SIGTERM).unwrap();
    old.proc().wait_for_log("serving until it takes over", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // the old agent keeps serving meanwhile
    new.proc().signal(libc::SIGCONT).unwrap();

    new.wait_serving(Duration::from_secs(20)).unwrap();
    assert_eq!(old.proc_mut().wait(Duration::from_secs(10)).unwrap(), Some(0), "{}", old.log());
    assert!(old.log().contains("left to the successor"), "{}", old.log());
    let report = finish_load(load).unwrap();
    println!("load across SIGTERM during the successor's start: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(new.metric(REQUESTS).unwrap().unwrap_or(0.0) > 0.0, "{}", new.log());
}

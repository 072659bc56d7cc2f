//! Stopping the agent with connections of every kind open: idle opaque TCP, HTTP/1.1
//! keep-alive, gRPC calls in flight, and the admin endpoint. A stop drains, closes
//! what is left at the deadline, detaches and exits 0; a hand-off leaves the pins to
//! the successor; a second SIGTERM ends the drain at once; the other signals a
//! terminal or process manager sends have an effect of their own, logged.

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use sandbox::{ADMIN, Agent, GrpcNode, Proc, ServiceSpec, serial};

const TCP_VIP: &str = "10.96.0.30:50051";
const HTTP_VIP: &str = "10.96.0.31:50051";

/// A node with one gRPC backend behind three services (grpc, tcp and http), and a
/// connection of each kind held open through the agent.
struct Busy {
    node: GrpcNode,
    services: Vec<ServiceSpec>,
    tcp: Proc,
    http1: Proc,
    _grpc: Proc,
    admin: TcpStream,
}

fn busy_node() -> (Busy, Agent) {
    let mut node = GrpcNode::new(1).unwrap();
    let grpc = node.service(&["b1"], "");
    let endpoints = grpc.endpoints.clone();
    let tcp = ServiceSpec::tcp("held", TCP_VIP.parse().unwrap(), endpoints.clone());
    let http = ServiceSpec {
        protocol: "http",
        ..ServiceSpec::tcp("web", HTTP_VIP.parse().unwrap(), endpoints)
    };
    let services = vec![grpc.clone(), tcp, http];
    node.sandbox.set_kube_proxy(&services).unwrap();
    let agent =
        node.sandbox.start_agent(&node.sandbox.agent_config(&[node.client()], &services)).unwrap();
    node.wait_in_rotation(&["b1"]).unwrap();

    let tcp = node.client().spawn(&["tcp-hold", "--to", TCP_VIP, "--count", "2"]).unwrap();
    tcp.wait_for_log("held 2", Duration::from_secs(5)).unwrap();
    let http1 = node.client().spawn(&["http1-hold", "--to", HTTP_VIP]).unwrap();
    http1.wait_for_log("response HTTP/1.1", Duration::from_secs(5)).unwrap();
    // Calls that never get an answer: the backend holds them.
    node.backend("b1").send("hang on").unwrap();
    let grpc_load = node
        .client()
        .start_grpc_load_with(grpc.vip, 5, Duration::from_secs(1), &["--timeout-ms", "60000"])
        .unwrap();
    node.wait_for_calls("b1", 3).unwrap();
    let admin = node.sandbox.node().run(|| TcpStream::connect(ADMIN)).unwrap().unwrap();
    (Busy { node, services, tcp, http1, _grpc: grpc_load, admin }, agent)
}

fn assert_clean_exit(agent: &mut Agent, within: Duration) -> Duration {
    let started = Instant::now();
    let code = agent.proc_mut().wait(within).unwrap();
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    started.elapsed()
}

#[test]
fn sigterm_with_every_kind_of_connection_open_drains_detaches_and_exits_0() {
    let _serial = serial();
    let (mut busy, mut agent) = busy_node();
    agent.proc().signal(libc::SIGTERM).unwrap();
    let took = assert_clean_exit(&mut agent, Duration::from_secs(15));
    println!("stopped in {took:?} with tcp, HTTP/1.1, gRPC and admin connections open");
    assert!(!busy.node.sandbox.pin_dir().exists(), "pins left: {}", agent.log());
    assert!(agent.log().contains("kernel programs detached"), "{}", agent.log());
    // Every downstream connection was ended by the agent, none left hanging.
    busy.tcp.wait(Duration::from_secs(5)).unwrap();
    assert!(busy.tcp.log().matches("ended").count() >= 2, "{}", busy.tcp.log());
    busy.http1.wait(Duration::from_secs(5)).unwrap();
    assert!(busy.http1.log().contains("ended"), "{}", busy.http1.log());
    let admin_read = std::io::Read::read(&mut busy.admin, &mut [0u8; 16]);
    assert!(matches!(admin_read, Ok(0) | Err(_)), "admin connection still open: {admin_read:?}");
    // The kernel forgot the agent: the next connect takes the DNAT path.
    let report = busy.node.client().probe(busy.services[1].vip, 1, 1);
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let _serial = serial();
    let (busy, mut agent) = busy_node();
    agent.proc().signal(libc::SIGTERM).unwrap();
    agent.proc().wait_for_log("draining connections", Duration::from_secs(5)).unwrap();
    agent.proc().signal(libc::SIGTERM).unwrap();
    let took = assert_clean_exit(&mut agent, Duration::from_secs(15));
    println!("second SIGTERM: exited {took:?} after it");
    assert!(took < Duration::from_secs(3), "the drain went on: {took:?}\n{}", agent.log());
    assert!(agent.log().contains("stopping at once"), "{}", agent.log());
    assert!(!busy.node.sandbox.pin_dir().exists(), "pins left: {}", agent.log());
}

#[test]
fn a_hand_off_with_every_kind_of_connection_open_leaves_the_pins_and_exits_0() {
    let _serial = serial();
    let (mut busy, mut old) = busy_node();
    let config = busy.node.sandbox.agent_config(&[busy.node.client()], &busy.services);
    let new = busy.node.sandbox.start_agent_named("agent-2", &config, &[]).unwrap();
    assert_clean_exit(&mut old, Duration::from_secs(15));
    assert!(old.log().contains("left to the successor"), "{}", old.log());
    assert!(busy.node.sandbox.pin_dir().join("link_sk_connect4").exists());
    busy.node.backend("b1").send("hang off").unwrap();
    busy.node.wait_in_rotation(&["b1"]).unwrap_or_else(|e| panic!("{e}\n{}", new.log()));
}

#[test]
fn signals_other_than_stop_are_handled_and_logged_and_the_agent_serves_on() {
    let _serial = serial();
    let node = GrpcNode::new(1).unwrap();
    let service = node.service(&["b1"], "");
    let agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1"]).unwrap();
    for (signal, logged) in [
        (libc::SIGHUP, "SIGHUP: re-reading the configuration"),
        (libc::SIGUSR1, "SIGUSR1: 1 services"),
        (libc::SIGUSR2, "SIGUSR2 ignored"),
        (libc::SIGTSTP, "SIGTSTP ignored"),
        (libc::SIGTTIN, "SIGTTIN ignored"),
        (libc::SIGTTOU, "SIGTTOU ignored"),
    ] {
        agent.proc().signal(signal).unwrap();
        agent.proc().wait_for_log(logged, Duration::from_secs(5)).unwrap();
    }
    node.wait_in_rotation(&["b1"]).unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(agent.admin_get("/readyz").unwrap().0, 200);
}

#[test]
fn sigquit_stops_at_once_and_cleanly() {
    let _serial = serial();
    let (busy, mut agent) = busy_node();
    agent.proc().signal(libc::SIGQUIT).unwrap();
    let took = assert_clean_exit(&mut agent, Duration::from_secs(15));
    assert!(took < Duration::from_secs(3), "{took:?}\n{}", agent.log());
    assert!(!busy.node.sandbox.pin_dir().exists(), "pins left: {}", agent.log());
}

//! Per-request balancing over one client connection, and misbehaving clients that
//! disturb nobody else.

use std::time::Duration;

use sandbox::{GrpcNode, grpc_node::finish_load, serial};

#[test]
fn one_connection_spreads_3000_calls_evenly_over_three_backends() {
    let _serial = serial();
    let node = GrpcNode::new(3).unwrap();
    let service = node.service(&["b1", "b2", "b3"], "");
    let _agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();

    let report =
        finish_load(node.start_load(service.vip, 1000, Duration::from_secs(3)).unwrap()).unwrap();
    println!("{:?}", report.backends);
    assert_eq!((report.sent, report.failed), (3000, 0), "{report:?}");
    for (backend, calls) in &report.backends {
        assert!((850..=1150).contains(calls), "{backend} got {calls}: {report:?}");
    }
}

#[test]
fn garbage_and_half_open_clients_disturb_no_other_client() {
    let _serial = serial();
    let node = GrpcNode::new(2).unwrap();
    let service = node.service(&["b1", "b2"], "");
    let agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2"]).unwrap();

    let load = node.start_load(service.vip, 300, Duration::from_secs(3)).unwrap();
    let vip = service.vip.to_string();
    let mut junk = node.client().spawn(&["tcp-junk", "--to", &vip, "--hold-ms", "2000"]).unwrap();
    assert_eq!(junk.wait(Duration::from_secs(10)).unwrap(), Some(0), "{}", junk.log());

    let report = finish_load(load).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let (status, _) = agent.admin_get("/healthz").unwrap();
    assert_eq!(status, 200, "{}", agent.log());
}

//! The sandbox's gRPC tooling works on its own: a backend that refuses, then is not
//! serving, then serves; and the open-loop load client's report.

use std::time::Duration;

use sandbox::{Sandbox, grpc::load::LoadReport};

#[test]
fn a_scripted_backend_refuses_then_fails_then_serves_and_load_reports_it() {
    let mut sandbox = Sandbox::new().unwrap();
    sandbox.add_pod("client").unwrap();
    let backend = sandbox.add_pod("b1").unwrap();
    let target = backend.addr(50051);
    let mut server =
        backend.start_grpc(50051, &["--refuse-ms", "400", "--not-serving-ms", "400"]).unwrap();
    let load = sandbox.pod("client").start_grpc_load(target, 200, Duration::from_secs(2)).unwrap();
    let mut load = load;
    load.wait(Duration::from_secs(30)).unwrap();
    let report = LoadReport::parse(&load.log()).unwrap();
    println!("{report:?}");
    assert_eq!(report.sent, 400, "{report:?}");
    assert!(report.ok > 150 && report.failed > 50, "some calls in each phase: {report:?}");
    assert!(report.errors.keys().any(|e| e.starts_with("Unavailable")), "{report:?}");
    assert_eq!(report.backends.keys().collect::<Vec<_>>(), ["b1"]);
    assert_eq!(report.timeline.len(), 2);
    assert_eq!(report.timeline[1].failed, 0, "serving by the second second: {report:?}");

    server.send("fail 14").unwrap();
    server.wait_for_log("control \"fail 14\" applied", Duration::from_secs(5)).unwrap();
    let mut load =
        sandbox.pod("client").start_grpc_load(target, 100, Duration::from_millis(500)).unwrap();
    load.wait(Duration::from_secs(30)).unwrap();
    let report = LoadReport::parse(&load.log()).unwrap();
    assert_eq!((report.ok, report.failed), (0, 50), "{report:?}");
}

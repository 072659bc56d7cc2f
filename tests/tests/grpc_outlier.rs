//! Passive outlier detection and the retry budget, against backends answering
//! UNAVAILABLE to every call.

use std::{collections::BTreeSet, time::Duration};

use sandbox::{
    GrpcNode,
    grpc_node::{GRPC_PORT, finish_load},
    serial,
};

const OUTLIER: &str = "  outlier:\n    consecutive_gateway_failure: 3\n    \
                       base_ejection_time: 1s\n    interval: 1s\n    max_ejection_percent: 50\n";

/// The agent's endpoint transitions, in order: (endpoint, to-state).
fn transitions(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("endpoint=") && l.contains(" to="))
        .filter_map(|l| {
            let field =
                |name: &str| l.split(name).nth(1)?.split_whitespace().next().map(str::to_string);
            Some((field("endpoint=")?, field(" to=")?))
        })
        .collect()
}

#[test]
fn backends_answering_unavailable_are_ejected_and_readmitted_within_max_percent() {
    let _serial = serial();
    let mut node = GrpcNode::new(3).unwrap();
    let service = node.service(&["b1", "b2", "b3"], OUTLIER);
    let agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();
    node.backend("b1").send("fail 14").unwrap();
    node.backend("b2").send("fail 14").unwrap();

    let report =
        finish_load(node.start_load(service.vip, 200, Duration::from_secs(5)).unwrap()).unwrap();
    println!("{report:?}");

    let addr = |b: &str| node.sandbox.pod(b).addr(GRPC_PORT).to_string();
    let (b1, b2, b3) = (addr("b1"), addr("b2"), addr("b3"));
    let mut ejected = BTreeSet::new();
    let mut ejections = 0;
    for (endpoint, to) in transitions(&agent.log()) {
        if to.contains("Ejected") {
            assert_ne!(endpoint, b3, "the healthy backend is never ejected");
            ejected.insert(endpoint);
            ejections += 1;
            assert!(ejected.len() <= 1, "max_ejection_percent 50 of 3 allows one at a time");
        } else {
            ejected.remove(&endpoint);
        }
    }
    println!("{ejections} ejections of {b1} and {b2}");
    assert!(ejections >= 2, "ejected, readmitted after 1 s, ejected again:\n{}", agent.log());
}

#[test]
fn retries_never_amplify_an_outage_beyond_the_budget() {
    let _serial = serial();
    let mut node = GrpcNode::new(3).unwrap();
    let policy = "  retry:\n    budget_percent: 20\n    min_retries_per_second: 5\n";
    let service = node.service(&["b1", "b2", "b3"], policy);
    let _agent = node.start_agent(&service).unwrap();
    node.wait_in_rotation(&["b1", "b2", "b3"]).unwrap();
    let before: u64 = ["b1", "b2", "b3"].iter().map(|b| node.calls(b).unwrap()).sum();
    for b in ["b1", "b2", "b3"] {
        node.backend(b).send("fail 14").unwrap();
    }

    let report =
        finish_load(node.start_load(service.vip, 200, Duration::from_secs(3)).unwrap()).unwrap();
    let attempts: u64 =
        ["b1", "b2", "b3"].iter().map(|b| node.calls(b).unwrap()).sum::<u64>() - before;
    // 20% of requests, plus a floor of 5 retries per second over the run and a window.
    let bound = report.sent * 12 / 10 + 5 * 13;
    println!("{} calls, {attempts} upstream attempts (bound {bound})", report.sent);
    assert_eq!(report.ok, 0, "every backend fails");
    assert!(attempts >= report.sent, "each call tried at least once");
    assert!(attempts <= bound, "{attempts} attempts for {} calls", report.sent);
}

//! The admin endpoint of a running agent: `/metrics` carries the kernel's counters and
//! the endpoints' states, `/debug/state` the services as the agent sees them.

use sandbox::EchoNode;

#[test]
fn metrics_and_debug_state_report_the_running_agent() {
    let node = EchoNode::new(2).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1", "b2"]);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    let report = node.client().probe(echo.vip, 5, 1).unwrap();
    assert_eq!(report.ok, 5, "{report:?}");

    let (status, metrics) = agent.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    let value = |series: &str| -> Option<f64> {
        metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    assert_eq!(value("sockeye_kernel_events_total{event=\"steered\"}"), Some(5.0), "{metrics}");
    assert_eq!(
        value("sockeye_requests_total{service=\"echo\",protocol=\"tcp\"}"),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        value("sockeye_endpoints{service=\"echo\",state=\"ready\"}"),
        Some(2.0),
        "{metrics}"
    );

    let (status, state) = agent.admin_get("/debug/state").unwrap();
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let service = &state["services"][0];
    assert_eq!(service["name"], "echo", "{state}");
    assert_eq!(service["vip"], "10.96.0.10:7000", "{state}");
    let states: Vec<&str> = service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "ready"], "{state}");
    assert_eq!(state["kernel_counters"]["steered"], 5, "{state}");
}

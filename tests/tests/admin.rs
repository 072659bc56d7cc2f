//! The admin endpoint of a running agent: `/metrics` carries the kernel's counters and
//! the endpoints' states, `/debug/state` the services as the agent sees them.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

use sandbox::{ADMIN, EchoNode, http_get, node::NODE_IP4};

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

#[test]
fn the_admin_endpoint_binds_where_the_flag_says_and_is_read_only() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let on_node_ip = SocketAddr::from((NODE_IP4, 15091));
    let flag = on_node_ip.to_string();
    let _agent = node
        .sandbox
        .start_agent_named("agent", &node.agent_config(&[echo]), &["--admin", &flag])
        .unwrap();

    // Reachable on the node's IP from a Pod; nothing on the config's loopback address.
    let (status, _) =
        node.outsider().netns().run(|| http_get(on_node_ip, "/readyz")).unwrap().unwrap();
    assert_eq!(status, 200);
    let loopback = node.sandbox.node().run(|| http_get(ADMIN.parse().unwrap(), "/readyz")).unwrap();
    assert!(loopback.is_err(), "{loopback:?}");

    // Nothing can be changed through it.
    for method in ["POST", "PUT", "DELETE"] {
        let response = node
            .outsider()
            .netns()
            .run(|| -> std::io::Result<String> {
                let mut stream = TcpStream::connect(on_node_ip)?;
                write!(stream, "{method} /debug/state HTTP/1.0\r\nContent-Length: 0\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            })
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.0 405"), "{method}: {response}");
    }
}

#[test]
fn sockeye_status_prints_the_running_agent_at_a_glance() {
    let node = EchoNode::new(2).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1", "b2"]);
    let _agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    node.client().probe(echo.vip, 3, 1).unwrap();
    let sockeye = sandbox::binary("sockeye").unwrap();
    let output = node
        .sandbox
        .node()
        .run(|| std::process::Command::new(&sockeye).args(["status", "--admin", ADMIN]).output())
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    assert!(output.status.success(), "{text}");
    assert!(text.contains(": ready, taking connections"), "{text}");
    assert!(text.contains("kernel maps: pods 1/4096, services 1/65536"), "{text}");
    assert!(text.contains("3 connects steered"), "{text}");
    let row: Vec<&str> =
        text.lines().find(|l| l.starts_with("echo ")).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["echo", "10.96.0.10:7000", "tcp", "2"], "{text}");
}

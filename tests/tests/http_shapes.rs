//! Plain HTTP through the agent, every shape a real client and server use: sized and
//! chunked multi-MiB uploads, a streamed response, `Expect: 100-continue`, a WebSocket
//! (an HTTP/1.1 Upgrade, tunnelled), HTTP/2 extended CONNECT (tunnelled), and HTTP/2
//! with prior knowledge (h2c) with trailers both ways. Each request goes through the agent: the kernel steers the
//! client's connect to the VIP, and the agent counts the request.

use sandbox::{WebNode, serial};

fn node() -> (WebNode, sandbox::Agent) {
    let node = WebNode::new(2).unwrap();
    let agent = node.start_agent(&node.service(&["w1", "w2"], "")).unwrap();
    (node, agent)
}

/// Requests the agent has served for the `web` service so far.
fn served(agent: &sandbox::Agent) -> f64 {
    let series = "sockeye_requests_total{service=\"web\",protocol=\"http\"}";
    agent.metric(series).unwrap().unwrap_or(0.0)
}

#[test]
fn uploads_streams_expect_continue_and_h2c_trailers_pass_through() {
    let _serial = serial();
    let (node, agent) = node();
    let mut expected = served(&agent);

    for shape in ["upload-sized", "upload-chunked"] {
        let report = node.shape(shape, &["--bytes", "8388608"]).unwrap();
        println!("{shape}: {report:?}");
        assert_eq!(report.status, 200, "{shape}: {report:?}");
        assert!(report.intact && report.bytes == 8 << 20, "{shape}: {report:?}");
        expected += 1.0;
        assert_eq!(served(&agent), expected, "{shape} went through the agent");
    }

    let report = node.shape("stream", &["--count", "5"]).unwrap();
    println!("stream: {report:?}");
    assert!(report.intact && report.messages == 5, "{report:?}");
    assert!(
        report.first_received_ns < report.last_produced_ns,
        "the first chunk reached the client before the last was made: {report:?}"
    );

    let report = node.shape("expect", &["--bytes", "1048576"]).unwrap();
    println!("expect: {report:?}");
    assert!(report.continued, "100 Continue came before the body: {report:?}");
    assert!(report.status == 200 && report.intact, "{report:?}");

    let report = node.shape("h2c-trailers", &["--bytes", "300000"]).unwrap();
    println!("h2c-trailers: {report:?}");
    assert!(report.status == 200 && report.intact, "body and trailers both ways: {report:?}");
    expected += 3.0;
    assert_eq!(served(&agent), expected, "stream, expect and h2c went through the agent");
}

#[test]
fn a_websocket_becomes_a_tunnel_and_echoes_1000_messages() {
    let _serial = serial();
    let (node, agent) = node();
    let report = node.shape("websocket", &["--count", "1000"]).unwrap();
    println!("websocket: {report:?}");
    assert_eq!(report.status, 101, "{report:?}");
    assert!(report.intact && report.messages == 1000, "{report:?}");
    let tunnels = agent.metric("sockeye_tunnels_total{service=\"web\",kind=\"upgrade\"}").unwrap();
    assert_eq!(tunnels, Some(1.0), "counted as a tunnel");
}

#[test]
fn an_h2_extended_connect_becomes_a_tunnel() {
    let _serial = serial();
    // One backend: the agent's connection to it has its SETTINGS once the GET before
    // the CONNECT is answered.
    let node = WebNode::new(1).unwrap();
    let agent = node.start_agent(&node.service(&["w1"], "")).unwrap();
    let report = node.shape("h2-connect", &["--count", "100"]).unwrap();
    println!("h2-connect: {report:?}");
    assert_eq!(report.status, 200, "{report:?}");
    assert!(report.intact && report.messages == 100, "{report:?}");
    let tunnels = agent.metric("sockeye_tunnels_total{service=\"web\",kind=\"connect\"}").unwrap();
    assert_eq!(tunnels, Some(1.0), "counted as a tunnel");
}

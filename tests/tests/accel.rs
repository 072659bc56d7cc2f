//! Socket-to-socket acceleration (`--accel on`): bytes between an enrolled Pod and the
//! agent skip the TCP/IP stack, arrive whole and in order both ways, half-close
//! works, and closed connections leave nothing in the maps.

use std::time::Duration;

use sandbox::{EchoNode, ServiceSpec, kernel, wait_for};

struct Stream {
    intact: usize,
    bytes_each_way: u64,
    elapsed_ms: u64,
}

/// A node whose backend b1 mirrors bytes behind a tcp service.
fn mirror_node() -> (EchoNode, ServiceSpec, sandbox::Proc) {
    let node = EchoNode::new(1).unwrap();
    let (service, mirror) = node.mirror("b1", "10.96.0.11:7001").unwrap();
    (node, service, mirror)
}

fn stream(
    node: &EchoNode,
    service: &ServiceSpec,
    connections: usize,
    bytes: u64,
    chunk: usize,
) -> Stream {
    let (to, n, b, c) =
        (service.vip.to_string(), connections.to_string(), bytes.to_string(), chunk.to_string());
    let mut run = node
        .client()
        .spawn(&["tcp-stream", "--to", &to, "--connections", &n, "--bytes", &b, "--chunk", &c])
        .unwrap();
    run.wait(Duration::from_secs(120)).unwrap();
    let log = run.log();
    let line = log.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{log}"));
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    Stream {
        intact: report["intact"].as_u64().unwrap() as usize,
        bytes_each_way: report["bytes_each_way"].as_u64().unwrap(),
        elapsed_ms: report["elapsed_ms"].as_u64().unwrap(),
    }
}

#[test]
fn a_gibibyte_over_100_connections_arrives_whole_both_ways_and_leaves_no_entries() {
    let _serial = sandbox::serial();
    let (node, service, _mirror) = mirror_node();
    let config = node.agent_config(std::slice::from_ref(&service));
    let agent = node.sandbox.start_agent_with(&config, &["--accel", "on"]).unwrap();

    // Large writes on half the connections...
    let per_connection = (1u64 << 30) / 100;
    let large = stream(&node, &service, 50, per_connection, 256 * 1024);
    assert_eq!(large.intact, 50, "agent log:\n{}", agent.log());
    // ... and small ones (odd sizes, so messages straddle every boundary) on the rest.
    let small = stream(&node, &service, 50, per_connection, 1_000);
    assert_eq!(small.intact, 50, "agent log:\n{}", agent.log());
    let total = large.bytes_each_way + small.bytes_each_way;
    assert!(total >= (1 << 30) - 100);
    println!(
        "accel: {} MiB each way through 100 connections: 256 KiB writes {} ms, 1000 B writes {} ms",
        total >> 20,
        large.elapsed_ms,
        small.elapsed_ms
    );

    let counters = agent.counters().unwrap();
    println!("{counters:?}");
    assert!(counters["accel_inserted"] >= 200, "both ends of 100 connections: {counters:?}");
    assert!(counters["accel_redirected"] > 1000, "{counters:?}");
    assert_eq!(counters["accel_insert_failed"], 0);
    let (socks, fallen) =
        wait_for("closed sockets to leave the maps", Duration::from_secs(5), || {
            let entries = kernel::socket_map_entries(node.sandbox.pin_dir()).unwrap();
            (entries == (0, 0)).then_some(entries)
        })
        .unwrap();
    assert_eq!((socks, fallen), (0, 0));
}

#[test]
fn tiny_messages_and_the_line_protocol_work_accelerated() {
    let _serial = sandbox::serial();
    let (node, service, _mirror) = mirror_node();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let services = [service.clone(), echo.clone()];
    node.sandbox.set_kube_proxy(&services).unwrap();
    let agent =
        node.sandbox.start_agent_with(&node.agent_config(&services), &["--accel", "on"]).unwrap();

    let tiny = stream(&node, &service, 10, 20_000, 7);
    assert_eq!(tiny.intact, 10, "agent log:\n{}", agent.log());
    // Server-first greeting, then a line each way, over many short connections.
    let report = node.client().probe(echo.vip, 200, 8).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let counters = agent.counters().unwrap();
    assert!(counters["accel_redirected"] > 0, "{counters:?}");
    wait_for("closed sockets to leave the maps", Duration::from_secs(5), || {
        (kernel::socket_map_entries(node.sandbox.pin_dir()).unwrap() == (0, 0)).then_some(())
    })
    .unwrap();
}

#[test]
fn with_acceleration_off_nothing_enters_the_socket_map() {
    let _serial = sandbox::serial();
    let (node, service, _mirror) = mirror_node();
    let config = node.agent_config(std::slice::from_ref(&service));
    let agent = node.sandbox.start_agent_with(&config, &["--accel", "off"]).unwrap();
    let run = stream(&node, &service, 4, 1 << 20, 4096);
    assert_eq!(run.intact, 4);
    let counters = agent.counters().unwrap();
    assert_eq!((counters["accel_inserted"], counters["accel_redirected"]), (0, 0), "{counters:?}");
}

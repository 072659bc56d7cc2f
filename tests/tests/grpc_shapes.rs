//! Every gRPC call shape through the agent, tonic on both ends: unary, server
//! streaming, client streaming with pauses, bidi ping-pong and bidi bulk; a unary call
//! larger than the replay copy sent once; client streams reset before response headers
//! retried only while they fit the copy; a bidi session held open across a config
//! reload and another endpoint's removal; server streams whose endpoint is killed or
//! drained end with UNAVAILABLE, promptly or at the drain deadline.

use std::time::Duration;

use sandbox::{Agent, GrpcNode, Proc, grpc::shapes::ShapeReport, monotonic_ns, serial, wait_for};

/// Starts `sk-pod grpc-shape` from the client to the service's VIP.
fn start(node: &GrpcNode, shape: &str, flags: &[&str]) -> Proc {
    let vip = node.service(&[], "").vip.to_string();
    let mut args = vec!["grpc-shape", "--to", &vip, "--shape", shape];
    args.extend(flags);
    node.client().spawn(&args).unwrap()
}

fn finish(proc: Proc) -> ShapeReport {
    finish_with_log(proc).0
}

/// The report and the whole output (progress lines with `t_ns=` stamps).
fn finish_with_log(mut proc: Proc) -> (ShapeReport, String) {
    proc.wait(Duration::from_secs(180)).unwrap();
    let log = proc.log();
    (ShapeReport::parse(&log).unwrap(), log)
}

fn run(node: &GrpcNode, shape: &str, flags: &[&str]) -> ShapeReport {
    let report = finish(start(node, shape, flags));
    println!("{shape} {flags:?}: {report:?}");
    report
}

fn node(backends: &[&str], policy: &str) -> (GrpcNode, Agent) {
    let node = GrpcNode::new(backends.len()).unwrap();
    let agent = node.start_agent(&node.service(backends, policy)).unwrap();
    node.wait_in_rotation(backends).unwrap();
    (node, agent)
}

/// The backend named in a `first chunk from X` / `first reply from X` line.
fn first_backend(proc: &Proc, what: &str) -> String {
    let line = proc.wait_for_log(&format!("first {what} from"), Duration::from_secs(20)).unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

#[test]
fn every_call_shape_passes_through() {
    let _serial = serial();
    let (node, agent) = node(&["b1", "b2"], "");
    let calls = || agent.metric("sockeye_requests_total{service=\"greeter\",protocol=\"grpc\"}");
    let before = calls().unwrap().unwrap_or(0.0);

    let unary = run(&node, "unary", &["--size", "1000"]);
    assert!(unary.ok() && unary.intact, "{unary:?}");

    let fetch = run(&node, "fetch", &["--count", "1000", "--size", "100"]);
    assert!(fetch.ok() && fetch.intact && fetch.received == 1000, "{fetch:?}");

    // Five messages 700 ms apart: longer in all than the 2 s per-try timeout, which
    // counts from the client's last message.
    let upload = run(&node, "upload", &["--count", "5", "--size", "1000", "--pause-ms", "700"]);
    assert!(upload.ok() && upload.intact && upload.received == 5, "{upload:?}");
    assert!(upload.elapsed_ms >= 2800, "{upload:?}");

    let pingpong = run(&node, "pingpong", &["--count", "100", "--size", "100"]);
    assert!(pingpong.ok() && pingpong.intact && pingpong.received == 100, "{pingpong:?}");
    println!(
        "ping-pong through the agent: 100 round trips in {} ms, p50 {} µs, max {} µs",
        pingpong.elapsed_ms, pingpong.round_trip_p50_us, pingpong.round_trip_max_us
    );
    assert!(pingpong.elapsed_ms < 20_000, "{pingpong:?}");

    let bulk = run(&node, "bulk", &["--count", "2000", "--size", "16384"]);
    assert!(bulk.ok() && bulk.intact && bulk.received == 2000, "{bulk:?}");

    assert_eq!(calls().unwrap(), Some(before + 5.0), "every call went through the agent");
}

#[test]
fn a_unary_call_is_retried_unless_it_outgrew_the_replay_copy() {
    let _serial = serial();
    let (mut node, agent) = node(&["b1", "b2"], "");
    for b in ["b1", "b2"] {
        node.backend(b).send("fail 14").unwrap();
        node.backend(b)
            .wait_for_log("control \"fail 14\" applied", Duration::from_secs(5))
            .unwrap();
    }
    let total = |node: &mut GrpcNode| node.calls("b1").unwrap() + node.calls("b2").unwrap();

    let before = total(&mut node);
    let small = run(&node, "unary", &["--size", "1000"]);
    assert_eq!(small.code, "Unavailable", "{small:?}");
    assert_eq!(total(&mut node), before + 2, "1 KB fits the 64 KiB copy: tried on both");

    let before = total(&mut node);
    let big = run(&node, "unary", &["--size", "100000"]);
    assert_eq!(big.code, "Unavailable", "{big:?}");
    assert_eq!(total(&mut node), before + 1, "100 KB does not fit: sent once");
    drop(agent);
}

#[test]
fn a_unary_call_whose_endpoint_refuses_is_retried_and_succeeds() {
    let _serial = serial();
    let mut node = GrpcNode::new(1).unwrap();
    // b9 runs no server: every connect to it is refused. No health checks, so the
    // agent sends it calls until outlier detection ejects it.
    node.sandbox.add_pod("b9").unwrap();
    let policy = "  health:\n    enabled: false\n";
    let agent = node.start_agent(&node.service(&["b1", "b9"], policy)).unwrap();
    let load = node.start_load(node.service(&[], "").vip, 100, Duration::from_secs(2)).unwrap();
    let report = sandbox::grpc_node::finish_load(load).unwrap();
    println!("{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    let refused =
        "sockeye_upstream_connect_errors_total{service=\"greeter\",reason=\"connect_refused\"}";
    let refused = agent.metric(refused).unwrap().unwrap_or(0.0);
    assert!(refused >= 1.0, "calls met the refusing endpoint and were retried: {refused}");
}

#[test]
fn a_client_stream_reset_before_headers_is_retried_only_while_it_fits_the_copy() {
    let _serial = serial();
    let (mut node, _agent) = node(&["b1", "b2", "b3"], "");
    let all = ["b1", "b2", "b3"];
    let tell = |node: &mut GrpcNode, names: &[&str], marker: &str| {
        let line = format!("crash-after 3 {}", node.sandbox.dir().join(marker).display());
        for b in names {
            node.backend(b).send(&line).unwrap();
            node.backend(b).wait_for_log("control \"crash-after", Duration::from_secs(5)).unwrap();
        }
    };
    let crashed = |node: &mut GrpcNode, names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|b| node.backend(b).log().contains("crashing at message"))
            .map(|b| b.to_string())
            .collect()
    };

    // 5 × 1 KB: the first endpoint dies at the third message, before any response
    // headers; the copy holds all three, so another endpoint gets them and the rest.
    tell(&mut node, &all, "first");
    let small = run(&node, "upload", &["--count", "5", "--size", "1000", "--pause-ms", "100"]);
    let dead = crashed(&mut node, &all);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(small.ok() && small.intact && small.received == 5, "{small:?}");
    assert!(!small.backends.contains(&dead[0]), "answered by a survivor: {small:?}");

    // 5 × 30 KB: 90 KB sent before the crash outgrew the 64 KiB copy: not retried.
    let live: Vec<&str> = all.into_iter().filter(|b| *b != dead[0]).collect();
    node.wait_in_rotation(&live).unwrap();
    tell(&mut node, &live, "second");
    let before: Vec<(&str, u64)> = live.iter().map(|b| (*b, node.calls(b).unwrap())).collect();
    let big = run(&node, "upload", &["--count", "5", "--size", "30000", "--pause-ms", "100"]);
    assert_eq!(big.code, "Unavailable", "{big:?}");
    let dead_now = crashed(&mut node, &live);
    assert_eq!(dead_now.len(), 1, "{dead_now:?}");
    let (survivor, calls) = before.iter().find(|(b, _)| *b != dead_now[0]).unwrap();
    assert_eq!(node.calls(survivor).unwrap(), *calls, "{survivor} never saw the call: no retry");
}

#[test]
fn a_bidi_stream_stays_open_across_a_reload_and_another_endpoints_removal() {
    let _serial = serial();
    let all = ["b1", "b2", "b3"];
    let (node, agent) = node(&all, "");
    // One round trip every 50 ms for 8 s, on one stream.
    let hold = start(&node, "hold", &["--count", "8000", "--size", "100", "--pause-ms", "50"]);
    let on = first_backend(&hold, "reply");

    // A reload that changes the policy, then one that removes another endpoint.
    let reloaded = node.service(&all, "  retry:\n    attempts: 2\n");
    agent.write_config(&node.config(&reloaded)).unwrap();
    agent.proc().wait_for_log("config reloaded", Duration::from_secs(10)).unwrap();
    let others: Vec<&str> = all.into_iter().filter(|b| **b != *on).collect();
    let kept = [on.as_str(), others[0]];
    agent.write_config(&node.config(&node.service(&kept, "  retry:\n    attempts: 2\n"))).unwrap();
    let gone = "sockeye_endpoint_transitions_total{service=\"greeter\",state=\"gone\"}";
    wait_for("the removed endpoint gone", Duration::from_secs(10), || {
        (agent.metric(gone).ok()?? >= 1.0).then_some(())
    })
    .unwrap();
    assert!(!hold.log().contains("\"code\""), "the stream was still open after both changes");

    let report = finish(hold);
    println!("held: {report:?}");
    assert!(report.ok() && report.intact, "{report:?}");
    assert_eq!(report.backends, [on], "one stream, one endpoint: {report:?}");
    assert!(report.received >= 50, "{report:?}");
}

#[test]
fn a_server_stream_fails_promptly_when_its_endpoint_is_killed() {
    let _serial = serial();
    let (mut node, _agent) = node(&["b1", "b2"], "");
    let fetch = start(&node, "fetch", &["--count", "100000", "--size", "100", "--pause-ms", "10"]);
    let on = first_backend(&fetch, "chunk");
    let killed = monotonic_ns();
    node.kill_backend(&on);

    let report = finish(fetch);
    let after_ms = report.ended_ns.saturating_sub(killed) / 1_000_000;
    println!("the stream on {on} ended {after_ms} ms after the kill: {report:?}");
    assert_eq!(report.code, "Unavailable", "{report:?}");
    // A killed process's connections close at once; a vanished one's keepalive pings go
    // unanswered within 2 × 500 ms. Slack for a loaded machine.
    assert!(after_ms < 2_000, "{after_ms} ms");
}

#[test]
fn a_server_stream_on_a_draining_endpoint_runs_until_the_drain_deadline_then_ends_unavailable() {
    let _serial = serial();
    let policy = "  timeout:\n    drain: 2s\n";
    let (node, agent) = node(&["b1", "b2"], policy);
    let fetch = start(&node, "fetch", &["--count", "100000", "--size", "100", "--pause-ms", "10"]);
    let on = first_backend(&fetch, "chunk");
    let other = if on == "b1" { "b2" } else { "b1" };
    let removed = monotonic_ns();
    agent.write_config(&node.config(&node.service(&[other], policy))).unwrap();

    let (report, log) = finish_with_log(fetch);
    let after_ms = report.ended_ns.saturating_sub(removed) / 1_000_000;
    println!("the stream on {on} ended {after_ms} ms after its removal: {report:?}");
    assert_eq!(report.code, "Unavailable", "{report:?}");
    assert!(report.message.contains("went away"), "{report:?}");
    // The agent reads the file within 500 ms, then the drain runs its 2 s.
    assert!((1_900..5_000).contains(&after_ms), "{after_ms} ms");
    let late = log
        .lines()
        .filter_map(|l| l.strip_prefix("received ")?.split("t_ns=").nth(1)?.parse::<u64>().ok())
        .any(|t| t > removed + 1_000_000_000);
    assert!(late, "chunks kept coming while the endpoint drained");
}

/// The agent's resident memory, in KiB.
fn rss_kib(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.proc().pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_slow_reader_of_a_1_gib_server_stream_keeps_the_agent_small() {
    let _serial = serial();
    let (node, agent) = node(&["b1"], "");
    let baseline = rss_kib(&agent);
    // 16,384 chunks of 64 KiB, read at 64 MiB/s: slower than the backend makes them,
    // so flow control, not the agent's memory, must hold the difference.
    let flags = ["--count", "16384", "--size", "65536", "--read-rate", "67108864"];
    let fetch = start(&node, "fetch", &flags);
    let mut peak = baseline;
    wait_for("the 1 GiB stream to end", Duration::from_secs(300), || {
        peak = peak.max(rss_kib(&agent));
        fetch.log().contains("\"code\"").then_some(())
    })
    .unwrap();
    let report = finish(fetch);
    println!(
        "1 GiB read slowly in {} s: agent RSS {} MiB before, {} MiB at most ({report:?})",
        report.elapsed_ms / 1000,
        baseline / 1024,
        peak / 1024
    );
    assert!(report.ok() && report.intact && report.received == 16_384, "{report:?}");
    assert!(peak - baseline < 64 * 1024, "the agent grew by {} MiB", (peak - baseline) / 1024);
}

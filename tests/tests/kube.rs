//! `sockeye run --kube` against a stand-in API server that speaks the real list/watch
//! protocol: namespace opt-in enrolls this node's Pods (and only those), EndpointSlices
//! drive the endpoints' lifecycle, a terminated Pod's direct connections are destroyed,
//! odd objects are skipped, the API server going away and coming back (once, or
//! flapping) loses nothing, and an annotated Service in kernel mode drains.

use std::{net::SocketAddr, time::Duration};

use sandbox::{
    Agent, EchoNode, Pod, echo_node::ECHO_PORT, kernel_lb::wait_table, kube_api::FakeApi,
    monotonic_ns, node::NODE_IP4, wait_for, watch::Watch,
};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const VIP: &str = "10.96.0.10:7000";

fn namespace(name: &str, enabled: bool) -> Value {
    let labels = if enabled { json!({"sockeye.dev/proxy": "enabled"}) } else { json!({}) };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels}})
}

fn pod(pod: &Pod, namespace: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod.name, "namespace": namespace, "uid": uid(pod), "labels": {}},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": pod.ip4.to_string(),
                      "podIPs": [{"ip": pod.ip4.to_string()}]}})
}

fn uid(pod: &Pod) -> String {
    format!("0000-{}", pod.name)
}

fn echo_service() -> Value {
    let vip: SocketAddr = VIP.parse().unwrap();
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "echo", "namespace": "shop"},
           "spec": {"type": "ClusterIP", "clusterIP": vip.ip().to_string(),
                    "clusterIPs": [vip.ip().to_string()],
                    "ports": [{"name": "tcp", "port": vip.port(), "protocol": "TCP",
                               "targetPort": ECHO_PORT}]}})
}

/// The echo Service's slice: these Pods with these conditions.
fn echo_slice(endpoints: &[(&Pod, Value)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, conditions)| {
            json!({"addresses": [pod.ip4.to_string()], "conditions": conditions,
                   "nodeName": NODE,
                   "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod.name,
                                 "uid": uid(pod)}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "echo-abcde", "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": "echo"}},
           "addressType": "IPv4",
           "ports": [{"name": "tcp", "port": ECHO_PORT, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

fn terminating() -> Value {
    json!({"ready": false, "serving": true, "terminating": true})
}

/// The API server, listening on the node's loopback (where the agent runs).
fn start_api(node: &EchoNode) -> FakeApi {
    let listener = node.sandbox.node().run(|| std::net::TcpListener::bind("127.0.0.1:0"));
    FakeApi::start(listener.unwrap().unwrap()).unwrap()
}

fn start_agent(node: &EchoNode, api: &FakeApi) -> Agent {
    let vip: SocketAddr = VIP.parse().unwrap();
    node.sandbox.set_kube_proxy(&[node.service("echo", &vip.to_string(), &["b1", "b2"])]).unwrap();
    node.sandbox.start_agent_kube(&api.kubeconfig(), NODE).unwrap()
}

/// Whether `pod`'s connections to the VIP go through the agent (the backend sees the
/// node's address) rather than DNAT (it sees the Pod's).
fn steered(pod: &Pod) -> bool {
    let report = pod.probe(VIP.parse().unwrap(), 2, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    report.only_peer() == Some(NODE_IP4.to_string().as_str())
}

/// Waits until connections to the VIP reach exactly these backends.
fn wait_backends(pod: &Pod, backends: &[&str]) {
    wait_for(&format!("connections to reach only {backends:?}"), Duration::from_secs(10), || {
        let report = pod.probe(VIP.parse().unwrap(), 12, 4).unwrap();
        (report.failed == 0 && report.backend_names() == backends).then_some(())
    })
    .unwrap();
}

#[test]
fn labeling_a_namespace_enrolls_its_pods_on_this_node_and_only_those() {
    let _serial = sandbox::serial();
    let mut node = EchoNode::new(2).unwrap();
    node.sandbox.add_pod("dev1").unwrap();
    let api = start_api(&node);
    let (client, outsider, dev1) = (node.client(), node.outsider(), node.sandbox.pod("dev1"));
    let _pauses: Vec<_> =
        [client, outsider, dev1].iter().map(|p| p.start_pause(&uid(p)).unwrap()).collect();
    api.apply(namespace("shop", true)).unwrap();
    api.apply(namespace("dev", false)).unwrap();
    api.apply(pod(client, "shop", NODE)).unwrap();
    // In an opted-in namespace, but scheduled on another node.
    api.apply(pod(outsider, "shop", "node-2")).unwrap();
    api.apply(pod(dev1, "dev", NODE)).unwrap();
    api.apply(echo_service()).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();

    let agent = start_agent(&node, &api);
    assert!(steered(client), "{}", agent.log());
    assert!(!steered(outsider), "a Pod of another node is not enrolled");
    assert!(!steered(dev1), "a Pod of a namespace without the label is not enrolled");

    // A connection opened before enrollment (through DNAT) keeps working after it.
    let mut held = dev1.spawn(&["tcp-hold", "--to", VIP, "--count", "2"]).unwrap();
    held.wait_for_log("held 2", Duration::from_secs(5)).unwrap();
    api.apply(namespace("dev", true)).unwrap();
    wait_for("dev1 to be enrolled", Duration::from_secs(5), || steered(dev1).then_some(()))
        .unwrap();
    assert!(held.wait(Duration::from_millis(200)).is_err(), "{}", held.log());

    let mut opted_out = pod(dev1, "dev", NODE);
    opted_out["metadata"]["labels"] = json!({"sockeye.dev/proxy": "disabled"});
    api.apply(opted_out).unwrap();
    wait_for("dev1 to opt out", Duration::from_secs(5), || (!steered(dev1)).then_some(())).unwrap();
    assert!(held.wait(Duration::from_millis(200)).is_err(), "{}", held.log());

    api.apply(namespace("shop", false)).unwrap();
    wait_for("shop to leave", Duration::from_secs(5), || (!steered(client)).then_some(())).unwrap();
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.contains("labelSelector=sockeye.dev%2Fproxy%3Denabled")),
        "{requests:#?}"
    );
    assert!(requests.iter().any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-1")));
}

#[test]
fn endpoint_slices_drive_the_lifecycle_and_gone_pods_lose_their_direct_connections() {
    let _serial = sandbox::serial();
    let node = EchoNode::new(2).unwrap();
    let api = start_api(&node);
    let client = node.client();
    let _pause = client.start_pause(&uid(client)).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(namespace("shop", true)).unwrap();
    for p in [client, b1, b2] {
        api.apply(pod(p, "shop", NODE)).unwrap();
    }
    api.apply(echo_service()).unwrap();
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    let agent = start_agent(&node, &api);
    wait_backends(client, &["b1", "b2"]);

    // Serving and terminating: no new connections.
    api.apply(echo_slice(&[(b1, terminating()), (b2, ready())])).unwrap();
    wait_backends(client, &["b2"]);

    // Ready again, then b2's Pod is deleted: Draining before the slice says so.
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    wait_backends(client, &["b1", "b2"]);
    let mut deleting = pod(b2, "shop", NODE);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
    api.apply(deleting).unwrap();
    wait_backends(client, &["b1"]);

    // b1's Pod goes: the client's connections straight to it are destroyed.
    let b1_addr = b1.addr(ECHO_PORT).to_string();
    let mut direct = client.spawn(&["tcp-hold", "--to", &b1_addr, "--count", "5"]).unwrap();
    direct.wait_for_log("held 5", Duration::from_secs(5)).unwrap();
    let b2_addr = b2.addr(ECHO_PORT).to_string();
    let mut others = client.spawn(&["tcp-hold", "--to", &b2_addr, "--count", "2"]).unwrap();
    others.wait_for_log("held 2", Duration::from_secs(5)).unwrap();
    let event_at = monotonic_ns();
    api.apply(echo_slice(&[(b2, terminating())])).unwrap();
    direct.wait(Duration::from_secs(5)).unwrap();
    let ended = direct.wait_for_log("ended aborted=", Duration::from_secs(1)).unwrap();
    assert_eq!(ended, "ended aborted=5 eof=0", "{}", direct.log());
    let last = direct.wait_for_log("last ended at monotonic_ns=", Duration::from_secs(1)).unwrap();
    let last: u64 = last.rsplit('=').next().unwrap().parse().unwrap();
    let delay_ms = last.saturating_sub(event_at) as f64 / 1e6;
    println!("eviction: 5 sockets gone {delay_ms:.2} ms after the EndpointSlice event");
    assert!(delay_ms < 1000.0, "eviction took {delay_ms} ms (goal 10 ms)");
    assert!(others.wait(Duration::from_millis(200)).is_err(), "b2 is draining, not gone");
    let (_, metrics) = agent.admin_get("/metrics").unwrap();
    assert!(metrics.contains("sockeye_evictions_total{service=\"shop/echo:tcp\"} 5"), "{metrics}");
}

#[test]
fn odd_objects_are_skipped_and_the_api_server_going_away_loses_nothing() {
    let _serial = sandbox::serial();
    let node = EchoNode::new(2).unwrap();
    let mut api = start_api(&node);
    let client = node.client();
    let _pause = client.start_pause(&uid(client)).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(namespace("shop", true)).unwrap();
    api.apply(pod(client, "shop", NODE)).unwrap();
    api.apply(echo_service()).unwrap();
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    // Objects with missing or odd fields.
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "odd", "namespace": "shop"}, "spec": {"ports": "many"}}))
        .unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "no-uid", "namespace": "shop"}, "spec": {"nodeName": NODE}}))
        .unwrap();
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "odd-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "odd"}},
        "endpoints": [{"addresses": ["not-an-ip"]}]}))
        .unwrap();

    let agent = start_agent(&node, &api);
    wait_backends(client, &["b1", "b2"]);
    for object in ["shop/odd", "shop/no-uid", "shop/odd-1"] {
        agent.proc().wait_for_log(&format!("object={object}"), Duration::from_secs(1)).unwrap();
    }
    let lists_before = api.requests().iter().filter(|r| !r.contains("watch=")).count();

    // The API server goes away: the agent keeps what it knew.
    api.stop();
    agent.proc().wait_for_log("watch failed, retrying", Duration::from_secs(10)).unwrap();
    wait_backends(client, &["b1", "b2"]);
    let (status, _) = agent.admin_get("/healthz").unwrap();
    assert_eq!(status, 200);

    // While it is away b1 goes and the history is compacted: coming back, the
    // agent's watches get 410 Gone, list again, and learn of it.
    api.apply(echo_slice(&[(b2, ready())])).unwrap();
    api.compact();
    let listener = node.sandbox.node().run(|| std::net::TcpListener::bind(api.addr()));
    api.restart(listener.unwrap().unwrap()).unwrap();
    wait_backends(client, &["b2"]);
    let lists_after = api.requests().iter().filter(|r| !r.contains("watch=")).count();
    assert!(lists_after > lists_before, "relisted after 410 Gone");
    assert!(steered(client));
}

#[test]
fn a_flapping_api_server_fails_no_connection_and_changes_still_arrive() {
    let _serial = sandbox::serial();
    let node = EchoNode::new(2).unwrap();
    let mut api = start_api(&node);
    let client = node.client();
    let _pause = client.start_pause(&uid(client)).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(namespace("shop", true)).unwrap();
    api.apply(pod(client, "shop", NODE)).unwrap();
    api.apply(echo_service()).unwrap();
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    let _agent = start_agent(&node, &api);
    wait_backends(client, &["b1", "b2"]);

    let vip = VIP.parse().unwrap();
    let (mut connections, mut failed) = (0, 0);
    for _ in 0..5 {
        api.stop();
        let away = client.probe(vip, 40, 4).unwrap();
        let listener = node.sandbox.node().run(|| std::net::TcpListener::bind(api.addr()));
        api.restart(listener.unwrap().unwrap()).unwrap();
        let back = client.probe(vip, 40, 4).unwrap();
        connections += away.ok + away.failed + back.ok + back.failed;
        failed += away.failed + back.failed;
    }
    // After the flapping, a change still reaches the agent.
    api.apply(echo_slice(&[(b2, ready())])).unwrap();
    let changed = std::time::Instant::now();
    wait_backends(client, &["b2"]);
    println!(
        "API server down and up 5 times: {connections} connections, {failed} failed; a \
         change after it took effect in {:?}",
        changed.elapsed()
    );
    assert_eq!(failed, 0);
    assert!(steered(client));
}

#[test]
fn a_pid_that_no_longer_belongs_to_the_pod_never_enrolls_the_namespace_it_names_now() {
    let _serial = sandbox::serial();
    let node = EchoNode::new(2).unwrap();
    let api = start_api(&node);
    let (client, outsider) = (node.client(), node.outsider());
    let mut pause = client.start_pause(&uid(client)).unwrap();
    api.apply(namespace("shop", true)).unwrap();
    api.apply(pod(client, "shop", NODE)).unwrap();
    api.apply(echo_service()).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    let agent = start_agent(&node, &api);
    assert!(steered(client), "{}", agent.log());

    // The Pod's process goes and its PID now names a process of another namespace
    // and cgroup (here: the same process, moved), as after a PID is reused.
    let elsewhere =
        format!("become {} {}", outsider.netns().path().display(), node.sandbox.cgroup().display());
    pause.send(&elsewhere).unwrap();
    pause.wait_for_log("became", Duration::from_secs(5)).unwrap();
    // The API changes as it always does (b2 leaves), and discovery looks again.
    api.apply(echo_slice(&[(b1, ready())])).unwrap();
    wait_for("the client to be unenrolled", Duration::from_secs(10), || {
        (!steered(client)).then_some(())
    })
    .unwrap();
    assert!(!steered(outsider), "the other namespace was enrolled:\n{}", agent.log());
    assert!(agent.log().contains("netns=0"), "{}", agent.log());
}

#[test]
fn in_kernel_mode_a_draining_endpoint_keeps_its_connections_but_gets_no_new_ones() {
    let _serial = sandbox::serial();
    let node = EchoNode::new(2).unwrap();
    let api = start_api(&node);
    let client = node.client();
    let _pause = client.start_pause(&uid(client)).unwrap();
    let (b1, b2) = (node.sandbox.pod("b1"), node.sandbox.pod("b2"));
    api.apply(namespace("shop", true)).unwrap();
    api.apply(pod(client, "shop", NODE)).unwrap();
    let mut service = echo_service();
    service["metadata"]["annotations"] = json!({"sockeye.dev/tcp-mode": "kernel"});
    api.apply(service).unwrap();
    api.apply(echo_slice(&[(b1, ready()), (b2, ready())])).unwrap();
    let agent = start_agent(&node, &api);
    let spec = |backends: &[&str]| node.service("echo", VIP, backends);
    wait_table(&node, &spec(&["b1", "b2"]), &["b1", "b2"], Duration::from_secs(10)).unwrap();
    let mut held = Watch::start(client, VIP.parse().unwrap(), 10).unwrap();
    let (on_b1, on_b2) = (held.on("b1"), held.on("b2"));
    assert!(on_b1 > 0 && on_b2 > 0, "{:?}", held.backends);

    // b1 terminates: out of the kernel's table, its connections untouched.
    api.apply(echo_slice(&[(b1, terminating()), (b2, ready())])).unwrap();
    wait_table(&node, &spec(&["b2"]), &["b2"], Duration::from_secs(10)).unwrap();
    let picked = agent.counters().unwrap()["lb_picked"];
    let report = client.probe(VIP.parse().unwrap(), 50, 2).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ["b2"], "{report:?}");
    assert_eq!(agent.counters().unwrap()["lb_picked"], picked + 50, "straight to b2");
    let alive = held.check().unwrap();
    let want: std::collections::BTreeMap<String, usize> =
        [("b1".to_string(), on_b1), ("b2".to_string(), on_b2)].into();
    assert_eq!(alive, want, "{}", held.log());
    assert!(held.ended().is_empty(), "{}", held.log());
}

//! Kernel mode for TCP services (`tcp_mode: kernel`): connect4/6 send a connect to the
//! VIP straight to a Ready endpoint from a table the agent keeps in step with health,
//! outlier ejection and removal; fail open and restart as in relay mode.
//! Needs root: each test builds a sandbox node.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use proxy_common::map_names;
use sandbox::{
    EchoNode, ServiceSpec,
    echo_node::ECHO_PORT,
    kernel,
    kernel_lb::{FAST_HEALTH, in_mode, rolling_update, wait_table},
    serial,
    watch::Watch,
};

const VIP: &str = "10.96.0.10:7000";
const VIP6: &str = "[fd96::10]:7000";
const ALL: [&str; 3] = ["b1", "b2", "b3"];
const TABLE_WAIT: Duration = Duration::from_secs(10);

/// Three backends behind `vip` in kernel mode (with `policy`), the agent, and all three
/// in the kernel's table.
fn kernel_node(vip: &str, policy: &str) -> (EchoNode, ServiceSpec, sandbox::Agent) {
    let node = EchoNode::new(3).unwrap();
    let echo = in_mode(node.service("echo", vip, &ALL), "kernel", policy);
    let agent = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    wait_table(&node, &echo, &ALL, TABLE_WAIT).unwrap();
    (node, echo, agent)
}

/// 1,000 connects spread evenly, none through the agent, and each app sees the VIP.
fn spreads_evenly(vip: &str) {
    let (node, echo, agent) = kernel_node(vip, "");
    let report = node.client().probe(echo.vip, 1000, 4).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ALL, "{report:?}");
    for (backend, connects) in &report.backends {
        assert!((300..=366).contains(connects), "{backend}: {connects} of 1000, not 333 ± 10%");
    }
    // Straight from the client: the backends saw its own address (through the agent
    // they would see the node's), and the kernel picked every endpoint.
    let client = if echo.vip.is_ipv4() {
        node.client().ip4.to_string()
    } else {
        node.client().ip6.to_string()
    };
    assert_eq!(report.only_peer(), Some(client.as_str()), "{report:?}");
    let counters = agent.counters().unwrap();
    assert_eq!((counters["lb_picked"], counters["steered"]), (1000, 0), "{counters:?}");
    // getpeername() in the client shows the VIP it dialled.
    let remote: Vec<&String> = report.remote_addrs.keys().collect();
    assert_eq!(remote, [&echo.vip.to_string()], "{report:?}");
}

#[test]
fn kernel_mode_spreads_ipv4_connects_evenly_straight_to_the_endpoints() {
    spreads_evenly(VIP);
}

#[test]
fn kernel_mode_spreads_ipv6_connects_evenly_straight_to_the_endpoints() {
    spreads_evenly(VIP6);
}

#[test]
fn an_endpoint_that_fails_its_health_check_gets_no_new_connects_and_loses_its_connections() {
    let _serial = serial();
    let (mut node, echo, agent) = kernel_node(VIP, FAST_HEALTH);
    let mut held = Watch::start(node.client(), echo.vip, 30).unwrap();
    let on_b1 = held.on("b1");
    assert!(on_b1 > 0, "{:?}", held.backends);

    // b1's Pod loses its network: nothing answers it, nothing resets its connections.
    let b1 = node.sandbox.pod("b1").addr(ECHO_PORT);
    node.sandbox.remove_pod("b1").unwrap();
    let gone = wait_table(&node, &echo, &["b2", "b3"], Duration::from_secs(5)).unwrap();
    println!("b1 left the kernel's table {gone:?} after its network was cut");
    // One failed check (every 200 ms, 200 ms timeout) takes it out.
    assert!(gone < Duration::from_millis(1500), "{gone:?}");
    let picked_then = kernel::lb_connects(node.sandbox.pin_dir()).unwrap()[&(echo.vip, b1)].picked;

    // Its established connections are destroyed; the others carry bytes on.
    let ends = held.wait_ended("b1", Duration::from_secs(5)).unwrap();
    assert!(ends.iter().all(|e| e.contains("abort")), "{ends:?}\n{}", held.log());
    let alive = held.check().unwrap();
    let others: BTreeMap<String, usize> =
        ["b2", "b3"].iter().map(|b| (b.to_string(), held.on(b))).collect();
    assert_eq!(alive, others, "{}", held.log());
    let evictions = agent.metric("sockeye_evictions_total{service=\"echo\"}").unwrap();
    assert_eq!(evictions, Some(on_b1 as f64));

    let report = node.client().probe(echo.vip, 300, 4).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.backend_names(), ["b2", "b3"], "{report:?}");
    let picked_now = kernel::lb_connects(node.sandbox.pin_dir()).unwrap()[&(echo.vip, b1)].picked;
    assert_eq!(picked_now, picked_then, "connects sent to b1 after it failed its check");
}

#[test]
fn connects_the_kernel_saw_refused_eject_the_endpoint_before_any_check_fails() {
    let _serial = serial();
    // Checks every minute: only the kernel's view can take b1 out in time.
    let slow = "  health:\n    interval: 60s\n";
    let (mut node, echo, agent) = kernel_node(VIP, slow);
    node.stop_backend("b1");
    let first = node.client().probe(echo.vip, 60, 1).unwrap();
    assert!(first.failed > 0, "b1 refuses: {first:?}");
    let ejected = Instant::now();
    wait_table(&node, &echo, &["b2", "b3"], Duration::from_secs(3)).unwrap();
    println!(
        "{} connects refused, then b1 left the table {:?} later",
        first.failed,
        ejected.elapsed()
    );
    let state = agent.metric("sockeye_endpoints{service=\"echo\",state=\"ejected\"}").unwrap();
    assert_eq!(state, Some(1.0));
    let after = node.client().probe(echo.vip, 60, 2).unwrap();
    assert_eq!(after.failed, 0, "{after:?}");
}

#[test]
fn a_killed_agent_fails_open_and_its_successor_adopts_the_kernel_tables() {
    let _serial = serial();
    let (node, echo, mut agent) = kernel_node(VIP, "");
    let pin_dir = node.sandbox.pin_dir();
    let ids = |pin_dir| {
        [map_names::LB_SERVICES, map_names::LB_BACKENDS, map_names::LB_CONNECTS]
            .map(|name| kernel::map_id(pin_dir, name).unwrap())
    };
    let before = ids(pin_dir);
    assert_eq!(node.client().probe(echo.vip, 20, 2).unwrap().failed, 0);

    agent.proc().signal(libc::SIGKILL).unwrap();
    agent.proc_mut().wait(Duration::from_secs(5)).unwrap();
    // Nothing keeps the table in step with health any more: kube-proxy's path.
    let open = node.client().probe(echo.vip, 20, 2).unwrap();
    assert_eq!(open.failed, 0, "{open:?}");
    let counters = kernel::counters(pin_dir).unwrap();
    assert_eq!(counters["lb_picked"], 20, "{counters:?}");
    assert!(counters["skip_agent_dead"] >= 20, "{counters:?}");

    let config = node.agent_config(std::slice::from_ref(&echo));
    let next = node.sandbox.start_agent_named("agent-2", &config, &[]).unwrap();
    assert!(next.log().contains("adopting the maps a previous agent pinned"), "{}", next.log());
    assert_eq!(ids(pin_dir), before, "the same maps, adopted");
    wait_table(&node, &echo, &ALL, TABLE_WAIT).unwrap();
    let after = node.client().probe(echo.vip, 30, 2).unwrap();
    assert_eq!(after.failed, 0, "{after:?}");
    assert_eq!(kernel::counters(pin_dir).unwrap()["lb_picked"], 50);
}

#[test]
fn an_upgrade_in_place_keeps_every_connect_in_kernel_mode() {
    let _serial = serial();
    let (node, echo, mut old) = kernel_node(VIP, "");
    let vip = echo.vip.to_string();
    let args = ["tcp-probe", "--to", &vip, "--count", "1000000", "--concurrency", "2"];
    let mut load = node.client().spawn(&[&args[..], &["--duration-ms", "4000"]].concat()).unwrap();
    let pin_dir = node.sandbox.pin_dir();
    sandbox::wait_for("load", Duration::from_secs(5), || {
        (kernel::counters(pin_dir).ok()?["lb_picked"] > 100).then_some(())
    })
    .unwrap();

    let config = node.agent_config(std::slice::from_ref(&echo));
    let new = node.sandbox.start_agent_named("agent-2", &config, &[]).unwrap();
    assert!(new.log().contains("took the listeners over"), "{}", new.log());
    assert_eq!(old.proc_mut().wait(Duration::from_secs(10)).unwrap(), Some(0), "{}", old.log());
    load.wait(Duration::from_secs(20)).unwrap();
    let report = sandbox::probe::Report::parse(&load.log()).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let counters = kernel::counters(pin_dir).unwrap();
    println!("{} connects across the upgrade; kernel counters {counters:?}", report.ok);
    // As in relay mode, a rare connect during the hand-off meets no program at all and
    // takes DNAT (about one in several thousand here); none leaves kernel mode for the
    // agent or fails.
    let unseen = (report.ok as u64).saturating_sub(counters["lb_picked"]);
    assert!(unseen <= 10, "{unseen} connects met no program: {counters:?}");
    for why in ["steered", "skip_agent_dead", "skip_agent_stale", "lb_slot_missing"] {
        assert_eq!(counters[why], 0, "{why}: {counters:?}");
    }
}

#[test]
fn a_rolling_update_sends_no_connect_to_an_endpoint_after_its_health_check_fails() {
    let _serial = serial();
    let rolled = rolling_update("kernel", &|line| println!("{line}")).unwrap();
    println!("kernel mode, rolling update: {:?}", rolled.load);
    assert!(rolled.load.ok > 1000, "{:?}", rolled.load);
    for death in &rolled.deaths {
        println!("{death:?}");
        assert!(death.detected < Duration::from_millis(1500), "{death:?}");
        assert_eq!(death.sent_after, 0, "connects sent after the failed check: {death:?}");
    }
    // The only connects that fail are those sent to a Pod between its death and its
    // failed check, and those open on it when it died (two at a time).
    let sent_while_dead: u64 = rolled.deaths.iter().map(|d| d.sent_while_dead).sum();
    let open_at_death = 2 * rolled.deaths.len() as u64;
    assert!(rolled.load.failed as u64 <= sent_while_dead + open_at_death, "{rolled:?}");
}

#[test]
fn in_relay_mode_the_same_rolling_update_fails_no_connect() {
    let _serial = serial();
    let rolled = rolling_update("relay", &|line| println!("{line}")).unwrap();
    println!("relay mode, rolling update: {:?}", rolled.load);
    assert!(rolled.load.ok > 1000, "{:?}", rolled.load);
    // The agent retries a failed connect on another endpoint; only a connection open
    // on a Pod as it died (two at a time) can fail.
    assert!(rolled.load.errors.keys().all(|e| !e.starts_with("connect")), "{:?}", rolled.load);
    assert!(rolled.load.failed <= 2 * sandbox::kernel_lb::REPLACEMENTS.len(), "{:?}", rolled.load);
}

//! Liveness under load: the kernel tells a hung agent from a busy one. With both cores
//! saturated (busy loops beside the agent, and bytes streaming through it), no connect
//! fails open; a frozen agent still does, once its heartbeat is a second old
//! (`connect4.rs`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sandbox::{EchoNode, kernel, node::NODE_IP4, serial};

const ROUNDS: usize = 20;
const CONNECTS_PER_ROUND: usize = 25;

#[test]
fn a_busy_agent_on_a_saturated_node_is_never_taken_for_a_hung_one() {
    let _serial = serial();
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let (mirror, _mirror_proc) = node.mirror("b1", "10.96.0.11:7001").unwrap();
    let services = [echo.clone(), mirror.clone()];
    node.sandbox.set_kube_proxy(&services).unwrap();
    let agent = node.sandbox.start_agent(&node.agent_config(&services)).unwrap();
    let pin_dir = node.sandbox.pin_dir().to_path_buf();

    // A busy thread per core, and 1 GiB streaming through the agent meanwhile.
    let burn_ms = "60000";
    let _burn = node.outsider().spawn(&["cpu-burn", "--threads", "2", "--duration-ms", burn_ms]);
    let vip = mirror.vip.to_string();
    let args = ["tcp-stream", "--to", &vip, "--connections", "100", "--bytes", "10737418"];
    let _stream = node.client().spawn(&[&args[..], &["--chunk", "65536"]].concat()).unwrap();

    // The oldest heartbeat seen while the rounds run, sampled every 10 ms.
    let (oldest_ns, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (oldest_ns, done, pin_dir) = (oldest_ns.clone(), done.clone(), pin_dir.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(age) = kernel::heartbeat_age(&pin_dir) {
                    oldest_ns.fetch_max(age.as_nanos() as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let node_ip = NODE_IP4.to_string();
    for round in 0..ROUNDS {
        let report = node.client().probe(echo.vip, CONNECTS_PER_ROUND, 1).unwrap();
        let counters = agent.counters().unwrap();
        assert_eq!(report.failed, 0, "round {round}: {report:?}\n{counters:?}");
        let peer = report.only_peer();
        assert_eq!(peer, Some(node_ip.as_str()), "round {round}: {report:?}\n{counters:?}");
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let counters = agent.counters().unwrap();
    let oldest = Duration::from_nanos(oldest_ns.load(Ordering::Relaxed));
    println!("{ROUNDS} rounds of {CONNECTS_PER_ROUND} connects: oldest heartbeat {oldest:?}");
    for skipped in ["skip_agent_stale", "skip_agent_dead", "skip_agent_full"] {
        assert_eq!(counters[skipped], 0, "{skipped}: {counters:?}\n{}", agent.log());
    }
    assert!(counters["steered"] >= (ROUNDS * CONNECTS_PER_ROUND) as u64, "{counters:?}");
    let max_age = Duration::from_nanos(proxy_common::agent::HEARTBEAT_MAX_AGE_NS);
    assert!(oldest < max_age, "a heartbeat {oldest:?} old: the agent was nearly taken for hung");
    assert!(agent.log().contains("heartbeat thread at real-time priority"), "{}", agent.log());
}

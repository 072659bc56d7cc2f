//! Kernel mode for TCP services in a sandbox node: services in kernel mode, waiting for
//! the kernel's tables, and a rolling update of a TCP service under connect load.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use crate::{Agent, EchoNode, Proc, ServiceSpec, echo_node::ECHO_PORT, kernel, probe::Report};

/// Health checks that notice a dead endpoint within 400 ms: a connect every 200 ms
/// that may take 200 ms, and one failure is enough.
pub const FAST_HEALTH: &str = "  health:\n    interval: 200ms\n    timeout: 200ms\n    \
                               interval_jitter: 0ms\n    unhealthy_threshold: 1\n";

/// `spec` in `mode` (`kernel` or `relay`), with extra policy YAML (indented two spaces).
pub fn in_mode(mut spec: ServiceSpec, mode: &str, policy: &str) -> ServiceSpec {
    spec.policy = format!("  tcp_mode: {mode}\n{policy}");
    spec
}

/// Waits until the kernel's table for `spec`'s VIP holds exactly these backends' echo
/// ports; returns how long that took.
pub fn wait_table(
    node: &EchoNode,
    spec: &ServiceSpec,
    backends: &[&str],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let endpoints: Vec<SocketAddr> = backends
        .iter()
        .map(|b| {
            let pod = node.sandbox.pod(b);
            if spec.vip.is_ipv4() { pod.addr(ECHO_PORT) } else { pod.addr6(ECHO_PORT) }
        })
        .collect();
    wait_table_holds(node.sandbox.pin_dir(), spec.vip, &endpoints, timeout)
}

/// Waits until the kernel's table for `vip` holds exactly `endpoints`; returns how long
/// that took.
pub fn wait_table_holds(
    pin_dir: &Path,
    vip: SocketAddr,
    endpoints: &[SocketAddr],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut want = endpoints.to_vec();
    want.sort();
    crate::wait_for(&format!("the kernel's table for {vip} to hold {want:?}"), timeout, || {
        let tables = kernel::lb_tables(pin_dir).ok()?;
        (tables.get(&vip) == Some(&want)).then_some(())
    })?;
    Ok(started.elapsed())
}

/// How an old Pod dies in the rolling update.
#[derive(Clone, Copy, Debug)]
pub enum Dying {
    /// Its server is killed: new connects are refused.
    Kill,
    /// Its network is cut: connects to it hang.
    Cut,
}

/// The old Pods, their replacements and how each dies.
pub const REPLACEMENTS: [(&str, &str, Dying); 3] =
    [("b1", "n1", Dying::Kill), ("b2", "n2", Dying::Cut), ("b3", "n3", Dying::Kill)];

/// What a rolling update of a TCP service under connect load showed.
#[derive(Debug)]
pub struct Rolled {
    /// The client's connects over the whole update.
    pub load: Report,
    /// Per old Pod, in kernel mode: what the kernel did about its death.
    pub deaths: Vec<Death>,
}

/// One old Pod's death, as the kernel saw it.
#[derive(Debug)]
pub struct Death {
    pub pod: &'static str,
    pub how: Dying,
    /// How long after the death the kernel's table dropped it.
    pub detected: Duration,
    /// Connects the kernel sent to it while it was dead and still in the table.
    pub sent_while_dead: u64,
    /// Connects the kernel sent to it after it left the table (must be 0).
    pub sent_after: u64,
}

/// Replaces b1..b3 one by one with n1..n3 while an enrolled client connects to the
/// service (`mode`: kernel or relay) over and over, 2 at a time. Each new Pod joins the
/// endpoints; the old one dies abruptly (killed, or its network cut) and leaves the
/// endpoints only once its health check has failed.
pub fn rolling_update(mode: &str, say: &dyn Fn(&str)) -> anyhow::Result<Rolled> {
    let mut node = EchoNode::new(3)?;
    let mut live = vec!["b1", "b2", "b3"];
    let spec = |node: &EchoNode, live: &[&str]| {
        in_mode(node.service("echo", "10.96.0.10:7000", live), mode, FAST_HEALTH)
    };
    let agent = node.start_agent(&[spec(&node, &live)])?;
    wait_ready(&node, &agent, &spec(&node, &live), &live, mode)?;
    let vip = spec(&node, &live).vip.to_string();
    let load = node.client().spawn(&[
        "tcp-probe",
        "--to",
        &vip,
        "--count",
        "10000000",
        "--concurrency",
        "2",
        "--timeout-ms",
        "3000",
        "--duration-ms",
        "15000",
    ])?;
    let mut new_pods: Vec<Proc> = Vec::new();
    // Per old Pod: its address, and connects sent to it at its death and when it left
    // the table.
    let mut deaths = Vec::new();
    for (old, new, how) in REPLACEMENTS {
        new_pods.push(node.sandbox.add_pod(new)?.start_echo(ECHO_PORT)?);
        live.push(new);
        agent.write_config(&node.agent_config(&[spec(&node, &live)]))?;
        wait_ready(&node, &agent, &spec(&node, &live), &live, mode)?;
        let old_addr = node.sandbox.pod(old).addr(ECHO_PORT);
        let at_death = picked(&node, old_addr)?;
        match how {
            Dying::Kill => node.stop_backend(old),
            Dying::Cut => node.sandbox.remove_pod(old)?,
        }
        let died = Instant::now();
        live.retain(|b| *b != old);
        if mode == "kernel" {
            wait_table(&node, &spec(&node, &live), &live, Duration::from_secs(5))?;
            let detected = died.elapsed();
            say(&format!("{old} ({how:?}) left the kernel's table {detected:?} after its death"));
            deaths.push((old, how, detected, old_addr, at_death, picked(&node, old_addr)?));
        } else {
            wait_state(&agent, old_addr, "unhealthy")?;
            say(&format!("{old} ({how:?}) unhealthy {:?} after its death", died.elapsed()));
        }
        // Discovery catches up.
        agent.write_config(&node.agent_config(&[spec(&node, &live)]))?;
    }
    let mut load = load;
    load.wait(Duration::from_secs(30))?;
    let report = Report::parse(&load.log())?;
    let deaths = deaths
        .into_iter()
        .map(|(pod, how, detected, addr, at_death, at_drop)| {
            let sent_after = picked(&node, addr)? - at_drop;
            Ok(Death { pod, how, detected, sent_while_dead: at_drop - at_death, sent_after })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Rolled { load: report, deaths })
}

/// Connects the kernel sent to `endpoint` so far.
fn picked(node: &EchoNode, endpoint: SocketAddr) -> anyhow::Result<u64> {
    let connects = kernel::lb_connects(node.sandbox.pin_dir())?;
    Ok(connects.iter().filter(|((_, to), _)| *to == endpoint).map(|(_, s)| s.picked).sum())
}

/// Waits until `live` serve: in the kernel's table, or Ready in the agent.
fn wait_ready(
    node: &EchoNode,
    agent: &Agent,
    spec: &ServiceSpec,
    live: &[&str],
    mode: &str,
) -> anyhow::Result<()> {
    if mode == "kernel" {
        wait_table(node, spec, live, Duration::from_secs(10))?;
        return Ok(());
    }
    // A relay-mode service starts (and checks its endpoints) with its first connection.
    node.client().probe(spec.vip, 1, 1)?;
    for backend in live {
        wait_state(agent, node.sandbox.pod(backend).addr(ECHO_PORT), "ready")?;
    }
    Ok(())
}

/// Waits until `/debug/state` shows `endpoint` in `state`.
fn wait_state(agent: &Agent, endpoint: SocketAddr, state: &str) -> anyhow::Result<()> {
    crate::wait_for(&format!("{endpoint} to be {state}"), Duration::from_secs(10), || {
        let (_, body) = agent.admin_get("/debug/state").ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let services = json["services"].as_array()?;
        services
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .any(|e| e["addr"] == endpoint.to_string() && e["state"] == state)
            .then_some(())
    })
}

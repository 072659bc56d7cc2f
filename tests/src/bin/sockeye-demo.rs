//! `sockeye-demo` (run it with `cargo xtask demo`): a sandbox node with one enrolled
//! client Pod and three backends. It shows the kernel steering the client's connects to
//! a service VIP into the agent, a Pod that is not enrolled taking kube-proxy's DNAT
//! path, and the kernel failing open when the agent dies. Ctrl-C tears everything down.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sandbox::{
    EchoNode,
    node::{AGENT_IP4, AGENT_PORT, NODE_IP4},
    probe::Report,
    rolling,
};

const USAGE: &str = "\
sockeye-demo [--scenario all|rolling|steering] [--rate N] [--connections N]

  --scenario S      rolling: the field reports' rolling update of a gRPC backend
                    through kube-proxy's DNAT, through sockeye, and through sockeye
                    with hedging on, side by side;
                    steering: the kernel steering an enrolled Pod's connects into the
                    agent, a Pod that is not enrolled, and failing open when the agent
                    dies; all (the default): both
  --rate N          gRPC calls per second in the rolling update (default 500)
  --connections N   connections the enrolled client opens in the steering scenario
                    (default 300)

Builds sandbox nodes (network namespaces as Pods), runs the agent in them, drives
traffic, prints what happened, and removes everything (also on Ctrl-C). Needs root.
The rolling update's plot goes to results/rolling-update.svg.";

struct Args {
    rolling: bool,
    steering: bool,
    rate: u32,
    connections: usize,
}

const VIP: &str = "10.96.0.10:7000";
/// The kernel counters the demo explains, in the order of a connect's life.
const COUNTERS: [(&str, &str); 6] = [
    ("steered", "connects to the VIP rewritten to the agent"),
    ("orig_dst_filed", "original destinations filed for the agent by sockops"),
    ("skip_not_enrolled", "connects to the VIP from a namespace not enrolled"),
    ("skip_not_vip", "connects to other addresses (the agent's own, to backends)"),
    ("skip_agent_dead", "connects left alone because the agent's listener was closed"),
    ("skip_map_full", "connects left alone because a map was full"),
];
const BATCH: usize = 25;

fn main() {
    if let Err(err) = run() {
        eprintln!("demo: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    sandbox::catch_interrupt();
    let started = Instant::now();
    if args.rolling {
        rolling(args.rate)?;
    }
    if args.steering {
        steering(args.connections)?;
    }
    step(&format!("done; {:.1?} in all", started.elapsed()));
    Ok(())
}

/// The rolling update through both paths, side by side.
fn rolling(rate: u32) -> anyhow::Result<()> {
    let options = rolling::Options { rate, ..Default::default() };
    let mut results = Vec::new();
    for path in [rolling::Path::Dnat, rolling::Path::Sockeye, rolling::Path::SockeyeHedging] {
        check_interrupt()?;
        step(&format!(
            "rolling update of 3 gRPC backends, {rate} calls/s over one channel, through {}",
            path.name()
        ));
        let rolled = rolling::run(path, &options, &|line| println!("        {line}"))?;
        println!("        {} calls, {} failed", rolled.load.sent, rolled.load.failed);
        results.push((path, rolled));
    }
    println!();
    rolling::print_table(&results);
    let plot = rolling::plot(&results)?;
    println!();
    println!("plot: {}", plot.display());
    println!();
    Ok(())
}

/// Steering, an outsider, and failing open.
fn steering(connections: usize) -> anyhow::Result<()> {
    let started = Instant::now();

    step("building the sandbox node: Pods client (enrolled), outsider, b1, b2, b3");
    let node = EchoNode::new(3)?;
    let echo = node.service("echo", VIP, &["b1", "b2", "b3"]);
    println!("        service echo: VIP {VIP} -> {:?}", echo.endpoints);
    println!(
        "        kube-proxy stand-in: nftables DNAT {VIP} -> b1, b2, b3 in the node namespace"
    );

    step("starting the agent (sockeye run) in the node namespace");
    let mut agent = node.start_agent(std::slice::from_ref(&echo))?;
    println!(
        "        listening on {AGENT_IP4}:{AGENT_PORT}; programs attached to {}; pins in {}",
        node.sandbox.cgroup().display(),
        node.sandbox.pin_dir().display()
    );

    step(&format!("client (enrolled) opens {connections} connections to {VIP}"));
    let mut through_agent = Report::default();
    while through_agent.ok + through_agent.failed < connections {
        check_interrupt()?;
        let batch = BATCH.min(connections - through_agent.ok - through_agent.failed);
        merge(&mut through_agent, node.client().probe(echo.vip, batch, 5)?);
        progress(through_agent.ok + through_agent.failed, connections, through_agent.failed);
    }
    println!();

    step("outsider (not enrolled) opens 50 connections to the same VIP");
    check_interrupt()?;
    let outsider = node.outsider().probe(echo.vip, 50, 5)?;
    let kernel_before_kill = agent.counters()?;

    step("killing the agent (SIGKILL): the kernel must fail open to DNAT");
    agent.proc().signal(libc::SIGKILL)?;
    agent.proc_mut().wait(Duration::from_secs(5))?;
    let killed = Instant::now();
    let client_ip = node.client().ip4.to_string();
    let recovered = sandbox::wait_for("a connect through DNAT", Duration::from_secs(10), || {
        let report = node.client().probe(echo.vip, 1, 1).ok()?;
        (report.only_peer() == Some(client_ip.as_str())).then(|| killed.elapsed())
    })?;
    let after_kill = node.client().probe(echo.vip, 50, 5)?;
    let kernel = sandbox::kernel::counters(node.sandbox.pin_dir())?;

    println!();
    println!("== what happened ==");
    println!();
    println!("{:<34} {:>6} {:>6}  backends (connections)          path", "", "ok", "failed");
    row("client, agent alive", &through_agent);
    row("outsider (not enrolled)", &outsider);
    row("client, agent killed", &after_kill);
    println!();
    println!("The path column says how the backend saw the client: {NODE_IP4} means through");
    println!("the agent (it connects from the node); a Pod's own address means kube-proxy DNAT.");
    println!();
    println!("what the kernel counted while the agent was alive (per-CPU map SK_COUNTERS):");
    for (name, meaning) in COUNTERS {
        println!("    {name:<21} {:>6}  {meaning}", kernel_before_kill[name]);
    }
    println!("after the kill:  skip_agent_dead = {}", kernel["skip_agent_dead"]);
    println!("fail open: the first connect through DNAT succeeded {recovered:.0?} after SIGKILL");
    println!();
    let failed = through_agent.failed + outsider.failed + after_kill.failed;
    if failed > 0 {
        bail!("{failed} connections failed; logs are in {}", node.sandbox.dir().display());
    }
    step("tearing down the sandbox");
    drop(agent);
    drop(node);
    step(&format!("sandbox removed; steering scenario took {:.1?}", started.elapsed()));
    Ok(())
}

fn parse_args() -> anyhow::Result<Args> {
    let mut parsed = Args { rolling: true, steering: true, rate: 500, connections: 300 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--scenario" => match value()?.as_str() {
                "all" => (parsed.rolling, parsed.steering) = (true, true),
                "rolling" => (parsed.rolling, parsed.steering) = (true, false),
                "steering" => (parsed.rolling, parsed.steering) = (false, true),
                other => bail!("unknown scenario {other:?}\n\n{USAGE}"),
            },
            "--rate" => parsed.rate = value()?.parse().context("--rate takes a number")?,
            "--connections" => {
                parsed.connections = value()?.parse().context("--connections takes a number")?
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(parsed)
}

fn check_interrupt() -> anyhow::Result<()> {
    if sandbox::interrupted() {
        bail!("interrupted; the sandbox is being removed");
    }
    Ok(())
}

fn step(text: &str) {
    println!("demo: {text}");
}

fn progress(done: usize, total: usize, failed: usize) {
    let width = 30;
    let filled = done * width / total.max(1);
    print!(
        "\r        [{}{}] {done}/{total} connections, {failed} failed",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

fn merge(into: &mut Report, from: Report) {
    into.ok += from.ok;
    into.failed += from.failed;
    for (map, other) in [
        (&mut into.backends, from.backends),
        (&mut into.peers, from.peers),
        (&mut into.errors, from.errors),
    ] {
        for (key, n) in other {
            *map.entry(key).or_default() += n;
        }
    }
}

fn row(label: &str, report: &Report) {
    let backends: Vec<String> = report.backends.iter().map(|(b, n)| format!("{b}={n}")).collect();
    let paths: BTreeMap<&str, usize> = report.peers.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let path: Vec<String> = paths
        .keys()
        .map(|p| {
            if *p == NODE_IP4.to_string() { format!("{p} (agent)") } else { format!("{p} (DNAT)") }
        })
        .collect();
    println!(
        "{label:<34} {:>6} {:>6}  {:<32} {}",
        report.ok,
        report.failed,
        backends.join(" "),
        path.join(", ")
    );
}

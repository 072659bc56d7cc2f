//! `sockeye-bench` (run it with `cargo xtask bench`): sockeye measured against a
//! baseline in the same run, in a sandbox node. Results go to `results/<suite>.json`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sandbox::bench;

const USAGE: &str = "\
sockeye-bench [grpc] [peers] [accel] [tcp] [load] [scale] [--rate N] [--seconds S] [--rounds R]

  grpc          gRPC unary from an enrolled Pod: direct to a backend Pod vs through the
                agent to the same Pod; latency percentiles, agent CPU per 1k calls and
                RSS, and the maximum sustained rate of each path
  peers         the same load to a Service of three backends, side by side: direct to
                one Pod, kube-proxy DNAT, sockeye with hedging off and on, HAProxy and
                nginx: latency, the highest rate with p99 under 20 ms and under 5 ms,
                and per call each proxy's CPU (user, system), context switches and
                system calls (with perf), and the extra tries hedging sent; a markdown
                table, a plot and a profile of the agent (perf, folded stacks) in
                results/
  accel         the Pod→agent hop with socket acceleration off and on (round trips of
                100 bytes and 64 MiB streams over 8 connections, agent CPU), and connect
                latency: direct, sockeye's connect steering, an iptables REDIRECT rule
  tcp           a plain TCP service (a byte mirror) reached straight, through kube-proxy
                DNAT, in sockeye's kernel mode, and in relay mode with acceleration off
                and on: connects/s and connect latency, 100-byte round trips, stream
                throughput, agent CPU per 1k connections (median of --rounds)
                (no suite named: grpc, peers, accel, tcp)
  load          idle connections through the agent beside 5,000 gRPC calls/s for 60 s:
                failures, idle connections kept, agent RSS (run it by name)
  scale         a node of a big cluster: 100 and 10,000 Services of 10 endpoints known
                (static config, then the fake API server with 110 Pods on the node),
                100 used under light load: time to ready, RSS, idle CPU, connections
                to endpoints, EndpointSlice change to balancer p50/p99 beside 100 other
                changes a second; and evicting 100 sockets beside 100 and 10,000
                others (run it by name)
  --known N     the most Services known in the scale suite (default 10000)
  --rate N      calls per second in the latency rounds (default 1000)
  --seconds S   length of one latency round (default 5)
  --rounds R    latency rounds per path, interleaved (default 3)
  --idle N      idle connections in the load suite (default 9000: each takes two
                descriptors in the agent, and this machine's hard open-file limit is
                20,000 without CAP_SYS_RESOURCE, so 10,000 do not fit)

Needs root. Absolute numbers on a shared machine are noise: read the ratios.";

fn main() {
    if let Err(err) = run() {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let mut options = bench::grpc::Options {
        rate: 1000,
        round: Duration::from_secs(5),
        rounds: 3,
        ramp: vec![1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000],
    };
    let (mut grpc, mut peers, mut accel, mut tcp, mut load) = (false, false, false, false, false);
    let mut scale = false;
    let mut known = 10_000;
    let mut idle = 9_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "grpc" => grpc = true,
            "peers" => peers = true,
            "accel" => accel = true,
            "tcp" => tcp = true,
            "load" => load = true,
            "scale" => scale = true,
            "--known" => known = value("--known")?.parse()?,
            "--rate" => options.rate = value("--rate")?.parse()?,
            "--seconds" => options.round = Duration::from_secs(value("--seconds")?.parse()?),
            "--rounds" => options.rounds = value("--rounds")?.parse()?,
            "--idle" => idle = value("--idle")?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if !grpc && !peers && !accel && !tcp && !load && !scale {
        (grpc, peers, accel, tcp) = (true, true, true, true);
    }
    if grpc {
        let results = bench::grpc::run(&options)?;
        bench::grpc::print(&results);
        let path = bench::save("bench-grpc", &results)?;
        println!("\nresults saved to {}\n", path.display());
    }
    if peers {
        let peers_options = bench::peers::Options {
            rate: options.rate,
            round: options.round,
            ramp: options.ramp.clone(),
        };
        let outcome = bench::peers::run(&peers_options)?;
        let mut table = bench::peers::table(&outcome.paths);
        println!("\n== gRPC unary at {} calls/s to 3 backends ==\n\n{table}", options.rate);
        let path = bench::save("bench-peers", &outcome.paths)?;
        let dir = path.parent().expect("a results folder");
        if let Some(profile) = &outcome.profile {
            let summary = bench::peers::profile_summary(profile, options.rate);
            println!("{summary}");
            table.push_str(&summary);
            std::fs::write(dir.join("sockeye-profile.folded"), profile.folded())?;
        }
        std::fs::write(dir.join("bench-peers.md"), &table)?;
        let plot = bench::peers::plot(&outcome.paths, &options.ramp);
        std::fs::write(dir.join("bench-peers.svg"), plot)?;
        let profiled = if outcome.profile.is_some() { ", sockeye-profile.folded" } else { "" };
        println!(
            "results saved to {} (and bench-peers.md, bench-peers.svg{profiled})",
            path.display()
        );
    }
    if accel {
        let accel_options = bench::accel::Options { round: options.round, connections: 8 };
        let results = bench::accel::run(&accel_options)?;
        let table = bench::accel::table(&results);
        println!("\n== socket acceleration and connect steering ==\n\n{table}");
        let path = bench::save("bench-accel", &results)?;
        std::fs::write(path.with_extension("md"), &table)?;
        println!("results saved to {} (and bench-accel.md)", path.display());
    }
    if tcp {
        let tcp_options = bench::tcp::Options {
            round: options.round,
            connections: 8,
            connects: 5000,
            rounds: options.rounds,
        };
        let results = bench::tcp::run(&tcp_options)?;
        let table = bench::tcp::table(&results);
        println!("\n== a plain TCP service: direct, DNAT, kernel mode, relay mode ==\n\n{table}");
        let path = bench::save("bench-tcp", &results)?;
        std::fs::write(path.with_extension("md"), &table)?;
        println!("results saved to {} (and bench-tcp.md)", path.display());
    }
    if load {
        let scale = bench::load::Scale { idle, rate: 5_000, duration: Duration::from_secs(60) };
        let outcome = bench::load::run(scale)?;
        let table = bench::load::table(&outcome);
        println!("\n== idle connections beside steady load ==\n\n{table}");
        let path = bench::save("bench-load", &outcome)?;
        std::fs::write(path.with_extension("md"), &table)?;
        println!("results saved to {} (and bench-load.md)", path.display());
    }
    if scale {
        let options = bench::scale::Options {
            known: vec![100.min(known), known],
            used: 100,
            changes: 1_000,
            background_rate: 100,
            window: Duration::from_secs(20),
        };
        let runs = bench::scale::run(&options)?;
        let evictions = vec![bench::scale::eviction(100, 5)?, bench::scale::eviction(10_000, 5)?];
        let table = bench::scale::table(&runs, &evictions);
        println!("\n== a node of a big cluster ==\n\n{table}");
        let results = serde_json::json!({"runs": runs, "evictions": evictions});
        let path = bench::save("bench-scale", &results)?;
        std::fs::write(path.with_extension("md"), &table)?;
        println!("results saved to {} (and bench-scale.md)", path.display());
    }
    Ok(())
}

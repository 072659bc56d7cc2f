//! The peers suite: the same gRPC unary load from a Pod to a Service of three
//! backends, side by side in one sandbox: straight to one Pod (the physical limit),
//! kube-proxy's DNAT, sockeye (hedging off, the default, then on), HAProxy and nginx
//! (both from Debian's packages, HTTP/2 on both sides, configured as
//! docs/benchmarks.md shows). For sockeye it also counts the extra tries the agent
//! sent (retries and hedges) as a share of the calls.

use std::{net::SocketAddr, process::Command, time::Duration};

use serde::Serialize;

use super::{Usage, load, ramp, ratio, say};
use crate::{
    GrpcNode, Proc, extra::ExtraLoad, grpc::load::Percentiles, grpc_node::GRPC_PORT,
    node::NODE_IP4, rolling::HEDGING,
};

const HAPROXY_PORT: u16 = 9000;
const NGINX_PORT: u16 = 9001;
/// sockeye with the service's `hedge` block on (every setting its default).
const SOCKEYE_HEDGING: &str = "sockeye, hedging";

pub struct Options {
    pub rate: u32,
    pub round: Duration,
    pub ramp: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct PathResult {
    pub path: &'static str,
    pub latency_us: Percentiles,
    pub failed: u64,
    /// CPU seconds per 1,000 calls of the proxy's processes (none for direct and DNAT).
    pub cpu_seconds_per_1k: Option<f64>,
    pub rss_kib: Option<u64>,
    /// sockeye: retries and hedges sent, as a share of the calls of the round.
    pub extra_load: Option<f64>,
    pub max_rate: u32,
    /// p99 at each rate of the ramp, until the first rate not sustained.
    pub ramp_p99_us: Vec<(u32, u64)>,
}

pub fn run(options: &Options) -> anyhow::Result<Vec<PathResult>> {
    say("building the sandbox: client (enrolled), outsider, backends b1-b3, agent, HAProxy, nginx");
    let mut node = GrpcNode::new(3)?;
    node.sandbox.add_pod("outsider")?;
    let service = node.service(&["b1", "b2", "b3"], "");
    let agent = node.start_agent(&service)?;
    node.wait_in_rotation(&["b1", "b2", "b3"])?;
    let backends: Vec<SocketAddr> = service.endpoints.clone();
    let haproxy = start_haproxy(&node, &backends)?;
    let nginx = start_nginx(&node, &backends)?;

    let paths: [(&'static str, &str, SocketAddr, Vec<u32>); 6] = [
        ("direct", "client", node.sandbox.pod("b1").addr(GRPC_PORT), vec![]),
        ("kube-proxy DNAT", "outsider", service.vip, vec![]),
        ("sockeye", "client", service.vip, vec![agent.proc().pid()]),
        (SOCKEYE_HEDGING, "client", service.vip, vec![agent.proc().pid()]),
        ("HAProxy", "client", SocketAddr::from((NODE_IP4, HAPROXY_PORT)), vec![haproxy.pid()]),
        ("nginx", "client", SocketAddr::from((NODE_IP4, NGINX_PORT)), process_tree(nginx.pid())),
    ];
    let mut results = Vec::new();
    for (path, from, to, pids) in paths {
        if path == SOCKEYE_HEDGING {
            agent.apply_config(&node.config(&node.service(&["b1", "b2", "b3"], HEDGING)))?;
        }
        say(&format!("{path}: warm-up, then {} calls/s for {:?}", options.rate, options.round));
        let pod = node.sandbox.pod(from);
        load(pod, to, 500, Duration::from_secs(1))?;
        let (before, extra) = (usage(&pids)?, ExtraLoad::read(&agent, &service.name)?);
        let report = load(pod, to, options.rate, options.round)?;
        let after = usage(&pids)?;
        let extra = ExtraLoad::read(&agent, &service.name)?.since(&extra);
        let through_agent = to == service.vip && from == "client";
        let cpu = (!pids.is_empty())
            .then(|| ratio(after.cpu_seconds - before.cpu_seconds, report.ok as f64 / 1000.0));
        let (max_rate, ramp_p99_us) = ramp(pod, to, &options.ramp, path)?;
        results.push(PathResult {
            path,
            latency_us: report.latency_us,
            failed: report.failed,
            cpu_seconds_per_1k: cpu,
            rss_kib: (!pids.is_empty()).then_some(after.rss_kib),
            extra_load: through_agent.then(|| extra.share()),
            max_rate,
            ramp_p99_us,
        });
    }
    drop((haproxy, nginx, agent));
    Ok(results)
}

/// The markdown table of the results, latency added over the direct path.
pub fn table(results: &[PathResult]) -> String {
    let direct = &results[0].latency_us;
    let mut md = String::from(
        "| path | p50 µs | p99 µs | p999 µs | added p50 | added p99 | added p999 | failed | max rate/s | CPU s per 1k calls | RSS MiB | extra tries |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let p = &r.latency_us;
        let added = |a: u64, d: u64| a.saturating_sub(d);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.path,
            p.p50,
            p.p99,
            p.p999,
            added(p.p50, direct.p50),
            added(p.p99, direct.p99),
            added(p.p999, direct.p999),
            r.failed,
            r.max_rate,
            r.cpu_seconds_per_1k.map_or("-".into(), |c| format!("{c:.3}")),
            r.rss_kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            r.extra_load.map_or("-".into(), |e| format!("{:.1}%", e * 100.0)),
        ));
    }
    md
}

/// p99 over the ramp, one line per path, as an SVG.
pub fn plot(results: &[PathResult], ramp: &[u32]) -> String {
    const COLORS: [&str; 6] = ["gray", "#d62728", "#1f77b4", "#17becf", "#2ca02c", "#9467bd"];
    let series: Vec<crate::plot::Series> = results
        .iter()
        .zip(COLORS)
        .map(|(r, color)| crate::plot::Series {
            name: r.path,
            color,
            dashed: false,
            values: r.ramp_p99_us.iter().map(|(_, p99)| *p99 as f64 / 1000.0).collect(),
        })
        .collect();
    let steps: Vec<String> = ramp.iter().map(u32::to_string).collect();
    crate::plot::lines(
        "gRPC unary p99 by offered rate (3 backends)",
        &format!("ramp step (calls/s: {})", steps.join(", ")),
        "p99 ms",
        &series,
    )
}

fn usage(pids: &[u32]) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    for pid in pids {
        let u = Usage::of(*pid)?;
        total.cpu_seconds += u.cpu_seconds;
        total.rss_kib += u.rss_kib;
        total.peak_rss_kib += u.peak_rss_kib;
    }
    Ok(total)
}

/// A process and its children (nginx's master and workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
}

fn start_haproxy(node: &GrpcNode, backends: &[SocketAddr]) -> anyhow::Result<Proc> {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server b{} {b} proto h2 check inter 1s\n", i + 1))
        .collect();
    let config = format!(
        "global\n  nbthread 2\n  log stderr format raw local0 err\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         frontend grpc\n  bind {NODE_IP4}:{HAPROXY_PORT} proto h2\n  default_backend backends\n\
         backend backends\n  balance roundrobin\n{servers}"
    );
    let path = node.sandbox.dir().join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&path);
    let proc = node.sandbox.spawn_in_node("haproxy", command)?;
    wait_listening(node, HAPROXY_PORT, &proc)?;
    Ok(proc)
}

fn start_nginx(node: &GrpcNode, backends: &[SocketAddr]) -> anyhow::Result<Proc> {
    let dir = node.sandbox.dir();
    let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
    let config = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log stderr error;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
         upstream backends {{\n{servers}    keepalive 32;\n  }}\n\
         server {{\n    listen {NODE_IP4}:{NGINX_PORT} http2;\n    location / {{ grpc_pass grpc://backends; }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new("nginx");
    command.arg("-c").arg(&path).arg("-e").arg("stderr");
    let proc = node.sandbox.spawn_in_node("nginx", command)?;
    wait_listening(node, NGINX_PORT, &proc)?;
    Ok(proc)
}

/// Waits until something accepts on the node's `port`.
fn wait_listening(node: &GrpcNode, port: u16, proc: &Proc) -> anyhow::Result<()> {
    let addr = SocketAddr::from((NODE_IP4, port));
    crate::wait_for(&format!("{} on {addr}", proc.name()), Duration::from_secs(10), || {
        node.sandbox.node().run(|| std::net::TcpStream::connect(addr).is_ok()).ok().filter(|ok| *ok)
    })
    .map_err(|e| anyhow::anyhow!("{e}: {}", proc.log()))?;
    Ok(())
}

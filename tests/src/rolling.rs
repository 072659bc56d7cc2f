//! The rolling update of the field reports, replayed in a sandbox node: an enrolled
//! client sends unary gRPC calls at a fixed rate over one long-lived HTTP/2 channel to
//! a Service of three backends, and each backend is replaced by a new Pod that refuses
//! connections, then reports NOT_SERVING, before it serves (field report 3). The old
//! Pods die abruptly, by SIGKILL or frozen with SIGSTOP and their network removed
//! (report 1), and the endpoint list catches up only a second after each death.
//! Through sockeye it runs with hedging off (the default) or on.

use std::time::{Duration, Instant};

use crate::{
    GrpcNode,
    extra::ExtraLoad,
    grpc::load::LoadReport,
    grpc_node::{GRPC_VIP, finish_load},
    plot::Series,
};

/// The path the client's calls take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// kube-proxy's: nftables DNAT from the VIP to a Pod, per connection.
    Dnat,
    /// sockeye's: the kernel steers the client to the agent, which balances each call.
    Sockeye,
    /// sockeye's, with the service's `hedge` block on: a call still unanswered after
    /// most calls' time goes to a second endpoint as well.
    SockeyeHedging,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Dnat => "kube-proxy DNAT",
            Path::Sockeye => "sockeye",
            Path::SockeyeHedging => "sockeye, hedging",
        }
    }

    /// The service's policy YAML on this path.
    fn policy(self) -> &'static str {
        match self {
            Path::SockeyeHedging => HEDGING,
            Path::Dnat | Path::Sockeye => "",
        }
    }
}

/// Hedging on, every other setting its default.
pub const HEDGING: &str = "  hedge:\n    enabled: true\n";

pub struct Options {
    pub rate: u32,
    /// How long a new Pod refuses connections, then how long it is NOT_SERVING.
    pub refuse: Duration,
    pub not_serving: Duration,
    /// How long after a Pod's death its endpoint leaves the Service.
    pub removal_lag: Duration,
    /// Per-call deadline, as the client sets it.
    pub call_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate: 500,
            refuse: Duration::from_secs(2),
            not_serving: Duration::from_secs(2),
            removal_lag: Duration::from_secs(1),
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// The old Pods and how each dies.
const REPLACEMENTS: [(&str, &str, Death); 3] =
    [("b1", "n1", Death::Kill), ("b2", "n2", Death::Freeze), ("b3", "n3", Death::Kill)];
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
enum Death {
    Kill,
    Freeze,
}

/// What one run saw: the client's report, and through sockeye the agent's extra tries.
pub struct Rolled {
    pub load: LoadReport,
    pub extra: Option<ExtraLoad>,
    /// When the frozen Pod froze and when it left the endpoints, from the load's start.
    pub frozen: (Duration, Duration),
}

/// Runs the whole update along `path`; `say` gets one line per step.
pub fn run(path: Path, options: &Options, say: &dyn Fn(&str)) -> anyhow::Result<Rolled> {
    let mut node = GrpcNode::new(3)?;
    let service = node.service(&["b1", "b2", "b3"], path.policy());
    node.sandbox.set_kube_proxy(std::slice::from_ref(&service))?;
    let agent = match path {
        Path::Sockeye | Path::SockeyeHedging => {
            let agent = node.start_agent(&service)?;
            node.wait_in_rotation(&["b1", "b2", "b3"])?;
            Some(agent)
        }
        Path::Dnat => None,
    };

    let per_step =
        Duration::from_secs(1) + options.removal_lag + options.refuse + options.not_serving;
    let duration = SETTLE * 2 + (per_step + SETTLE) * REPLACEMENTS.len() as u32;
    let timeout = options.call_timeout.as_millis().to_string();
    let load = node.client().start_grpc_load_with(
        GRPC_VIP.parse().expect("a valid VIP"),
        options.rate,
        duration,
        &["--timeout-ms", &timeout],
    )?;
    let started = Instant::now();
    let at = |what: &str| say(&format!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64()));
    std::thread::sleep(SETTLE);

    let refuse = options.refuse.as_millis().to_string();
    let not_serving = options.not_serving.as_millis().to_string();
    let mut live = vec!["b1", "b2", "b3"];
    let mut frozen = (Duration::ZERO, Duration::ZERO);
    for (old, new, death) in REPLACEMENTS {
        node.add_backend(new, &["--refuse-ms", &refuse, "--not-serving-ms", &not_serving])?;
        live.push(new);
        node.set_endpoints(&live, path.policy(), agent.as_ref())?;
        at(&format!(
            "{new} starts (refuses {:?}, then NOT_SERVING {:?}) and joins the endpoints",
            options.refuse, options.not_serving
        ));
        std::thread::sleep(Duration::from_secs(1));
        let died = started.elapsed();
        kill(&mut node, old, death, &at)?;
        std::thread::sleep(options.removal_lag);
        live.retain(|b| *b != old);
        node.set_endpoints(&live, path.policy(), agent.as_ref())?;
        at(&format!("{old} leaves the endpoints"));
        if matches!(death, Death::Freeze) {
            frozen = (died, started.elapsed());
        }
        node.wait_serving(new)?;
        at(&format!("{new} serves"));
        std::thread::sleep(SETTLE);
    }
    at("update done; load runs out");
    let load = finish_load(load)?;
    let extra = agent.as_ref().map(|a| ExtraLoad::read(a, &service.name)).transpose()?;
    drop(agent);
    Ok(Rolled { load, extra, frozen })
}

fn kill(node: &mut GrpcNode, name: &str, death: Death, at: &dyn Fn(&str)) -> anyhow::Result<()> {
    match death {
        Death::Kill => {
            node.kill_backend(name);
            at(&format!("{name} killed (SIGKILL)"));
        }
        Death::Freeze => {
            node.backend(name).signal(libc::SIGSTOP)?;
            at(&format!("{name} frozen (SIGSTOP)"));
            std::thread::sleep(Duration::from_millis(300));
            node.remove_backend_pod(name)?;
            at(&format!("{name}'s network removed"));
        }
    }
    Ok(())
}

/// The side-by-side table of the runs.
pub fn print_table(results: &[(Path, Rolled)]) {
    println!(
        "{:<17} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>13}  failure kinds",
        "path", "calls", "ok", "failed", "p50 ms", "p99 ms", "max ms", "hedged (won)"
    );
    for (path, Rolled { load: r, extra, .. }) in results {
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        let mut kinds: Vec<(&String, &u64)> = r.errors.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        let kinds: Vec<String> = kinds.iter().take(3).map(|(k, n)| format!("{n}× {k}")).collect();
        let hedged = extra.map_or("-".into(), |e| format!("{} ({})", e.hedges, e.won));
        println!(
            "{:<17} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>13}  {}",
            path.name(),
            r.sent,
            r.ok,
            r.failed,
            ms(r.latency_us.p50),
            ms(r.latency_us.p99),
            ms(r.latency_us.max),
            hedged,
            if kinds.is_empty() { "none".into() } else { kinds.join("; ") }
        );
    }
}

/// Successful and failed calls per second of each run, as an SVG under `results/`.
pub fn plot(results: &[(Path, Rolled)]) -> anyhow::Result<std::path::PathBuf> {
    const COLORS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];
    let mut series = Vec::new();
    let names: Vec<(String, String)> = results
        .iter()
        .map(|(p, _)| (format!("{} ok", p.name()), format!("{} failed", p.name())))
        .collect();
    for (((_, rolled), (ok, failed)), color) in results.iter().zip(&names).zip(COLORS) {
        let per_second = |f: fn(&crate::grpc::load::Second) -> u64| -> Vec<f64> {
            rolled.load.timeline.iter().map(|s| f(s) as f64).collect()
        };
        series.push(Series { name: ok, color, dashed: false, values: per_second(|s| s.ok) });
        series.push(Series { name: failed, color, dashed: true, values: per_second(|s| s.failed) });
    }
    let svg = crate::plot::lines(
        "Rolling update of a gRPC backend: calls per second",
        "seconds",
        "calls per second",
        &series,
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("rolling-update.svg");
    std::fs::write(&path, svg)?;
    Ok(path.canonicalize()?)
}

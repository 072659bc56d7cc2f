//! `cargo xtask bench`: measurements that compare sockeye with a baseline in the same
//! run. Absolute numbers on a shared machine are noise; the ratios are the result.

pub mod accel;
pub mod grpc;
pub mod load;
pub mod peers;
pub mod scale;
pub mod tcp;

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{Pod, grpc::load::LoadReport, grpc_node::finish_load};

/// A rate is sustained when every call succeeds and p99 stays under this.
pub const SUSTAINED_P99_US: u64 = 20_000;

/// Open-loop load from `pod` to `to` for `duration`, and its report.
pub fn load(
    pod: &Pod,
    to: SocketAddr,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let proc = pod.start_grpc_load_with(to, rate, duration, &["--max-in-flight", "2000"])?;
    finish_load(proc)
}

/// Runs each rate of `rates` for 2 s until one is not sustained: the highest rate
/// sustained, and p99 at each rate tried.
pub fn ramp(
    pod: &Pod,
    to: SocketAddr,
    rates: &[u32],
    path: &str,
) -> anyhow::Result<(u32, Vec<(u32, u64)>)> {
    let (mut best, mut points) = (0, Vec::new());
    for &rate in rates {
        let r = load(pod, to, rate, Duration::from_secs(2))?;
        points.push((rate, r.latency_us.p99));
        let sustained = r.failed == 0 && r.latency_us.p99 < SUSTAINED_P99_US;
        say(&format!(
            "{path}: {rate} calls/s -> p99 {} µs, {} failed{}",
            r.latency_us.p99,
            r.failed,
            if sustained { "" } else { " (not sustained)" }
        ));
        if !sustained {
            break;
        }
        best = rate;
    }
    Ok((best, points))
}

/// Progress, on stderr.
pub fn say(line: &str) {
    eprintln!("bench: {line}");
}

/// What the kernel says a process has used.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, and its peak, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line; 12 and 13 after `) `.
        let ticks: u64 =
            fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            cpu_seconds: ticks as f64 / crate::sys::clock_ticks_per_second() as f64,
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        })
    }
}

/// Writes a suite's results as JSON under `results/` of the workspace.
pub fn save(name: &str, results: &impl serde::Serialize) -> anyhow::Result<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(results)?)?;
    Ok(path.canonicalize()?)
}

/// `a / b`, or 0 when there is no baseline.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

//! `cargo xtask bench`: measurements that compare sockeye with a baseline in the same
//! run. Absolute numbers on a shared machine are noise; the ratios are the result.

pub mod accel;
pub mod grpc;
pub mod load;
pub mod peers;
pub mod perf;
pub mod profile;
pub mod scale;
pub mod tcp;
pub mod usage;

use std::{net::SocketAddr, path::Path, time::Duration};

pub use usage::Usage;

use crate::{Pod, Proc, grpc::load::LoadReport, grpc_node::finish_load};

/// A rate is sustained when every call succeeds and p99 stays under this (the ramp
/// stops at the first rate that is not; a suite may judge its steps by a tighter bound).
pub const SUSTAINED_P99_US: u64 = 20_000;

/// Open-loop load from `pod` to `to` for `duration`, and its report.
pub fn load(
    pod: &Pod,
    to: SocketAddr,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    finish_load(start_load(pod, to, rate, duration)?)
}

/// [`load`], started: finish it with [`finish_load`].
pub fn start_load(
    pod: &Pod,
    to: SocketAddr,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Proc> {
    pod.start_grpc_load_with(to, rate, duration, &["--max-in-flight", "2000"])
}

/// Runs each rate of `rates` for 2 s until one is not sustained (under
/// [`SUSTAINED_P99_US`]): every step tried.
pub fn ramp(pod: &Pod, to: SocketAddr, rates: &[u32], path: &str) -> anyhow::Result<Ramp> {
    let mut steps = Vec::new();
    for &rate in rates {
        let r = load(pod, to, rate, Duration::from_secs(2))?;
        steps.push(Step { rate, p99_us: r.latency_us.p99, failed: r.failed });
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
    }
    Ok(Ramp { steps })
}

/// The steps of a ramp, in the order tried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ramp {
    pub steps: Vec<Step>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub rate: u32,
    pub p99_us: u64,
    pub failed: u64,
}

impl Ramp {
    /// The highest rate before the first step that failed a call or had p99 at or over
    /// `p99_limit_us` (0 when the first step did). The ramp stops at
    /// [`SUSTAINED_P99_US`], so a limit above it answers as that one does.
    pub fn max_rate(&self, p99_limit_us: u64) -> u32 {
        let sustained = |s: &&Step| s.failed == 0 && s.p99_us < p99_limit_us;
        self.steps.iter().take_while(sustained).last().map_or(0, |s| s.rate)
    }

    /// p99 at each rate tried.
    pub fn p99_us(&self) -> Vec<(u32, u64)> {
        self.steps.iter().map(|s| (s.rate, s.p99_us)).collect()
    }
}

/// Progress, on stderr.
pub fn say(line: &str) {
    eprintln!("bench: {line}");
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

#[cfg(test)]
mod tests {
    use super::{Ramp, Step};

    #[test]
    fn max_rate_is_the_last_step_before_the_first_over_the_limit() {
        let step = |rate, p99_us, failed| Step { rate, p99_us, failed };
        let ramp = Ramp {
            steps: vec![
                step(1000, 900, 0),
                step(2000, 4_000, 0),
                step(4000, 6_000, 0),
                step(8000, 3_000, 0),
                step(16000, 25_000, 0),
            ],
        };
        assert_eq!(ramp.max_rate(20_000), 8000);
        assert_eq!(ramp.max_rate(5_000), 2000, "a later step under the limit does not count");
        assert_eq!(ramp.max_rate(900), 0);
        let failing = Ramp { steps: vec![step(1000, 900, 0), step(2000, 1_000, 3)] };
        assert_eq!(failing.max_rate(5_000), 1000, "a failed call ends the sustained rates");
        assert_eq!(Ramp::default().max_rate(5_000), 0);
    }
}

//! Peak-EWMA latency: a moving average that jumps up at once to a slower sample and
//! decays back toward faster ones (and, without samples, toward zero) over [`DECAY`],
//! so an endpoint that turns slow loses traffic immediately and wins it back
//! gradually.

use std::{
    sync::{LazyLock, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::state::Load;

/// The time constant of the decay.
pub const DECAY: Duration = Duration::from_millis(300);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    START.elapsed().as_nanos() as u64
}

/// Folds one latency sample into the estimate.
pub fn observe(load: &Load, sample: Duration) {
    let now = now_ns();
    let previous = load.latency_ns.load(Ordering::Relaxed);
    let since = now.saturating_sub(load.updated_ns.swap(now, Ordering::Relaxed));
    let next = update(previous, since, sample.as_nanos() as u64);
    load.latency_ns.store(next, Ordering::Relaxed);
}

/// The current estimate, in nanoseconds. It decays while no sample arrives, so an
/// endpoint that looked slow once is tried again rather than shunned for ever.
pub fn estimate_ns(load: &Load) -> u64 {
    let since = now_ns().saturating_sub(load.updated_ns.load(Ordering::Relaxed));
    update(load.latency_ns.load(Ordering::Relaxed), since, 0)
}

/// The pure rule: a sample above the estimate replaces it; one below pulls it down by
/// the share of [`DECAY`] that passed since the last sample.
pub fn update(estimate_ns: u64, since_ns: u64, sample_ns: u64) -> u64 {
    if sample_ns >= estimate_ns {
        return sample_ns;
    }
    let keep = (-(since_ns as f64) / DECAY.as_nanos() as f64).exp();
    (estimate_ns as f64 * keep + sample_ns as f64 * (1.0 - keep)) as u64
}

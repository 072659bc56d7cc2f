//! Liveness the kernel can trust.
//!
//! The kernel steers connects to the agent only while its heartbeat is fresh (see
//! `proxy_common::agent`), so the heartbeat must say "hung" only when the agent is:
//!
//! - A busy node must not starve it. A dedicated thread writes it, at real-time
//!   priority where the agent may have one (CAP_SYS_NICE), so neither the agent's own
//!   load nor its neighbours' delays a beat.
//! - A hung agent must stop it. SIGSTOP stops the thread with the rest of the process;
//!   a runtime that stops making progress (a deadlock, a task that never yields) is
//!   caught by the pulse: a task on each runtime (the main one and every worker's)
//!   stamps its own, and the thread beats only while every stamp is younger than
//!   [`RUNTIME_STALL`].
//!
//! A killed agent needs none of this: its listener closes and the kernel fails open at
//! once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use proxy_common::agent::HEARTBEAT_INTERVAL_MS;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::{datapath::Datapath, sys};

/// How long the runtime may go without running its pulse task before the agent counts
/// as hung and its heartbeat stops. A frozen process (SIGSTOP) stops beating at once.
pub const RUNTIME_STALL: Duration = Duration::from_secs(5);

const INTERVAL: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
/// How often the runtime stamps its pulse.
const PULSE_INTERVAL: Duration = Duration::from_millis(100);

/// When the runtime last ran its pulse task (`CLOCK_MONOTONIC` nanoseconds).
#[derive(Debug, Default)]
pub struct Pulse(AtomicU64);

impl Pulse {
    pub fn stamp(&self, now_ns: u64) {
        self.0.store(now_ns, Ordering::Release);
    }

    /// Whether the runtime ran within [`RUNTIME_STALL`] of `now_ns`.
    pub fn is_fresh(&self, now_ns: u64) -> bool {
        let last = self.0.load(Ordering::Acquire);
        last != 0 && now_ns.saturating_sub(last) <= RUNTIME_STALL.as_nanos() as u64
    }
}

/// The beating heart: a thread and a pulse task per runtime. Beats stop when it is
/// stopped or dropped (a hand-off, a shutdown).
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pulse_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Heartbeat {
    /// Beats once at once (an error here is the caller's to report), then keeps
    /// beating from a thread of its own while the current runtime and every one of
    /// `others` run their pulse tasks. Must run inside a tokio runtime.
    pub fn start<'a>(
        datapath: Arc<dyn Datapath>,
        others: impl Iterator<Item = &'a Handle>,
    ) -> anyhow::Result<Self> {
        let runtimes: Vec<Handle> =
            std::iter::once(Handle::current()).chain(others.cloned()).collect();
        let pulses: Vec<Arc<Pulse>> = runtimes.iter().map(|_| Arc::default()).collect();
        pulses.iter().for_each(|p| p.stamp(sys::monotonic_ns()));
        datapath.beat()?;
        let pulse_tasks = runtimes
            .iter()
            .zip(&pulses)
            .map(|(rt, p)| rt.spawn(stamp_forever(p.clone())))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("sockeye-heartbeat".into()).spawn({
            let stop = stop.clone();
            move || beat_until_stopped(datapath.as_ref(), &pulses, &stop)
        })?;
        Ok(Self { stop, thread: Some(thread), pulse_tasks })
    }

    /// Stops beating; returns once the thread has written its last beat.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.pulse_tasks.iter().for_each(tokio::task::JoinHandle::abort);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn stamp_forever(pulse: Arc<Pulse>) {
    let mut ticker = tokio::time::interval(PULSE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        pulse.stamp(sys::monotonic_ns());
    }
}

fn beat_until_stopped(datapath: &dyn Datapath, pulses: &[Arc<Pulse>], stop: &AtomicBool) {
    match sys::realtime_priority() {
        Ok(()) => info!("heartbeat thread at real-time priority"),
        Err(err) => warn!(
            "heartbeat thread at normal priority ({err}): a saturated node may delay it; \
             grant CAP_SYS_NICE so it cannot be starved"
        ),
    }
    let mut beater = Beater::default();
    while !stop.load(Ordering::Acquire) {
        beater.tick(datapath, pulses, sys::monotonic_ns());
        std::thread::park_timeout(INTERVAL);
    }
}

/// One beat at a time, and what was last said about it, so each change is logged once.
#[derive(Default)]
struct Beater {
    stalled: bool,
    failing: bool,
}

impl Beater {
    /// Beats if every runtime has made progress lately; returns whether it wrote a beat.
    fn tick(&mut self, datapath: &dyn Datapath, pulses: &[Arc<Pulse>], now_ns: u64) -> bool {
        if let Some(stalled) = pulses.iter().position(|p| !p.is_fresh(now_ns)) {
            if !self.stalled {
                error!(
                    "the agent's runtime {stalled} (0 is the main one, then the workers) \
                     has not run for {RUNTIME_STALL:?}: heartbeat stopped, so Pods take \
                     kube-proxy's path until it recovers"
                );
            }
            self.stalled = true;
            return false;
        }
        if self.stalled {
            info!("the agent's runtime runs again: heartbeat resumed");
        }
        self.stalled = false;
        match datapath.beat() {
            Ok(()) => self.failing = false,
            Err(err) if !self.failing => {
                self.failing = true;
                warn!(
                    "heartbeat failed, the kernel will stop steering soon: {}",
                    crate::Chain(&err)
                );
            }
            Err(_) => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulse_is_fresh_for_the_stall_window_and_never_before_its_first_stamp() {
        let pulse = Pulse::default();
        assert!(!pulse.is_fresh(1), "never stamped");
        let t = 10_000_000_000;
        pulse.stamp(t);
        assert!(pulse.is_fresh(t));
        assert!(pulse.is_fresh(t + RUNTIME_STALL.as_nanos() as u64));
        assert!(!pulse.is_fresh(t + RUNTIME_STALL.as_nanos() as u64 + 1));
        assert!(pulse.is_fresh(t - 5), "a stamp from another CPU's slightly later clock");
    }

    #[test]
    fn beats_stop_while_any_runtime_stalls_and_resume_when_it_runs() {
        let recorder = crate::datapath::Recorder::default();
        let beats = || *recorder.beats.lock().unwrap();
        let pulses: [Arc<Pulse>; 2] = Default::default();
        let (main, worker, mut beater) = (&pulses[0], &pulses[1], Beater::default());
        let t = 10_000_000_000;
        worker.stamp(t);
        main.stamp(t);
        assert!(beater.tick(&recorder, &pulses, t + 1));
        let stalled = t + RUNTIME_STALL.as_nanos() as u64 + 1;
        main.stamp(stalled);
        assert!(!beater.tick(&recorder, &pulses, stalled));
        assert!(!beater.tick(&recorder, &pulses, stalled + 1));
        assert_eq!(beats(), 1, "no beat while the worker's runtime stalls");
        worker.stamp(stalled + 2);
        assert!(beater.tick(&recorder, &pulses, stalled + 3));
        assert_eq!(beats(), 2);
    }

    #[tokio::test]
    async fn the_thread_beats_until_stopped() {
        let recorder = Arc::new(crate::datapath::Recorder::default());
        let workers = crate::workers::Workers::start(2).unwrap();
        let mut heartbeat = Heartbeat::start(recorder.clone(), workers.handles()).unwrap();
        let beats = || *recorder.beats.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while beats() < 3 {
            assert!(std::time::Instant::now() < deadline, "no beats from the thread");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        heartbeat.stop();
        assert!(heartbeat.thread.is_none(), "the thread was joined: no beat can follow");
    }
}

//! Admission: the connections the agent and each Pod hold against their caps. Past a
//! cap the agent does not refuse: it tells the kernel, and new connects from then on
//! take kube-proxy's path (fail open) until it is below the cap again. The same holds
//! when the agent runs out of descriptors. A connection that raced the kernel's
//! update is still served, up to a small overflow; past that it is refused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tracing::{info, warn};

use crate::{config::Limits, datapath::Datapath, metrics::Metrics};

/// Connections served past a cap while the kernel learns of it.
const OVERFLOW: usize = 256;
const POD_OVERFLOW: usize = 16;
/// How long the agent counts as full after running out of descriptors.
const STARVED_FOR: Duration = Duration::from_secs(1);

/// Whether a count is at its cap, with hysteresis: once full, it stays so until a
/// tenth of the cap (at least one) is free again, so the kernel is not told on every
/// connection.
pub fn full(count: usize, cap: usize, was_full: bool) -> bool {
    let low_water = cap.saturating_sub((cap / 10).max(1));
    if was_full { count > low_water } else { count >= cap }
}

#[derive(Default)]
struct Counts {
    total: usize,
    full: bool,
    /// Until when the agent counts as full for want of descriptors.
    starved_until: Option<Instant>,
    /// Per client network namespace: connections, and whether it is marked full.
    pods: HashMap<u64, (usize, bool)>,
}

pub struct Admission {
    limits: Limits,
    datapath: Arc<dyn Datapath>,
    metrics: Arc<Metrics>,
    counts: Mutex<Counts>,
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Overflow {
    #[error("{0} connections are open: past limits.max_connections and its overflow")]
    Agent(usize),
    #[error("the client's Pod holds {0} connections: past limits.max_connections_per_pod")]
    Pod(usize),
}

/// One admitted connection, counted until dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    netns: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.netns);
    }
}

impl Admission {
    pub fn new(limits: Limits, datapath: Arc<dyn Datapath>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { limits, datapath, metrics, counts: Mutex::default() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Counts a connection from the Pod (network namespace) `netns`.
    pub fn admit(self: &Arc<Self>, netns: u64) -> Result<Ticket, Overflow> {
        let mut counts = self.lock();
        if counts.total >= self.limits.max_connections + OVERFLOW {
            return Err(Overflow::Agent(counts.total));
        }
        let per_pod = self.limits.per_pod();
        let pod = counts.pods.entry(netns).or_default().0;
        if pod >= per_pod + POD_OVERFLOW {
            return Err(Overflow::Pod(pod));
        }
        counts.total += 1;
        counts.pods.entry(netns).or_default().0 += 1;
        self.settle(&mut counts, netns);
        Ok(Ticket { admission: self.clone(), netns })
    }

    /// The agent could not accept for want of descriptors: full for a while.
    pub fn out_of_descriptors(self: &Arc<Self>) {
        let mut counts = self.lock();
        counts.starved_until = Some(Instant::now() + STARVED_FOR);
        self.settle_agent(&mut counts);
        let admission = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STARVED_FOR).await;
            let mut counts = admission.lock();
            admission.settle_agent(&mut counts);
        });
    }

    fn release(&self, netns: u64) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(pod) = counts.pods.get_mut(&netns) {
            pod.0 = pod.0.saturating_sub(1);
        }
        self.settle(&mut counts, netns);
        if counts.pods.get(&netns).is_some_and(|&(n, full)| n == 0 && !full) {
            counts.pods.remove(&netns);
        }
    }

    /// Tells the kernel whatever changed about the agent and this Pod.
    fn settle(&self, counts: &mut Counts, netns: u64) {
        self.settle_agent(counts);
        let Some(pod) = counts.pods.get_mut(&netns) else { return };
        let now_full = full(pod.0, self.limits.per_pod(), pod.1);
        if now_full == pod.1 {
            return;
        }
        match self.datapath.set_netns_full(netns, now_full) {
            Ok(()) => pod.1 = now_full,
            Err(err) => {
                return warn!("cannot mark a Pod's namespace full or not: {}", crate::Chain(&err));
            }
        }
        if now_full {
            self.metrics.limit_hit("pod");
            info!(
                netns,
                connections = pod.0,
                "a Pod reached its connection cap: its new connects fail open"
            );
        }
    }

    fn settle_agent(&self, counts: &mut Counts) {
        let starved = counts.starved_until.is_some_and(|until| Instant::now() < until);
        let now_full = starved || full(counts.total, self.limits.max_connections, counts.full);
        if now_full == counts.full {
            return;
        }
        if let Err(err) = self.datapath.set_full(now_full) {
            return warn!(
                "cannot tell the kernel whether the agent is full: {}",
                crate::Chain(&err)
            );
        }
        counts.full = now_full;
        if now_full {
            self.metrics.limit_hit("global");
            warn!(
                connections = counts.total,
                starved,
                "the agent is full (limits.max_connections or out of descriptors): new connects fail open"
            );
        } else {
            info!(connections = counts.total, "the agent takes new connections again");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        crate::sync::lock(&self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::Recorder, state::State};

    #[test]
    fn full_at_the_cap_and_again_free_a_tenth_below_it() {
        assert!(!full(9, 10, false));
        assert!(full(10, 10, false));
        assert!(full(10, 10, true));
        assert!(!full(9, 10, true), "a tenth of 10 is one");
        assert!(full(95, 100, true));
        assert!(!full(90, 100, true));
        assert!(full(1, 1, false) && !full(0, 1, true));
    }

    fn admission(limits: Limits) -> (Arc<Recorder>, Arc<Admission>) {
        let recorder = Arc::new(Recorder::default());
        let metrics = Metrics::new(recorder.clone(), Arc::new(State::default()));
        (recorder.clone(), Admission::new(limits, recorder, metrics))
    }

    #[tokio::test]
    async fn the_kernel_hears_when_the_agent_or_a_pod_is_full_and_when_not_any_more() {
        let limits =
            Limits { max_connections: 4, max_connections_per_pod: Some(2), ..Limits::default() };
        let (recorder, admission) = admission(limits);
        recorder.set_enrolled(&[1, 2].into()).unwrap();
        let a1 = admission.admit(1).unwrap();
        let a2 = admission.admit(1).unwrap();
        assert_eq!(*recorder.full_netns.lock().unwrap(), [1].into(), "Pod 1 at its cap");
        assert!(!*recorder.full.lock().unwrap());
        let b: Vec<Ticket> = (0..2).map(|_| admission.admit(2).unwrap()).collect();
        assert!(*recorder.full.lock().unwrap(), "the agent at its cap");
        drop(a1);
        assert!(!*recorder.full.lock().unwrap(), "a tenth of 4 (one) is free again");
        assert_eq!(*recorder.full_netns.lock().unwrap(), [2].into());
        drop((a2, b));
        assert_eq!(admission.open(), 0);
        assert!(recorder.full_netns.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn connections_past_the_overflow_are_refused() {
        let limits =
            Limits { max_connections: 100, max_connections_per_pod: Some(1), ..Limits::default() };
        let (_, admission) = admission(limits);
        let held: Vec<Ticket> = (0..=POD_OVERFLOW).map(|_| admission.admit(7).unwrap()).collect();
        assert!(matches!(admission.admit(7), Err(Overflow::Pod(_))));
        assert!(admission.admit(8).is_ok(), "another Pod is not locked out");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_is_full_for_a_while() {
        let (recorder, admission) = admission(Limits::default());
        admission.out_of_descriptors();
        assert!(*recorder.full.lock().unwrap());
        tokio::time::sleep(STARVED_FOR + Duration::from_millis(10)).await;
        assert!(!*recorder.full.lock().unwrap());
    }
}

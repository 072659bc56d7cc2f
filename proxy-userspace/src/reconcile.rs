//! Making the kernel's maps and the agent's services match what discovery says, all
//! or nothing: a change that does not fit the kernel's maps, or names a file that is
//! not a network namespace, is refused before anything changes; one the kernel fails
//! half way is rolled back to the last good state. Enrolled namespaces are followed
//! between changes ([`crate::enroll`]).

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use tokio::sync::watch;
use tracing::{debug, error, info};

use crate::{
    datapath::{Datapath, DatapathError},
    discovery::Desired,
    enroll::{Enrolled, FOLLOW_INTERVAL, Netns, NotEnrolled},
    metrics::Metrics,
    state::State,
};

/// Why a desired state was not applied; nothing of it took effect.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("{field}: {problem}")]
    Capacity { field: String, problem: String },
    #[error("enroll.netns")]
    Netns(#[from] NotEnrolled),
    #[error("the kernel refused the change, which was rolled back")]
    Kernel(#[from] DatapathError),
}

pub struct Reconciler {
    datapath: Arc<dyn Datapath>,
    state: Arc<State>,
    enrolled: Enrolled,
    /// The last state applied in full.
    applied: Arc<Desired>,
    /// What the kernel was last told in full, so that a change of endpoints alone
    /// does not rewrite every VIP or look at every namespace again; `None` after a
    /// failure.
    told: Option<Told>,
}

struct Told {
    /// In the order discovery gave them.
    vips: Vec<SocketAddr>,
    enroll: Vec<crate::discovery::Enrollee>,
}

impl Reconciler {
    pub fn new(datapath: Arc<dyn Datapath>, state: Arc<State>) -> Self {
        Self { datapath, state, enrolled: Enrolled::default(), applied: Arc::default(), told: None }
    }

    /// The enrolled namespaces as they change.
    pub fn netns(&self) -> watch::Receiver<Arc<[Arc<Netns>]>> {
        self.enrolled.watch()
    }

    /// Makes the kernel and the services match `desired`, or changes nothing.
    ///
    /// VIPs of removed services leave the kernel before the state drops them, and
    /// VIPs of new services enter it after the state has them, so no steered
    /// connection arrives for a service the proxy does not know.
    pub fn apply(&mut self, desired: &Arc<Desired>) -> Result<(), Rejected> {
        let capacity = self.datapath.capacity();
        capacity
            .fits(desired.services.len(), desired.enroll.len())
            .map_err(|(field, problem)| Rejected::Capacity { field, problem })?;
        if self.told.as_ref().is_none_or(|told| told.enroll != desired.enroll) {
            Enrolled::check(&desired.enroll)?;
        }
        if let Err(err) = self.make(desired) {
            let last_good = self.applied.clone();
            if let Err(again) = self.make(&last_good) {
                error!("restoring the last good state failed too: {}", crate::Chain(&again));
            }
            return Err(err.into());
        }
        self.applied = desired.clone();
        Ok(())
    }

    fn make(&mut self, desired: &Desired) -> Result<(), DatapathError> {
        // In discovery's order: a change of endpoints alone costs a walk, no set.
        let vips: Vec<SocketAddr> = desired.services.iter().map(|s| s.vip).collect();
        let told = self.told.take();
        let same_vips = told.as_ref().is_some_and(|told| told.vips == vips);
        let new_vips: Option<BTreeSet<SocketAddr>> =
            (!same_vips).then(|| vips.iter().copied().collect());
        if let Some(new_vips) = &new_vips {
            let kept: BTreeSet<SocketAddr> =
                self.state.vips().intersection(new_vips).copied().collect();
            self.datapath.set_vips(&kept)?;
        }
        self.state.apply(&desired.services);
        if let Some(new_vips) = &new_vips {
            self.datapath.set_vips(new_vips)?;
        }
        if told.is_none_or(|told| told.enroll != desired.enroll) {
            self.enrolled.follow(&desired.enroll);
            self.datapath.set_enrolled(&self.enrolled.cookies())?;
        }
        self.told = Some(Told { vips, enroll: desired.enroll.clone() });
        Ok(())
    }

    /// Looks at the enrolled namespaces' paths again, and tells the kernel of any
    /// namespace that appeared, went, or was made anew.
    pub fn follow_netns(&mut self) {
        if !self.enrolled.refresh() {
            return;
        }
        let cookies = self.enrolled.cookies();
        match self.datapath.set_enrolled(&cookies) {
            Ok(()) => debug!(netns = cookies.len(), "enrolled namespaces changed"),
            Err(err) => error!("cannot update the enrolled namespaces: {}", crate::Chain(&err)),
        }
    }

    /// Applies every new desired state, and follows the namespaces in between, until
    /// discovery ends. Versions discovery itself `rejected` count as rejected updates.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<Desired>>,
        mut rejected: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
    ) {
        let mut follow = tokio::time::interval(FOLLOW_INTERVAL);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counted = *rejected.borrow_and_update();
        let mut listening = true;
        loop {
            tokio::select! {
                changed = rejected.changed(), if listening => {
                    listening = changed.is_ok();
                    let now = *rejected.borrow_and_update();
                    for _ in counted..now {
                        metrics.config_update(false);
                    }
                    counted = now;
                }
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = desired.borrow_and_update().clone();
                    let result = self.apply(&next);
                    metrics.config_update(result.is_ok());
                    match result {
                        Ok(()) => info!(
                            services = next.services.len(),
                            netns = next.enroll.len(),
                            "applied a new desired state"
                        ),
                        Err(err) => error!(
                            "config not applied: {}; keeping the last good config",
                            crate::Chain(&err)
                        ),
                    }
                }
                _ = follow.tick() => self.follow_netns(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Capacity,
        datapath::Recorder,
        discovery::{DesiredService, Enrollee},
        health::Manual,
    };

    fn service(name: &str, vip: &str) -> Arc<DesiredService> {
        Arc::new(DesiredService::one_endpoint(name, vip))
    }

    fn services(n: usize) -> Vec<Arc<DesiredService>> {
        (0..n)
            .map(|i| service(&format!("s{i}"), &format!("10.96.{}.{}:80", i / 250, i % 250 + 1)))
            .collect()
    }

    fn reconciler(capacity: Capacity) -> (Arc<Recorder>, Arc<State>, Reconciler) {
        let recorder = Arc::new(Recorder { capacity, ..Recorder::default() });
        let state = Arc::new(State::with_checker(Arc::new(Manual)));
        let reconciler = Reconciler::new(recorder.clone(), state.clone());
        (recorder, state, reconciler)
    }

    #[tokio::test]
    async fn apply_tells_the_datapath_and_updates_the_state() {
        let (recorder, state, mut reconciler) = reconciler(Capacity::default());
        let desired = Arc::new(Desired {
            services: vec![service("a", "10.96.0.1:80"), service("b", "10.96.0.2:80")],
            enroll: vec![Enrollee::path("/proc/self/ns/net")],
            ..Desired::default()
        });
        reconciler.apply(&desired).unwrap();
        assert_eq!(recorder.vips.lock().unwrap().len(), 2);
        assert_eq!(recorder.enrolled.lock().unwrap().len(), 1);
        assert_eq!(state.vips().len(), 2);

        let fewer = Arc::new(Desired {
            services: vec![service("b", "10.96.0.2:80")],
            ..Desired::default()
        });
        reconciler.apply(&fewer).unwrap();
        let vips = recorder.vips.lock().unwrap().clone();
        assert_eq!(vips.into_iter().collect::<Vec<_>>(), vec!["10.96.0.2:80".parse().unwrap()]);
        assert!(recorder.enrolled.lock().unwrap().is_empty());
        assert!(state.lookup(&"10.96.0.1:80".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn a_state_that_does_not_fit_changes_nothing_anywhere() {
        let capacity = Capacity { services: 100, ..Capacity::default() };
        let (recorder, state, mut reconciler) = reconciler(capacity);
        reconciler
            .apply(&Arc::new(Desired { services: services(3), ..Desired::default() }))
            .unwrap();

        let too_many = Arc::new(Desired { services: services(101), ..Desired::default() });
        let err = reconciler.apply(&too_many).unwrap_err();
        assert!(err.to_string().contains("capacity.services: 101 services do not fit"), "{err}");
        assert_eq!(recorder.vips.lock().unwrap().len(), 3, "the kernel kept the last good state");
        assert_eq!(state.vips().len(), 3, "so did the services");
    }

    #[tokio::test]
    async fn a_namespace_file_that_is_not_one_rejects_the_state_and_a_missing_one_waits() {
        let (recorder, state, mut reconciler) = reconciler(Capacity::default());
        let bad = Arc::new(Desired {
            services: services(1),
            enroll: vec![Enrollee::path("/proc/self/status")],
            ..Desired::default()
        });
        let err = reconciler.apply(&bad).unwrap_err();
        let message = crate::Chain(&err).to_string();
        assert!(message.contains("enroll.netns: /proc/self/status is not a network"), "{message}");
        assert!(state.vips().is_empty() && recorder.vips.lock().unwrap().is_empty());

        let later = Arc::new(Desired {
            services: services(1),
            enroll: vec![Enrollee::path("/var/run/netns/sockeye-test-not-yet")],
            ..Desired::default()
        });
        reconciler.apply(&later).unwrap();
        assert_eq!(state.vips().len(), 1);
        assert!(recorder.enrolled.lock().unwrap().is_empty(), "enrolled once it appears");
    }
}

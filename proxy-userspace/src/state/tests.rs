//! The state with paused time: discovery drives states and transitions; services
//! start on their first connection (the cold first call waits for at most one check)
//! and stop when idle.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;

use super::*;
use crate::{
    config::{Policy, Protocol, policy::HealthPolicy},
    discovery::{Condition, DesiredEndpoint},
    health::{Manual, Results},
    state::lifecycle::Check,
};

const VIP: &str = "10.96.0.1:80";

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn service(health: bool, endpoints: &[(&str, Condition)]) -> DesiredService {
    let mut policy = Policy::default();
    policy.health.enabled = health;
    DesiredService {
        name: "echo".into(),
        vip: vip(),
        protocol: Protocol::Tcp,
        policy,
        endpoints: endpoints
            .iter()
            .map(|(a, c)| DesiredEndpoint { addr: a.parse().unwrap(), condition: *c })
            .collect(),
    }
}

async fn until(service: &Service, what: impl Fn(&EndpointSet) -> bool) {
    let mut changes = service.watch_endpoints();
    tokio::time::timeout(Duration::from_secs(60), changes.wait_for(|set| what(set)))
        .await
        .expect("the state in time")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn discovery_conditions_drive_states_and_transitions() {
    let state = State::with_checker(Arc::new(Manual));
    let mut transitions = state.subscribe();
    state.apply(&[service(
        false,
        &[("10.10.0.2:80", Condition::Ready), ("10.10.0.3:80", Condition::NotReady)],
    )]);
    let svc = state.open(&vip()).expect("service exists");
    until(&svc, |set| set.all.len() == 2 && set.ready.len() == 1).await;
    assert_eq!(svc.endpoints().ready[0].addr.to_string(), "10.10.0.2:80");

    // A request in flight keeps a terminating endpoint Draining; the NotReady one,
    // removed and idle, is gone at once.
    svc.endpoints().ready[0].load.outstanding.fetch_add(1, Ordering::Relaxed);
    state.apply(&[service(false, &[("10.10.0.2:80", Condition::Terminating)])]);
    until(&svc, |set| set.all.len() == 1 && set.all[0].lifecycle() == Lifecycle::Draining).await;
    assert!(svc.endpoints().ready.is_empty());
    svc.endpoints().all[0].load.outstanding.fetch_sub(1, Ordering::Relaxed);
    until(&svc, |set| set.all.is_empty()).await;

    let mut seen = Vec::new();
    while let Ok(t) = transitions.try_recv() {
        seen.push((t.addr.to_string(), t.to));
    }
    assert!(seen.contains(&("10.10.0.3:80".into(), Lifecycle::Gone)), "{seen:?}");
    assert!(seen.contains(&("10.10.0.2:80".into(), Lifecycle::Draining)), "{seen:?}");
    assert!(seen.contains(&("10.10.0.2:80".into(), Lifecycle::Gone)), "{seen:?}");

    state.apply::<DesiredService>(&[]);
    assert!(state.lookup(&vip()).is_none());
}

/// A checker whose findings the test sends, and which counts the checks running.
#[derive(Default)]
struct Scripted {
    results: Mutex<Vec<(SocketAddr, Results)>>,
    running: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Checker for Scripted {
    fn start(
        &self,
        addr: SocketAddr,
        _: Protocol,
        _: HealthPolicy,
        results: Results,
    ) -> JoinHandle<()> {
        crate::sync::lock(&self.results).push((addr, results));
        self.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.running.clone());
        tokio::spawn(async move {
            let _running = running;
            std::future::pending::<()>().await
        })
    }
}

impl Scripted {
    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Sends `check` for `addr` from its latest checker.
    fn find(&self, addr: &str, check: Check) {
        let addr: SocketAddr = addr.parse().unwrap();
        let results = crate::sync::lock(&self.results);
        let (_, results) = results.iter().rev().find(|(a, _)| *a == addr).expect("checked");
        results.send((addr, check)).unwrap();
    }
}

fn scripted() -> (Arc<Scripted>, Arc<State>) {
    let checker = Arc::new(Scripted::default());
    let state = Arc::new(State::with_checker(checker.clone()).idle_after(Duration::from_secs(60)));
    (checker, state)
}

const TWO_READY: [(&str, Condition); 2] =
    [("10.10.0.2:80", Condition::Ready), ("10.10.0.3:80", Condition::Ready)];

#[tokio::test(start_paused = true)]
async fn a_known_service_starts_on_its_first_connection_and_stops_when_idle() {
    let (checker, state) = scripted();
    tokio::spawn(state.expire_idle());
    state.apply(&[service(true, &TWO_READY)]);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let svc = state.lookup(&vip()).expect("known: its VIP is steered");
    assert!(svc.endpoints().all.is_empty(), "no endpoint state before any use");
    assert_eq!((checker.running(), state.started()), (0, 0), "no health check either");

    let first = state.open(&vip()).unwrap();
    assert_eq!(first.endpoints().all.len(), 2, "taken in before the connection goes on");
    assert_eq!((checker.running(), state.started()), (2, 1));
    checker.find("10.10.0.2:80", Check::Pass);
    until(&svc, |set| set.ready.len() == 1).await;

    // A connection held open keeps it started, however long.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!((checker.running(), state.started()), (2, 1));
    drop(first);
    // Another one, short, in the meantime restarts the count.
    tokio::time::sleep(Duration::from_secs(50)).await;
    drop(state.open(&vip()).unwrap());
    let closed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(state.started(), 1, "not idle long enough yet");
    until(&svc, |set| set.all.is_empty()).await;
    let stopped = closed.elapsed();
    assert!(
        stopped >= Duration::from_secs(60) && stopped <= Duration::from_secs(67),
        "{stopped:?}"
    );
    tokio::task::yield_now().await;
    assert_eq!((checker.running(), state.started()), (0, 0), "checks stopped with it");
    assert!(!svc.demand.active());

    // The next connection starts it again, cold.
    let again = state.open(&vip()).unwrap();
    assert_eq!((checker.running(), state.started()), (2, 1));
    assert!(again.endpoints().starting);
}

#[tokio::test(start_paused = true)]
async fn a_cold_first_call_waits_for_the_first_passing_check_only() {
    let (checker, state) = scripted();
    state.apply(&[service(true, &TWO_READY)]);
    let call = state.open(&vip()).unwrap();
    assert!(call.endpoints().starting && call.endpoints().ready.is_empty());
    let started = tokio::time::Instant::now();
    let passes = async {
        tokio::time::sleep(Duration::from_millis(3)).await;
        checker.find("10.10.0.3:80", Check::Pass);
    };
    tokio::join!(call.warmed(), passes);
    assert_eq!(started.elapsed(), Duration::from_millis(3), "one check's round trip");
    let ready: Vec<String> = call.endpoints().ready.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(ready, ["10.10.0.3:80"], "only the one proven");
}

#[tokio::test(start_paused = true)]
async fn a_cold_first_call_takes_discovery_ready_when_checks_are_slow_and_never_refused_ones() {
    let (checker, state) = scripted();
    state.apply(&[service(
        true,
        &[
            ("10.10.0.2:80", Condition::Ready),
            ("10.10.0.3:80", Condition::Ready),
            ("10.10.0.4:80", Condition::NotReady),
        ],
    )]);
    let call = state.open(&vip()).unwrap();
    checker.find("10.10.0.3:80", Check::Fail);
    let started = tokio::time::Instant::now();
    call.warmed().await;
    assert_eq!(started.elapsed(), HealthPolicy::default().timeout, "one check's time at most");
    let ready: Vec<String> = call.endpoints().ready.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(ready, ["10.10.0.2:80"], "the silent one on discovery's word, not the refused one");
    // Its first failure takes the presumed one out; later calls do not wait.
    checker.find("10.10.0.2:80", Check::Fail);
    until(&call, |set| set.ready.is_empty() && !set.starting).await;
    let started = tokio::time::Instant::now();
    state.open(&vip()).unwrap().warmed().await;
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_cold_first_call_does_not_wait_when_every_check_failed_or_checks_are_off() {
    let (checker, state) = scripted();
    state.apply(&[service(true, &TWO_READY)]);
    let call = state.open(&vip()).unwrap();
    checker.find("10.10.0.2:80", Check::Fail);
    checker.find("10.10.0.3:80", Check::Fail);
    let started = tokio::time::Instant::now();
    call.warmed().await;
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    assert!(call.endpoints().ready.is_empty(), "no endpoint: UNAVAILABLE at once");

    let state = State::with_checker(Arc::new(Manual));
    state.apply(&[service(false, &TWO_READY)]);
    let call = state.open(&vip()).unwrap();
    assert!(!call.endpoints().starting);
    assert_eq!(call.endpoints().ready.len(), 2, "ready on discovery's word at once");
}

#[tokio::test(start_paused = true)]
async fn a_change_in_place_updates_that_service_and_a_rename_or_removal_replaces_it() {
    let state = State::with_checker(Arc::new(Manual));
    let other = DesiredService { vip: "10.96.0.2:80".parse().unwrap(), ..service(false, &[]) };
    let ready = [("10.10.0.2:80", Condition::Ready)];
    state.apply(&[service(false, &[]), other.clone()]);
    let echo = state.open(&vip()).expect("echo exists");
    let kept = state.lookup(&other.vip).expect("other exists");

    // Same services, same order, echo's endpoints changed: echo hears of it.
    state.apply(&[service(false, &ready), other.clone()]);
    until(&echo, |set| set.ready.len() == 1).await;
    assert!(Arc::ptr_eq(&state.lookup(&vip()).unwrap(), &echo), "the same service");

    // Renamed at the same VIP: a new service; the other one is kept.
    let renamed = DesiredService { name: "echo2".into(), ..service(false, &ready) };
    state.apply(&[renamed, other.clone()]);
    let now = state.lookup(&vip()).expect("echo2 exists");
    assert_eq!(&*now.name, "echo2");
    assert!(!Arc::ptr_eq(&now, &echo));
    assert!(Arc::ptr_eq(&state.lookup(&other.vip).unwrap(), &kept));

    // One service fewer: it is gone.
    state.apply(&[other]);
    assert!(state.lookup(&vip()).is_none());
    assert!(Arc::ptr_eq(&state.lookup(&kept.vip).unwrap(), &kept));
}

//! The owner with paused time: health findings, outlier ejections and drains drive
//! the published states.

use std::time::Duration;

use super::*;
use crate::{config::Protocol, discovery::Condition, health::Manual, state::LocalOriginFailure};

struct Harness {
    service: Arc<Service>,
    commands: mpsc::UnboundedSender<Command>,
    results: Results,
}

fn start(policy: Policy) -> Harness {
    let service = Service::new("greeter", "10.96.0.10:80".parse().unwrap(), Protocol::Grpc, policy);
    let outcomes = service.reports();
    let (owner, findings) =
        Owner::new(service.clone(), broadcast::Sender::new(64), Arc::new(Manual));
    let results = owner.results.clone();
    let (commands, receiver) = mpsc::unbounded_channel();
    tokio::spawn(owner.run(receiver, outcomes, findings));
    Harness { service, commands, results }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 10, 0, n], 80))
}

impl Harness {
    fn discover(&self, endpoints: &[(u8, Condition)]) {
        let desired = endpoints
            .iter()
            .map(|(n, c)| DesiredEndpoint { addr: addr(*n), condition: *c })
            .collect();
        self.commands.send(Command::Endpoints(desired)).unwrap();
    }

    fn find(&self, n: u8, check: Check) {
        self.results.send((addr(n), check)).unwrap();
    }

    async fn state_of(&self, n: u8, want: Lifecycle) {
        let mut changes = self.service.watch_endpoints();
        let wait = changes.wait_for(|set| set.get(&addr(n)).map(|e| e.lifecycle()) == Some(want));
        tokio::time::timeout(Duration::from_secs(600), wait).await.expect("in time").unwrap();
    }

    fn endpoint(&self, n: u8) -> Arc<Endpoint> {
        self.service.endpoints().get(&addr(n)).expect("listed").clone()
    }
}

#[tokio::test(start_paused = true)]
async fn health_findings_gate_rotation() {
    let h = start(Policy::default());
    h.discover(&[(1, Condition::Ready)]);
    h.state_of(1, Lifecycle::Warming).await;
    h.find(1, Check::Fail);
    tokio::time::sleep(TICK * 2).await;
    assert_eq!(h.endpoint(1).lifecycle(), Lifecycle::Warming, "no traffic before a pass");
    h.find(1, Check::Pass);
    h.state_of(1, Lifecycle::Ready).await;
    h.find(1, Check::FailNow);
    h.state_of(1, Lifecycle::Unhealthy).await;
    h.find(1, Check::Pass);
    h.find(1, Check::Pass);
    h.state_of(1, Lifecycle::Ready).await;
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_eject_for_longer_each_time() {
    let mut policy = Policy::default();
    policy.health.enabled = false;
    let h = start(policy);
    h.discover(&[(1, Condition::Ready), (2, Condition::Ready), (3, Condition::Ready)]);
    h.state_of(1, Lifecycle::Ready).await;
    let unavailable = Outcome::Response { status: 503, latency: Duration::from_millis(1) };
    let mut times = Vec::new();
    for _ in 0..2 {
        for _ in 0..5 {
            h.service.report(&h.endpoint(1), unavailable);
        }
        h.state_of(1, Lifecycle::Ejected).await;
        let ejected = tokio::time::Instant::now();
        h.state_of(1, Lifecycle::Ready).await;
        times.push(ejected.elapsed().as_secs());
    }
    assert!((15..=16).contains(&times[0]) && (30..=31).contains(&times[1]), "{times:?}");

    // Local-origin failures count apart: three in a row eject another endpoint.
    for _ in 0..3 {
        h.service.report(&h.endpoint(2), Outcome::LocalOrigin(LocalOriginFailure::ConnectRefused));
    }
    h.state_of(2, Lifecycle::Ejected).await;
}

#[tokio::test(start_paused = true)]
async fn a_terminating_endpoint_drains_until_its_deadline() {
    let mut policy = Policy::default();
    policy.health.enabled = false;
    let h = start(policy);
    h.discover(&[(1, Condition::Ready)]);
    h.state_of(1, Lifecycle::Ready).await;
    let endpoint = h.endpoint(1);
    endpoint.load.outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    h.discover(&[(1, Condition::Terminating)]);
    h.state_of(1, Lifecycle::Draining).await;
    let mut changes = h.service.watch_endpoints();
    changes.wait_for(|set| set.all.is_empty()).await.unwrap();
    let drained = started.elapsed();
    assert!(drained >= Duration::from_secs(10) && drained < Duration::from_secs(11), "{drained:?}");
    assert_eq!(endpoint.lifecycle(), Lifecycle::Gone);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_service_has_nothing_to_wake_for() {
    let service = Service::new(
        "greeter",
        "10.96.0.10:80".parse().unwrap(),
        Protocol::Grpc,
        Policy::default(),
    );
    let (mut owner, _findings) = Owner::new(service, broadcast::Sender::new(8), Arc::new(Manual));
    owner.start(&[DesiredEndpoint { addr: addr(1), condition: Condition::Ready }]);
    let presumed = tokio::time::Instant::now() + Policy::default().health.timeout;
    assert_eq!(owner.next_wake(), Some(presumed.into_std()), "a cold start's presumption");
    let policy = Policy::default();
    owner.endpoints.get_mut(&addr(1)).unwrap().record.check(Check::Pass, &policy.health);
    owner.settle();
    assert_eq!(owner.endpoint_state(1), Lifecycle::Ready);
    assert_eq!(owner.next_wake(), None, "no timer while nothing is due");
}

impl Owner {
    fn endpoint_state(&self, n: u8) -> Lifecycle {
        self.endpoints[&addr(n)].endpoint.lifecycle()
    }
}

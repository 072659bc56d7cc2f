//! The kernel-mode task against a recording datapath, with paused time: tables follow
//! the lifecycle and the mode, and connects the kernel saw fail eject an endpoint.

use std::time::Duration;

use proxy_common::lb::ConnectStats;

use super::*;
use crate::{
    config::{Policy, policy::HealthPolicy},
    datapath::KernelFailure,
    datapath::Recorder,
    discovery::{Condition, DesiredEndpoint, DesiredService},
    health::Manual,
};

const VIP: &str = "10.96.0.10:80";

fn service(name: &str, vip: &str, mode: TcpMode, endpoints: &[u8]) -> DesiredService {
    DesiredService {
        name: name.into(),
        vip: vip.parse().unwrap(),
        protocol: Protocol::Tcp,
        policy: Policy {
            health: HealthPolicy { enabled: false, ..HealthPolicy::default() },
            tcp_mode: mode,
            ..Policy::default()
        },
        endpoints: endpoints
            .iter()
            .map(|n| DesiredEndpoint { addr: addr(*n), condition: Condition::Ready })
            .collect(),
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 10, 0, n], 80))
}

struct Harness {
    state: Arc<State>,
    recorder: Arc<Recorder>,
    /// Failed connects, as the kernel tells them.
    failures: mpsc::Sender<KernelFailure>,
    drain: crate::drain::Drain,
    task: tokio::task::JoinHandle<()>,
}

fn start() -> Harness {
    let state = Arc::new(State::with_checker(Arc::new(Manual)));
    let recorder = Arc::new(Recorder::default());
    let (failures, told) = mpsc::channel(16);
    *recorder.kernel_failures.lock().unwrap() = Some(told);
    let metrics = Metrics::new(recorder.clone(), state.clone());
    let (_, enrolled) = watch::channel(Arc::from([]));
    let (drain, draining) = crate::drain::Drain::new();
    let task = tokio::spawn(run(state.clone(), recorder.clone(), enrolled, metrics, draining));
    Harness { state, recorder, failures, drain, task }
}

impl Harness {
    /// Waits (in paused time, up to 30 s) until the kernel's tables are `want`.
    async fn tables_are(&self, want: &[(&str, &[u8])]) {
        let want: BTreeMap<SocketAddr, Vec<SocketAddr>> = want
            .iter()
            .map(|(vip, endpoints)| {
                (vip.parse().unwrap(), endpoints.iter().map(|n| addr(*n)).collect())
            })
            .collect();
        for _ in 0..600 {
            if *self.recorder.kernel_services.lock().unwrap() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tables {:?}, not {want:?}", self.recorder.kernel_services.lock().unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn tables_hold_the_ready_endpoints_of_kernel_mode_services_only() {
    let h = start();
    let relayed = service("relayed", "10.96.0.11:80", TcpMode::Relay, &[5]);
    h.state.apply(&[service("kernel", VIP, TcpMode::Kernel, &[1, 2]), relayed.clone()]);
    h.tables_are(&[(VIP, &[1, 2])]).await;

    // Removed: out of the table at once (its drain is the agent's, with nothing in flight).
    h.state.apply(&[service("kernel", VIP, TcpMode::Kernel, &[1]), relayed.clone()]);
    h.tables_are(&[(VIP, &[1])]).await;

    // A reload into relay mode takes the VIP out of the kernel; back, it returns.
    h.state.apply(&[service("kernel", VIP, TcpMode::Relay, &[1]), relayed.clone()]);
    h.tables_are(&[]).await;
    h.state.apply(&[service("kernel", VIP, TcpMode::Kernel, &[1, 3]), relayed]);
    h.tables_are(&[(VIP, &[1, 3])]).await;

    h.drain.start();
    tokio::time::timeout(Duration::from_secs(1), h.task).await.expect("stops").unwrap();
}

#[tokio::test(start_paused = true)]
async fn connects_the_kernel_saw_fail_eject_the_endpoint_from_its_table() {
    let h = start();
    h.state.apply(&[service("kernel", VIP, TcpMode::Kernel, &[1, 2, 3])]);
    h.tables_are(&[(VIP, &[1, 2, 3])]).await;
    let vip: SocketAddr = VIP.parse().unwrap();

    // Two failures, then connections established: the run of failures ends.
    for _ in 0..2 {
        h.failures.send((vip, addr(1))).await.unwrap();
    }
    tokio::time::sleep(POLL).await;
    let fine = ConnectStats { picked: 9, established: 9, failed: 2 };
    *h.recorder.kernel_connects.lock().unwrap() = vec![((vip, addr(1)), fine)];
    tokio::time::sleep(POLL * 2).await;
    h.failures.send((vip, addr(1))).await.unwrap();
    tokio::time::sleep(POLL).await;
    let service = h.state.lookup(&vip).unwrap();
    assert_eq!(service.endpoints().get(&addr(1)).unwrap().lifecycle(), Lifecycle::Ready);

    // Three in a row (the default threshold) eject it, for 15 s (the default).
    for _ in 0..2 {
        h.failures.send((vip, addr(1))).await.unwrap();
    }
    h.tables_are(&[(VIP, &[2, 3])]).await;
    assert_eq!(service.endpoints().get(&addr(1)).unwrap().lifecycle(), Lifecycle::Ejected);
    let ejected = tokio::time::Instant::now();
    h.tables_are(&[(VIP, &[1, 2, 3])]).await;
    assert!(ejected.elapsed() >= Duration::from_millis(14_900), "{:?}", ejected.elapsed());
}

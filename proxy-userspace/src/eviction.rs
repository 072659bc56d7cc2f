//! Eviction in the kernel: when an endpoint is gone, the sockets of enrolled Pods that
//! are connected straight to it (headless Services, clients that resolved Pod IPs) are
//! destroyed, so the apps see an abort at once and reconnect to a live Pod.
//!
//! An endpoint is gone when discovery stops listing it, or when it has stayed
//! unhealthy or ejected for [`SUSPECT_GRACE`] (a frozen Pod the API still lists).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    datapath::evict::destroy_connections_to,
    discovery::{Desired, Listings},
    enroll::Netns,
    metrics::Metrics,
    state::{Lifecycle, Transition},
};

/// How long an endpoint may stay unhealthy or ejected before its direct connections
/// are evicted. Longer than outlier detection's base ejection time, so a short
/// ejection does not cost clients their connections.
pub const SUSPECT_GRACE: Duration = Duration::from_secs(60);

/// Evicts endpoints as they go, in the namespaces enrolled at the time, until
/// discovery or the state ends. `agent` are the agent's own addresses: an "endpoint"
/// there is never evicted, since every steered connection is connected to it.
pub async fn run(
    mut transitions: broadcast::Receiver<Transition>,
    mut desired: watch::Receiver<Arc<Desired>>,
    enrolled: watch::Receiver<Arc<[Arc<Netns>]>>,
    agent: Vec<SocketAddr>,
    metrics: Arc<Metrics>,
) {
    let mut known = desired.borrow_and_update().clone();
    let mut listings = Listings::of(&known);
    let mut suspects = Suspects::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let gone: Vec<(String, SocketAddr)> = tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = desired.borrow_and_update().clone();
                let gone = listings.update(&known, &now);
                known = now;
                gone
            }
            transition = transitions.recv() => match transition {
                Ok(t) => {
                    suspects.transition(&t, Instant::now());
                    continue;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!("eviction missed {missed} endpoint transitions");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => suspects.due(Instant::now()),
        };
        let netns = enrolled.borrow().clone();
        for (service, addr) in gone {
            if agent.contains(&addr) {
                warn!(endpoint = %addr, %service, "not evicting the agent's own address");
                continue;
            }
            evict(netns.clone(), &service, addr, &metrics).await;
        }
    }
}

pub(crate) async fn evict(
    netns: Arc<[Arc<Netns>]>,
    service: &str,
    addr: SocketAddr,
    metrics: &Metrics,
) {
    let started = std::time::Instant::now();
    let Ok(destroyed) = tokio::task::spawn_blocking(move || destroy_in(&netns, addr)).await else {
        return;
    };
    if destroyed > 0 {
        info!(endpoint = %addr, sockets = destroyed, elapsed = ?started.elapsed(), "evicted direct connections");
        metrics.evicted(service, destroyed);
    }
}

fn destroy_in(netns: &[Arc<Netns>], addr: SocketAddr) -> usize {
    netns
        .iter()
        .map(|ns| match destroy_connections_to(&ns.file, addr) {
            Ok(n) => n,
            Err(err) => {
                let path = ns.path.display();
                warn!(endpoint = %addr, netns = %path, "cannot evict connections: {err}");
                0
            }
        })
        .sum()
}

/// Endpoints that are unhealthy or ejected, since when, and whether they were evicted.
#[derive(Default)]
struct Suspects(HashMap<(SocketAddr, SocketAddr), Suspect>);

struct Suspect {
    service: String,
    since: Instant,
    evicted: bool,
}

impl Suspects {
    fn transition(&mut self, t: &Transition, now: Instant) {
        let key = (t.vip, t.addr);
        if matches!(t.to, Lifecycle::Unhealthy | Lifecycle::Ejected) {
            let service = t.service.to_string();
            self.0.entry(key).or_insert(Suspect { service, since: now, evicted: false });
        } else {
            self.0.remove(&key);
        }
    }

    /// Suspects past their grace, each returned once.
    fn due(&mut self, now: Instant) -> Vec<(String, SocketAddr)> {
        self.0
            .iter_mut()
            .filter(|(_, s)| !s.evicted && now.duration_since(s.since) >= SUSPECT_GRACE)
            .map(|((_, addr), s)| {
                s.evicted = true;
                (s.service.clone(), *addr)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(addr: &str, to: Lifecycle) -> Transition {
        Transition {
            service: "cart".into(),
            vip: "10.96.0.1:80".parse().unwrap(),
            addr: addr.parse().unwrap(),
            from: None,
            to,
        }
    }

    #[test]
    fn an_endpoint_unhealthy_or_ejected_past_its_grace_is_due_once() {
        let start = Instant::now();
        let mut suspects = Suspects::default();
        suspects.transition(&transition("10.0.0.1:80", Lifecycle::Unhealthy), start);
        let later = start + Duration::from_secs(10);
        suspects.transition(&transition("10.0.0.1:80", Lifecycle::Ejected), later);
        suspects.transition(&transition("10.0.0.2:80", Lifecycle::Ejected), later);
        assert!(suspects.due(start + SUSPECT_GRACE - Duration::from_millis(1)).is_empty());
        let due = suspects.due(start + SUSPECT_GRACE);
        assert_eq!(due, [("cart".to_string(), "10.0.0.1:80".parse().unwrap())]);
        assert!(suspects.due(start + SUSPECT_GRACE).is_empty(), "only once");
        assert_eq!(suspects.due(later + SUSPECT_GRACE).len(), 1, "the second one");
    }

    #[test]
    fn an_endpoint_that_recovers_is_forgiven() {
        let start = Instant::now();
        let mut suspects = Suspects::default();
        suspects.transition(&transition("10.0.0.1:80", Lifecycle::Unhealthy), start);
        suspects.transition(&transition("10.0.0.1:80", Lifecycle::Ready), start);
        assert!(suspects.due(start + SUSPECT_GRACE * 2).is_empty());
    }
}

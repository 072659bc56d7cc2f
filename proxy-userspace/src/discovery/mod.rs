//! Discovery: what services and endpoints exist, and which network namespaces are
//! enrolled. The static file is one source; the Kubernetes API is another.

pub mod kube;
pub mod static_file;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
};

use tokio::sync::watch;

use crate::config::{Config, Policy, Protocol, ServiceConfig};

/// Everything discovery knows at one moment. The agent makes it so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Shared, not copied, by every consumer and from one state to the next: a
    /// service that did not change is the same allocation in both.
    pub services: Vec<Arc<DesiredService>>,
    /// Services without a VIP: not steered, but clients that connect straight to
    /// their endpoints have those connections evicted when an endpoint goes.
    pub headless: Vec<Arc<HeadlessService>>,
    /// Network namespaces to enroll.
    pub enroll: Vec<Enrollee>,
}

/// A network namespace to enroll, by the file that names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Enrollee {
    /// `/var/run/netns/x` (followed: a namespace made again there is enrolled anew),
    /// or `/proc/PID/ns/net` of a Pod's process.
    pub path: PathBuf,
    /// For a Pod's process: the Pod's UID, which the process's cgroup must still name
    /// when its namespace is opened, so a PID reused by another process is refused.
    pub pod_uid: Option<String>,
}

impl Enrollee {
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), pod_uid: None }
    }
}

/// One service VIP (a ClusterIP and one of its ports) and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub policy: Policy,
    pub endpoints: Vec<DesiredEndpoint>,
}

#[cfg(test)]
impl DesiredService {
    /// A TCP service at `vip` with one Ready endpoint, for tests.
    pub fn one_endpoint(name: &str, vip: &str) -> Self {
        Self {
            name: name.into(),
            vip: vip.parse().expect("a VIP"),
            protocol: Protocol::Tcp,
            policy: Policy::default(),
            endpoints: vec![DesiredEndpoint {
                addr: "10.10.0.11:80".parse().expect("an address"),
                condition: Condition::Ready,
            }],
        }
    }
}

/// A Service without a VIP and its endpoints' addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadlessService {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub addr: SocketAddr,
    pub condition: Condition,
}

/// What discovery says of an endpoint (Kubernetes EndpointSlice conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Ready: eligible for traffic once its health check passes.
    Ready,
    /// Known but not ready (readiness probe failing): no traffic.
    NotReady,
    /// Terminating (Pod deleted): no new requests; in-flight ones may finish.
    Terminating,
}

impl From<&ServiceConfig> for DesiredService {
    fn from(s: &ServiceConfig) -> Self {
        Self {
            name: s.name.clone(),
            vip: s.vip,
            protocol: s.protocol,
            policy: s.policy(),
            endpoints: s
                .endpoints
                .iter()
                .map(|&addr| DesiredEndpoint { addr, condition: Condition::Ready })
                .collect(),
        }
    }
}

impl From<&Config> for Desired {
    fn from(config: &Config) -> Self {
        Self {
            services: config.services.iter().map(|s| Arc::new(DesiredService::from(s))).collect(),
            headless: Vec::new(),
            enroll: config.enroll.netns.iter().map(Enrollee::path).collect(),
        }
    }
}

/// A source of [`Desired`] states.
pub trait Discovery: Send + Sync + 'static {
    /// The latest state; the receiver sees every change.
    fn watch(&self) -> watch::Receiver<Arc<Desired>>;

    /// Resolves once the state is complete (for the API server: every kind listed).
    fn synced(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Notified to re-read the source now (SIGHUP); `None` for a source that is
    /// always current.
    fn reloads(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// How many new versions of its source discovery has rejected so far (an invalid
    /// config file), as it changes.
    fn rejections(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

/// The elements of `before` that `now` does not share, and those of `now` that
/// `before` does not, compared by allocation (see [`Desired::services`]). Lists of the
/// same length are walked side by side, as discovery keeps its order, so the cost
/// follows the list, not a set of it; an element that only moved may then be listed
/// on both sides.
pub fn replaced<'a, T>(
    before: &'a [Arc<T>],
    now: &'a [Arc<T>],
) -> (Vec<&'a Arc<T>>, Vec<&'a Arc<T>>) {
    if before.len() == now.len() {
        return before.iter().zip(now).filter(|(b, n)| !Arc::ptr_eq(b, n)).unzip();
    }
    let in_now: HashSet<*const T> = now.iter().map(Arc::as_ptr).collect();
    let in_before: HashSet<*const T> = before.iter().map(Arc::as_ptr).collect();
    (
        before.iter().filter(|b| !in_now.contains(&Arc::as_ptr(b))).collect(),
        now.iter().filter(|n| !in_before.contains(&Arc::as_ptr(n))).collect(),
    )
}

/// How many services list each endpoint address, kept from one state to the next at
/// the cost of what changed.
#[derive(Debug, Default)]
pub struct Listings(HashMap<SocketAddr, u32>);

impl Listings {
    pub fn of(desired: &Desired) -> Self {
        let mut listings = Self::default();
        listings.update(&Desired::default(), desired);
        listings
    }

    /// Moves from `before` to `now`: returns the endpoints `before` listed that `now`
    /// lists nowhere, each with the first service that named it.
    pub fn update(&mut self, before: &Desired, now: &Desired) -> Vec<(String, SocketAddr)> {
        let (old, new) = replaced(&before.services, &now.services);
        let (old_headless, new_headless) = replaced(&before.headless, &now.headless);
        let mut left: HashMap<SocketAddr, &str> = HashMap::new();
        let old = old.iter().map(|s| (&s.name, s.endpoints.iter().map(|e| e.addr).collect()));
        let old_headless = old_headless.iter().map(|s| (&s.name, s.endpoints.clone()));
        for (name, addrs) in old.chain(old_headless) {
            for addr in addrs {
                self.drop_one(addr);
                left.entry(addr).or_insert(name);
            }
        }
        let new = new.iter().flat_map(|s| s.endpoints.iter().map(|e| e.addr));
        for addr in new.chain(new_headless.iter().flat_map(|s| s.endpoints.iter().copied())) {
            *self.0.entry(addr).or_default() += 1;
        }
        let mut gone: Vec<(String, SocketAddr)> = left
            .into_iter()
            .filter(|(addr, _)| !self.0.contains_key(addr))
            .map(|(addr, service)| (service.to_string(), addr))
            .collect();
        gone.sort();
        gone
    }

    fn drop_one(&mut self, addr: SocketAddr) {
        if let Some(count) = self.0.get_mut(&addr) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&addr);
            }
        }
    }
}

/// A fixed state, for tests of what reacts to discovery.
pub struct Fixed(pub watch::Sender<Arc<Desired>>);

impl Discovery for Fixed {
    fn watch(&self) -> watch::Receiver<Arc<Desired>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, endpoints: &[u8]) -> Arc<DesiredService> {
        Arc::new(DesiredService {
            name: name.into(),
            vip: "10.96.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            policy: Policy::default(),
            endpoints: endpoints
                .iter()
                .map(|&n| DesiredEndpoint {
                    addr: SocketAddr::from(([10, 0, 0, n], 80)),
                    condition: Condition::Ready,
                })
                .collect(),
        })
    }

    #[test]
    fn listings_name_addresses_listed_nowhere_any_more() {
        let (a, b) = (service("a", &[1, 2, 3]), service("b", &[4]));
        let db = Arc::new(HeadlessService {
            name: "db".into(),
            endpoints: vec![([10, 0, 0, 9], 80).into()],
        });
        let before = Desired {
            services: vec![a, b.clone()],
            headless: vec![db.clone()],
            ..Desired::default()
        };
        // a drops 1 and 2; 2 moves to the new service c; b and db are the same.
        let after = Desired {
            services: vec![service("a", &[3]), b.clone(), service("c", &[2])],
            headless: vec![db.clone()],
            ..Desired::default()
        };
        let mut listings = Listings::of(&before);
        let one: SocketAddr = ([10, 0, 0, 1], 80).into();
        assert_eq!(listings.update(&before, &after), [("a".to_string(), one)]);
        assert!(listings.update(&after, &after).is_empty());
        // The same length and order with one service replaced: 2 leaves c, which
        // now lists 1, and b (shared) still lists 4.
        let later = Desired {
            services: vec![after.services[0].clone(), b, service("c", &[1])],
            headless: vec![db],
            ..Desired::default()
        };
        let two: SocketAddr = ([10, 0, 0, 2], 80).into();
        assert_eq!(listings.update(&after, &later), [("c".to_string(), two)]);
        assert_eq!(listings.update(&later, &Desired::default()).len(), 4, "all gone");
        assert!(listings.0.is_empty(), "nothing counted for an empty state");
    }
}

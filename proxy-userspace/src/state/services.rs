//! The service table: VIP → service, swapped as a whole when discovery changes, so the
//! proxy reads one consistent snapshot per connection without locks.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::config::{Protocol, ServiceConfig};

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Service {
    /// Every endpoint once, starting one further than the previous call (round robin),
    /// so a refused connect can move on to the next endpoint.
    pub fn connect_order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

#[derive(Debug, Default)]
pub struct ServiceTable {
    by_vip: HashMap<SocketAddr, Arc<Service>>,
}

impl ServiceTable {
    pub fn new(services: &[ServiceConfig]) -> Self {
        let by_vip = services
            .iter()
            .map(|s| {
                let service = Service {
                    name: s.name.clone(),
                    vip: s.vip,
                    protocol: s.protocol,
                    endpoints: s.endpoints.clone(),
                    next: AtomicUsize::new(0),
                };
                (s.vip, Arc::new(service))
            })
            .collect();
        Self { by_vip }
    }

    pub fn get(&self, vip: &SocketAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(vip)
    }

    pub fn vips(&self) -> BTreeSet<SocketAddr> {
        self.by_vip.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.by_vip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ServiceTable {
        let config = ServiceConfig {
            name: "greeter".into(),
            vip: "10.96.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            endpoints: ["10.10.0.11:80", "10.10.0.12:80", "10.10.0.13:80"]
                .map(|e| e.parse().unwrap())
                .to_vec(),
        };
        ServiceTable::new(&[config])
    }

    #[test]
    fn connect_order_rotates_and_covers_every_endpoint() {
        let table = table();
        let service = table.get(&"10.96.0.10:80".parse().unwrap()).unwrap();
        let firsts: Vec<_> = (0..6).map(|_| service.connect_order().next().unwrap()).collect();
        assert_eq!(firsts[0..3], service.endpoints[..]);
        assert_eq!(firsts[3..6], service.endpoints[..]);
        let mut all: Vec<_> = service.connect_order().collect();
        all.sort();
        assert_eq!(all, service.endpoints);
    }

    #[test]
    fn lookup_is_by_exact_vip_and_port() {
        let table = table();
        assert!(table.get(&"10.96.0.10:81".parse().unwrap()).is_none());
        assert_eq!(table.vips().len(), 1);
        let empty = ServiceTable::new(&[ServiceConfig {
            name: "scaled-to-zero".into(),
            vip: "10.96.0.11:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            endpoints: vec![],
        }]);
        let service = empty.get(&"10.96.0.11:80".parse().unwrap()).unwrap();
        assert_eq!(service.connect_order().count(), 0);
    }
}

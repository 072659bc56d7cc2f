//! What the watches have seen, as compact tables, and the [`Desired`] state it makes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
};

use kube::{core::DynamicObject, runtime::watcher::Event};
use tracing::{debug, warn};

use super::objects::{self, Pod, Service, Skip, Slice};
use crate::{
    config::Policy,
    discovery::{Condition, Desired, DesiredEndpoint, DesiredService, Enrollee, HeadlessService},
};

/// One kind's objects by `namespace/name`, kept through relists.
pub struct Table<T> {
    kind: &'static str,
    live: HashMap<String, T>,
    /// Objects of a relist in progress; they replace `live` when it is done.
    relist: Option<HashMap<String, T>>,
    synced: bool,
}

impl<T> Table<T> {
    pub fn new(kind: &'static str) -> Self {
        Self { kind, live: HashMap::new(), relist: None, synced: false }
    }

    /// Has seen one full list.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.live.values()
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.live.get(key)
    }

    /// Applies one watch event; returns whether the live objects may have changed.
    /// An object `convert` cannot read is skipped (and forgotten) with a log line.
    pub fn apply(
        &mut self,
        event: Event<DynamicObject>,
        convert: impl Fn(&DynamicObject) -> Result<T, Skip>,
    ) -> bool {
        let convert = |object: &DynamicObject| {
            let key = objects::key(object);
            let value = convert(object)
                .inspect_err(|reason| warn!(kind = self.kind, object = %key, "skipped: {reason}"))
                .ok();
            (key, value)
        };
        match event {
            Event::Apply(object) => {
                let (key, value) = convert(&object);
                match value {
                    Some(value) => self.live.insert(key, value),
                    None => self.live.remove(&key),
                };
                true
            }
            Event::Delete(object) => self.live.remove(&objects::key(&object)).is_some(),
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(object) => {
                if let (key, Some(value)) = convert(&object) {
                    self.relist.get_or_insert_default().insert(key, value);
                }
                false
            }
            Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.synced = true;
                debug!(kind = self.kind, objects = self.live.len(), "listed");
                true
            }
        }
    }
}

/// Everything the watches know.
pub struct Snapshot {
    /// Opted-in namespaces.
    pub namespaces: Table<()>,
    /// Pods on this node.
    pub pods: Table<Pod>,
    pub services: Table<Service>,
    pub slices: Table<Slice>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            namespaces: Table::new("Namespace"),
            pods: Table::new("Pod"),
            services: Table::new("Service"),
            slices: Table::new("EndpointSlice"),
        }
    }
}

impl Snapshot {
    pub fn synced(&self) -> bool {
        self.namespaces.synced()
            && self.pods.synced()
            && self.services.synced()
            && self.slices.synced()
    }

    /// Pods on this node whose connections are steered: in an opted-in namespace, not
    /// opted out themselves, not on the host network.
    pub fn enrolled_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().filter(|pod| {
            !pod.opted_out && !pod.host_network && self.namespaces.get(&pod.namespace).is_some()
        })
    }

    /// The state to make so; `enroll` are the enrolled Pods' namespace paths.
    pub fn desired(&self, enroll: Vec<Enrollee>) -> Desired {
        let deleting: HashSet<&str> =
            self.pods.values().filter(|p| p.deleting).map(|p| p.uid.as_str()).collect();
        let mut slices: HashMap<&str, Vec<&Slice>> = HashMap::new();
        for slice in self.slices.values() {
            slices.entry(&slice.service).or_default().push(slice);
        }
        let mut services = Vec::new();
        let mut headless = Vec::new();
        for (key, service) in sorted(&self.services.live) {
            let slices = slices.get(key.as_str()).map_or(&[][..], Vec::as_slice);
            for port in &service.ports {
                let endpoints = |family: Option<bool>| {
                    endpoints(slices, &port.name, family, &deleting)
                        .into_iter()
                        .map(|(addr, condition)| DesiredEndpoint { addr, condition })
                        .collect::<Vec<_>>()
                };
                let name = format!("{key}:{}", port_name(&port.name, port.port));
                if service.cluster_ips.is_empty() {
                    let endpoints = endpoints(None).into_iter().map(|e| e.addr).collect();
                    headless.push(HeadlessService { name, endpoints });
                    continue;
                }
                for &ip in &service.cluster_ips {
                    services.push(DesiredService {
                        name: name.clone(),
                        vip: SocketAddr::new(ip, port.port),
                        protocol: port.protocol,
                        policy: Policy { tcp_mode: service.tcp_mode, ..Policy::default() },
                        endpoints: endpoints(Some(ip.is_ipv6())),
                    });
                }
            }
        }
        Desired { services, headless, enroll }
    }
}

fn sorted<T>(table: &HashMap<String, T>) -> BTreeMap<&String, &T> {
    table.iter().collect()
}

fn port_name(name: &str, port: u16) -> String {
    if name.is_empty() { port.to_string() } else { name.to_string() }
}

/// The endpoints behind one Service port, of one address family (`Some(is_ipv6)`) or
/// both. An endpoint listed twice (slices overlap while they are rewritten) counts
/// with its best condition; a Pod on this node being deleted is Terminating at once.
fn endpoints(
    slices: &[&Slice],
    port_name: &str,
    family: Option<bool>,
    deleting: &HashSet<&str>,
) -> Vec<(SocketAddr, Condition)> {
    let mut found: BTreeMap<SocketAddr, Condition> = BTreeMap::new();
    for slice in slices {
        let Some(&(_, port)) = slice.ports.iter().find(|(name, _)| name == port_name) else {
            continue;
        };
        for e in &slice.endpoints {
            if family.is_some_and(|v6| e.ip.is_ipv6() != v6) {
                continue;
            }
            let mut condition = e.condition;
            if e.pod_uid.as_deref().is_some_and(|uid| deleting.contains(uid)) {
                condition = Condition::Terminating;
            }
            let addr = SocketAddr::new(e.ip, port);
            let best = found.entry(addr).or_insert(condition);
            *best = better(*best, condition);
        }
    }
    found.into_iter().collect()
}

fn better(a: Condition, b: Condition) -> Condition {
    let rank = |c| match c {
        Condition::Ready => 2,
        Condition::Terminating => 1,
        Condition::NotReady => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Protocol;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for kind in 0..4 {
            let done = |_: &DynamicObject| -> Result<(), Skip> { Ok(()) };
            match kind {
                0 => s.namespaces.apply(Event::InitDone, done),
                1 => s.pods.apply(Event::InitDone, |o| objects::pod(o, "node-1")),
                2 => s.services.apply(Event::InitDone, objects::service),
                _ => s.slices.apply(Event::InitDone, objects::slice),
            };
        }
        s
    }

    fn pod(name: &str, namespace: &str, uid: &str, extra: serde_json::Value) -> DynamicObject {
        let mut value = json!({
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"nodeName": "node-1"},
        });
        merge(&mut value, extra);
        object(value)
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn cart_service() -> DynamicObject {
        object(json!({
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"clusterIPs": ["10.96.0.7", "fd00::7"], "ports": [{"name": "grpc", "port": 50051}]},
        }))
    }

    fn cart_slice(name: &str, family: &str, endpoints: serde_json::Value) -> DynamicObject {
        object(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "cart"}},
            "addressType": family,
            "ports": [{"name": "grpc", "port": 8080}],
            "endpoints": endpoints,
        }))
    }

    #[test]
    fn enrolls_pods_of_opted_in_namespaces_only() {
        let mut s = snapshot();
        let enabled = object(json!({"metadata": {"name": "shop",
            "labels": {"sockeye.dev/proxy": "enabled"}}}));
        s.namespaces.apply(Event::Apply(enabled), objects::namespace);
        let on = |o: &DynamicObject| objects::pod(o, "node-1");
        s.pods.apply(Event::Apply(pod("a", "shop", "u-a", json!({}))), on);
        s.pods.apply(Event::Apply(pod("b", "other", "u-b", json!({}))), on);
        let out = json!({"metadata": {"labels": {"sockeye.dev/proxy": "disabled"}}});
        s.pods.apply(Event::Apply(pod("c", "shop", "u-c", out)), on);
        let host = json!({"spec": {"hostNetwork": true}});
        s.pods.apply(Event::Apply(pod("d", "shop", "u-d", host)), on);
        let uids: Vec<&str> = s.enrolled_pods().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["u-a"]);
    }

    #[test]
    fn services_get_a_vip_per_cluster_ip_and_port_with_endpoints_of_that_family() {
        let mut s = snapshot();
        s.services.apply(Event::Apply(cart_service()), objects::service);
        let v4 = cart_slice(
            "cart-1",
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            ]),
        );
        let v6 = cart_slice("cart-2", "IPv6", json!([{"addresses": ["fd10::1"]}]));
        s.slices.apply(Event::Apply(v4), objects::slice);
        s.slices.apply(Event::Apply(v6), objects::slice);
        let desired = s.desired(vec![]);
        let summary: Vec<_> = desired
            .services
            .iter()
            .map(|d| {
                let endpoints: Vec<_> =
                    d.endpoints.iter().map(|e| (e.addr.to_string(), e.condition)).collect();
                (d.name.as_str(), d.vip.to_string(), d.protocol, endpoints)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "shop/cart:grpc",
                    "10.96.0.7:50051".to_string(),
                    Protocol::Grpc,
                    vec![
                        ("10.0.0.1:8080".to_string(), Condition::Ready),
                        ("10.0.0.2:8080".to_string(), Condition::NotReady)
                    ]
                ),
                (
                    "shop/cart:grpc",
                    "[fd00::7]:50051".to_string(),
                    Protocol::Grpc,
                    vec![("[fd10::1]:8080".to_string(), Condition::Ready)]
                ),
            ]
        );
    }

    #[test]
    fn a_pod_being_deleted_on_this_node_is_terminating_before_its_slice_says_so() {
        let mut s = snapshot();
        s.services.apply(Event::Apply(cart_service()), objects::service);
        let slice = cart_slice(
            "cart-1",
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "uid": "u1"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "uid": "u2"}},
            ]),
        );
        s.slices.apply(Event::Apply(slice), objects::slice);
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-11-23T10:00:00Z"}});
        s.pods
            .apply(Event::Apply(pod("b1", "shop", "u1", deleting)), |o| objects::pod(o, "node-1"));
        let endpoints = &s.desired(vec![]).services[0].endpoints;
        assert_eq!(endpoints[0].condition, Condition::Terminating);
        assert_eq!(endpoints[1].condition, Condition::Ready);
    }

    #[test]
    fn overlapping_slices_count_an_endpoint_once_with_its_best_condition() {
        let mut s = snapshot();
        s.services.apply(Event::Apply(cart_service()), objects::service);
        let old = cart_slice(
            "cart-1",
            "IPv4",
            json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
        );
        let new = cart_slice("cart-2", "IPv4", json!([{"addresses": ["10.0.0.1"]}]));
        s.slices.apply(Event::Apply(old), objects::slice);
        s.slices.apply(Event::Apply(new), objects::slice);
        let endpoints = &s.desired(vec![]).services[0].endpoints;
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].condition, Condition::Ready);
    }

    #[test]
    fn headless_services_are_not_steered_but_their_endpoints_are_known() {
        let mut s = snapshot();
        let db = object(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        }));
        s.services.apply(Event::Apply(db), objects::service);
        let slice = object(json!({
            "metadata": {"name": "db-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["10.0.0.9"]}],
        }));
        s.slices.apply(Event::Apply(slice), objects::slice);
        let desired = s.desired(vec![]);
        assert!(desired.services.is_empty());
        assert_eq!(desired.headless.len(), 1);
        assert_eq!(desired.headless[0].name, "shop/db:5432");
        assert_eq!(desired.headless[0].endpoints, ["10.0.0.9:5432".parse().unwrap()]);
    }

    #[test]
    fn a_relist_replaces_what_was_known_and_skips_odd_objects() {
        let mut s = snapshot();
        s.services.apply(Event::Apply(cart_service()), objects::service);
        s.services.apply(Event::Init, objects::service);
        assert_eq!(s.services.values().count(), 1, "kept until the relist is done");
        let odd = object(json!({"metadata": {"name": "odd", "namespace": "shop"},
                                "spec": {"ports": "many"}}));
        s.services.apply(Event::InitApply(odd), objects::service);
        let other = object(json!({"metadata": {"name": "web", "namespace": "shop"},
                                  "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}));
        s.services.apply(Event::InitApply(other), objects::service);
        assert!(s.services.apply(Event::InitDone, objects::service));
        let names: Vec<_> = s.desired(vec![]).services.into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["shop/web:80"]);
    }
}

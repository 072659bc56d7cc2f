//! What the watches have seen, as compact tables, and the [`Desired`] state it makes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
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

/// What one watch event changed in a table.
#[derive(Debug, PartialEq)]
pub enum Change<T> {
    None,
    /// The object at this key, and what it was before.
    One(String, Option<T>),
    /// A relist replaced them all.
    All,
}

impl<T> Change<T> {
    pub fn any(&self) -> bool {
        !matches!(self, Change::None)
    }
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

    /// Applies one watch event; says which live object changed. An object `convert`
    /// cannot read is skipped (and forgotten) with a log line.
    pub fn apply(
        &mut self,
        event: Event<DynamicObject>,
        convert: impl Fn(&DynamicObject) -> Result<T, Skip>,
    ) -> Change<T> {
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
                let old = match value {
                    Some(value) => self.live.insert(key.clone(), value),
                    None => self.live.remove(&key),
                };
                Change::One(key, old)
            }
            Event::Delete(object) => {
                let key = objects::key(&object);
                match self.live.remove(&key) {
                    Some(old) => Change::One(key, Some(old)),
                    None => Change::None,
                }
            }
            Event::Init => {
                self.relist = Some(HashMap::new());
                Change::None
            }
            Event::InitApply(object) => {
                if let (key, Some(value)) = convert(&object) {
                    self.relist.get_or_insert_default().insert(key, value);
                }
                Change::None
            }
            Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.synced = true;
                debug!(kind = self.kind, objects = self.live.len(), "listed");
                Change::All
            }
        }
    }
}

/// Everything the watches know, and what it makes: each Service's part of the
/// [`Desired`] state is built again only when the Service, one of its slices or the
/// deletion of one of its Pods on this node changed; the rest is shared, unchanged,
/// with the previous state.
pub struct Snapshot {
    /// Opted-in namespaces.
    pub namespaces: Table<()>,
    /// Pods on this node.
    pub pods: Table<Pod>,
    pub services: Table<Service>,
    pub slices: Table<Slice>,
    /// Slice keys by the key of their Service.
    slices_of: HashMap<String, BTreeSet<String>>,
    /// UIDs of the Pods on this node being deleted.
    deleting: HashSet<String>,
    /// What each Service made when it was last built.
    built: BTreeMap<String, Built>,
    /// Services to build again.
    stale: Stale,
}

#[derive(Default)]
struct Built {
    services: Vec<Arc<DesiredService>>,
    headless: Vec<Arc<HeadlessService>>,
}

#[derive(Default)]
enum Stale {
    #[default]
    All,
    Some(BTreeSet<String>),
}

impl Stale {
    fn mark(&mut self, service: &str) {
        if let Stale::Some(keys) = self {
            keys.insert(service.to_string());
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            namespaces: Table::new("Namespace"),
            pods: Table::new("Pod"),
            services: Table::new("Service"),
            slices: Table::new("EndpointSlice"),
            slices_of: HashMap::new(),
            deleting: HashSet::new(),
            built: BTreeMap::new(),
            stale: Stale::All,
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

    /// Applies a Namespace event; true if the opted-in namespaces changed.
    pub fn namespace(&mut self, event: Event<DynamicObject>) -> bool {
        self.namespaces.apply(event, objects::namespace).any()
    }

    /// Applies an event of a Pod on `node`; true if the Pods changed.
    pub fn pod(&mut self, event: Event<DynamicObject>, node: &str) -> bool {
        let change = self.pods.apply(event, |o| objects::pod(o, node));
        let deleting: HashSet<String> =
            self.pods.values().filter(|p| p.deleting).map(|p| p.uid.clone()).collect();
        if deleting != self.deleting {
            // The slices naming a Pod whose deletion began (or was undone) change.
            for uid in deleting.symmetric_difference(&self.deleting) {
                for slice in self.slices.values() {
                    if slice.endpoints.iter().any(|e| e.pod_uid.as_deref() == Some(uid)) {
                        self.stale.mark(&slice.service);
                    }
                }
            }
            self.deleting = deleting;
        }
        change.any()
    }

    /// Applies a Service event; true if the Services changed.
    pub fn service(&mut self, event: Event<DynamicObject>) -> bool {
        match self.services.apply(event, objects::service) {
            Change::None => return false,
            Change::One(key, _) => self.stale.mark(&key),
            Change::All => self.stale = Stale::All,
        }
        true
    }

    /// Applies an EndpointSlice event; true if the slices changed.
    pub fn slice(&mut self, event: Event<DynamicObject>) -> bool {
        match self.slices.apply(event, objects::slice) {
            Change::None => return false,
            Change::One(key, old) => {
                if let Some(old) = old {
                    self.stale.mark(&old.service);
                    if let Some(keys) = self.slices_of.get_mut(&old.service) {
                        keys.remove(&key);
                        if keys.is_empty() {
                            self.slices_of.remove(&old.service);
                        }
                    }
                }
                if let Some(slice) = self.slices.get(&key) {
                    let service = slice.service.clone();
                    self.stale.mark(&service);
                    self.slices_of.entry(service).or_default().insert(key);
                }
            }
            Change::All => {
                self.slices_of.clear();
                for (key, slice) in &self.slices.live {
                    self.slices_of.entry(slice.service.clone()).or_default().insert(key.clone());
                }
                self.stale = Stale::All;
            }
        }
        true
    }

    /// Pods on this node whose connections are steered: in an opted-in namespace, not
    /// opted out themselves, not on the host network.
    pub fn enrolled_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().filter(|pod| {
            !pod.opted_out && !pod.host_network && self.namespaces.get(&pod.namespace).is_some()
        })
    }

    /// The state to make so; `enroll` are the enrolled Pods' namespace paths. Builds
    /// again what changed since the last call.
    pub fn desired(&mut self, enroll: Vec<Enrollee>) -> Desired {
        match std::mem::replace(&mut self.stale, Stale::Some(BTreeSet::new())) {
            Stale::All => {
                let keys: BTreeSet<&String> = self.services.live.keys().collect();
                self.built.retain(|key, _| keys.contains(key));
                for key in keys {
                    let built = self.build(key);
                    keep_shared(self.built.entry(key.clone()).or_default(), built);
                }
            }
            Stale::Some(keys) => {
                for key in keys {
                    if self.services.get(&key).is_none() {
                        self.built.remove(&key);
                        continue;
                    }
                    let built = self.build(&key);
                    keep_shared(self.built.entry(key).or_default(), built);
                }
            }
        }
        let services = self.built.values().flat_map(|b| b.services.iter().cloned()).collect();
        let headless = self.built.values().flat_map(|b| b.headless.iter().cloned()).collect();
        Desired { services, headless, enroll }
    }

    /// What the Service at `key` makes: a VIP per cluster IP and port, or a headless
    /// service per port.
    fn build(&self, key: &str) -> Built {
        let mut built = Built::default();
        let Some(service) = self.services.get(key) else { return built };
        let slices: Vec<&Slice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .collect();
        for port in &service.ports {
            let endpoints = |family: Option<bool>| {
                endpoints(&slices, &port.name, family, &self.deleting)
                    .into_iter()
                    .map(|(addr, condition)| DesiredEndpoint { addr, condition })
                    .collect::<Vec<_>>()
            };
            let name = format!("{key}:{}", port_name(&port.name, port.port));
            if service.cluster_ips.is_empty() {
                let endpoints = endpoints(None).into_iter().map(|e| e.addr).collect();
                built.headless.push(Arc::new(HeadlessService { name, endpoints }));
                continue;
            }
            for &ip in &service.cluster_ips {
                built.services.push(Arc::new(DesiredService {
                    name: name.clone(),
                    vip: SocketAddr::new(ip, port.port),
                    protocol: port.protocol,
                    policy: Policy { tcp_mode: service.tcp_mode, ..Policy::default() },
                    endpoints: endpoints(Some(ip.is_ipv6())),
                }));
            }
        }
        built
    }
}

/// Replaces `old` with `new`, keeping each of `old`'s allocations that `new` equals:
/// consumers then see an unchanged service as the same one.
fn keep_shared(old: &mut Built, new: Built) {
    fn merge<T: PartialEq>(old: &mut Vec<Arc<T>>, new: Vec<Arc<T>>) {
        let merged = new
            .into_iter()
            .enumerate()
            .map(|(i, n)| match old.get(i) {
                Some(o) if **o == *n => o.clone(),
                _ => n,
            })
            .collect();
        *old = merged;
    }
    merge(&mut old.services, new.services);
    merge(&mut old.headless, new.headless);
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
    deleting: &HashSet<String>,
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
            if e.pod_uid.as_ref().is_some_and(|uid| deleting.contains(uid)) {
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
        s.namespace(Event::InitDone);
        s.pod(Event::InitDone, "node-1");
        s.service(Event::InitDone);
        s.slice(Event::InitDone);
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
        s.namespace(Event::Apply(enabled));
        s.pod(Event::Apply(pod("a", "shop", "u-a", json!({}))), "node-1");
        s.pod(Event::Apply(pod("b", "other", "u-b", json!({}))), "node-1");
        let out = json!({"metadata": {"labels": {"sockeye.dev/proxy": "disabled"}}});
        s.pod(Event::Apply(pod("c", "shop", "u-c", out)), "node-1");
        let host = json!({"spec": {"hostNetwork": true}});
        s.pod(Event::Apply(pod("d", "shop", "u-d", host)), "node-1");
        let uids: Vec<&str> = s.enrolled_pods().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["u-a"]);
    }

    #[test]
    fn services_get_a_vip_per_cluster_ip_and_port_with_endpoints_of_that_family() {
        let mut s = snapshot();
        s.service(Event::Apply(cart_service()));
        let v4 = cart_slice(
            "cart-1",
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            ]),
        );
        let v6 = cart_slice("cart-2", "IPv6", json!([{"addresses": ["fd10::1"]}]));
        s.slice(Event::Apply(v4));
        s.slice(Event::Apply(v6));
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
        s.service(Event::Apply(cart_service()));
        let slice = cart_slice(
            "cart-1",
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "uid": "u1"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "uid": "u2"}},
            ]),
        );
        s.slice(Event::Apply(slice));
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-11-23T10:00:00Z"}});
        s.pod(Event::Apply(pod("b1", "shop", "u1", deleting)), "node-1");
        let endpoints = &s.desired(vec![]).services[0].endpoints;
        assert_eq!(endpoints[0].condition, Condition::Terminating);
        assert_eq!(endpoints[1].condition, Condition::Ready);
    }

    #[test]
    fn overlapping_slices_count_an_endpoint_once_with_its_best_condition() {
        let mut s = snapshot();
        s.service(Event::Apply(cart_service()));
        let old = cart_slice(
            "cart-1",
            "IPv4",
            json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
        );
        let new = cart_slice("cart-2", "IPv4", json!([{"addresses": ["10.0.0.1"]}]));
        s.slice(Event::Apply(old));
        s.slice(Event::Apply(new));
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
        s.service(Event::Apply(db));
        let slice = object(json!({
            "metadata": {"name": "db-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["10.0.0.9"]}],
        }));
        s.slice(Event::Apply(slice));
        let desired = s.desired(vec![]);
        assert!(desired.services.is_empty());
        assert_eq!(desired.headless.len(), 1);
        assert_eq!(desired.headless[0].name, "shop/db:5432");
        assert_eq!(desired.headless[0].endpoints, ["10.0.0.9:5432".parse().unwrap()]);
    }

    #[test]
    fn a_relist_replaces_what_was_known_and_skips_odd_objects() {
        let mut s = snapshot();
        s.service(Event::Apply(cart_service()));
        s.service(Event::Init);
        assert_eq!(s.services.values().count(), 1, "kept until the relist is done");
        let odd = object(json!({"metadata": {"name": "odd", "namespace": "shop"},
                                "spec": {"ports": "many"}}));
        s.service(Event::InitApply(odd));
        let other = object(json!({"metadata": {"name": "web", "namespace": "shop"},
                                  "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}));
        s.service(Event::InitApply(other));
        assert!(s.service(Event::InitDone));
        let names: Vec<_> = s.desired(vec![]).services.iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, ["shop/web:80"]);
    }

    #[test]
    fn a_change_builds_its_service_again_and_the_others_stay_shared() {
        let mut s = snapshot();
        s.service(Event::Apply(cart_service()));
        let web = object(json!({"metadata": {"name": "web", "namespace": "shop"},
                                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}));
        s.service(Event::Apply(web));
        let slice = |address: &str| {
            cart_slice(
                "cart-1",
                "IPv4",
                json!([{"addresses": [address],
                "targetRef": {"kind": "Pod", "uid": "u1"}}]),
            )
        };
        s.slice(Event::Apply(slice("10.0.0.1")));
        let before = s.desired(vec![]);
        assert_eq!(before.services.len(), 3, "cart v4 and v6, web");

        s.slice(Event::Apply(slice("10.0.0.2")));
        let after = s.desired(vec![]);
        let shared = |a: &Desired, b: &Desired| -> Vec<bool> {
            a.services.iter().zip(&b.services).map(|(x, y)| Arc::ptr_eq(x, y)).collect()
        };
        assert_eq!(shared(&before, &after), [false, true, true], "cart v4 rebuilt");
        assert_eq!(after.services[0].endpoints[0].addr.to_string(), "10.0.0.2:8080");

        // The same object again changes nothing, not even an allocation.
        s.slice(Event::Apply(slice("10.0.0.2")));
        assert_eq!(shared(&after, &s.desired(vec![])), [true, true, true]);

        // A Pod of the slice being deleted on this node rebuilds it.
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-11-23T10:00:00Z"}});
        s.pod(Event::Apply(pod("c1", "shop", "u1", deleting)), "node-1");
        let later = s.desired(vec![]);
        assert_eq!(shared(&after, &later), [false, true, true]);
        assert_eq!(later.services[0].endpoints[0].condition, Condition::Terminating);

        s.service(Event::Delete(cart_service()));
        assert_eq!(s.desired(vec![]).services.len(), 1, "only web");
    }
}

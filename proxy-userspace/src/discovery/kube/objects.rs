//! The few fields sockeye reads from Kubernetes objects, read leniently: an object
//! with a missing or odd field is skipped with a reason (logged by the caller), and
//! never stops the others from being used.

use std::net::IpAddr;

use kube::core::DynamicObject;
use serde::Deserialize;

use crate::{
    config::{Protocol, TcpMode},
    discovery::Condition,
};

/// The label that opts a namespace in (`enabled`) or a Pod out (`disabled`).
pub const PROXY_LABEL: &str = "sockeye.dev/proxy";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation that puts a Service's opaque TCP ports in kernel mode (`kernel`) or
/// relay mode (`relay`, the default).
pub const TCP_MODE_ANNOTATION: &str = "sockeye.dev/tcp-mode";

/// Why an object was skipped.
pub type Skip = String;

/// A Pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub uid: String,
    /// Labeled `sockeye.dev/proxy=disabled`.
    pub opted_out: bool,
    /// `metadata.deletionTimestamp` is set: it is terminating.
    pub deleting: bool,
    /// Shares the node's network namespace: never enrolled.
    pub host_network: bool,
}

/// A Service: its cluster IPs (none when headless) and TCP ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// From the [`TCP_MODE_ANNOTATION`].
    pub tcp_mode: TcpMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; "" when the Service has a single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// An EndpointSlice: a part of one Service's endpoints, of one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// `namespace/name` of its Service.
    pub service: String,
    /// `(port name, port)` pairs, matched to the Service's ports by name.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub condition: Condition,
    /// The UID of the Pod behind it, if the slice names one.
    pub pod_uid: Option<String>,
}

/// `namespace/name` (`name` for cluster-scoped objects), the key of every table.
pub fn key(object: &DynamicObject) -> String {
    let meta = &object.metadata;
    let name = meta.name.as_deref().unwrap_or("");
    match &meta.namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

fn label<'a>(object: &'a DynamicObject, name: &str) -> Option<&'a str> {
    object.metadata.labels.as_ref()?.get(name).map(String::as_str)
}

/// A namespace is opted in by its label (the watch selects on it; this double-checks).
pub fn namespace(object: &DynamicObject) -> Result<(), Skip> {
    match label(object, PROXY_LABEL) {
        Some("enabled") => Ok(()),
        other => Err(format!("label {PROXY_LABEL} is {other:?}, not \"enabled\"")),
    }
}

pub fn pod(object: &DynamicObject, node: &str) -> Result<Pod, Skip> {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Spec {
        node_name: Option<String>,
        host_network: Option<bool>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Data {
        spec: Spec,
    }
    let meta = &object.metadata;
    let uid = meta.uid.clone().ok_or("no metadata.uid")?;
    let namespace = meta.namespace.clone().ok_or("no metadata.namespace")?;
    let data: Data = read(object)?;
    if data.spec.node_name.as_deref() != Some(node) {
        return Err(format!("spec.nodeName is {:?}, not this node", data.spec.node_name));
    }
    Ok(Pod {
        namespace,
        uid,
        opted_out: label(object, PROXY_LABEL) == Some("disabled"),
        deleting: meta.deletion_timestamp.is_some(),
        host_network: data.spec.host_network.unwrap_or(false),
    })
}

pub fn service(object: &DynamicObject) -> Result<Service, Skip> {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Port {
        name: Option<String>,
        port: Option<i64>,
        protocol: Option<String>,
        app_protocol: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Spec {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(rename = "clusterIP")]
        cluster_ip: Option<String>,
        #[serde(rename = "clusterIPs")]
        cluster_ips: Option<Vec<String>>,
        ports: Vec<Port>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Data {
        spec: Spec,
    }
    let data: Data = read(object)?;
    let spec = data.spec;
    if spec.kind.as_deref() == Some("ExternalName") {
        return Err("an ExternalName Service has no endpoints".into());
    }
    let ips = spec.cluster_ips.unwrap_or_else(|| spec.cluster_ip.into_iter().collect());
    let cluster_ips = ips
        .iter()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(|ip| ip.parse().map_err(|_| format!("spec.clusterIPs: {ip:?} is not an IP address")))
        .collect::<Result<_, _>>()?;
    let mut ports = Vec::new();
    for p in spec.ports {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = p
            .port
            .and_then(|port| u16::try_from(port).ok())
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("spec.ports: {:?} is not a TCP port", p.port))?;
        let name = p.name.unwrap_or_default();
        let protocol = protocol(p.app_protocol.as_deref(), &name);
        ports.push(ServicePort { name, port, protocol });
    }
    let annotation = object.metadata.annotations.as_ref().and_then(|a| a.get(TCP_MODE_ANNOTATION));
    let tcp_mode = match annotation.map(String::as_str) {
        None | Some("relay") => TcpMode::Relay,
        Some("kernel") => TcpMode::Kernel,
        Some(other) => {
            return Err(format!(
                "annotation {TCP_MODE_ANNOTATION}: {other:?} is not kernel or relay"
            ));
        }
    };
    Ok(Service { cluster_ips, ports, tcp_mode })
}

/// How a port's traffic is handled: `appProtocol` first, then the port name's prefix
/// (`grpc-web`, `http2-api`, …). Anything else is opaque TCP, which never sniffs and
/// so never delays server-first protocols.
fn protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    let hint = app_protocol.unwrap_or(name).to_ascii_lowercase();
    let hint = hint.strip_prefix("kubernetes.io/").unwrap_or(&hint);
    let first = hint.split(['-', '_']).next().unwrap_or("");
    match first {
        "grpc" | "h2c" | "http2" => Protocol::Grpc,
        "http" => Protocol::Http,
        _ => Protocol::Tcp,
    }
}

pub fn slice(object: &DynamicObject) -> Result<Slice, Skip> {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct TargetRef {
        kind: Option<String>,
        uid: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Endpoint {
        addresses: Vec<String>,
        conditions: Conditions,
        target_ref: Option<TargetRef>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Port {
        name: Option<String>,
        port: Option<i64>,
        protocol: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Data {
        address_type: Option<String>,
        endpoints: Vec<Endpoint>,
        ports: Vec<Port>,
    }
    let service = label(object, SERVICE_NAME_LABEL)
        .ok_or_else(|| format!("no {SERVICE_NAME_LABEL} label"))?;
    let namespace = object.metadata.namespace.as_deref().ok_or("no metadata.namespace")?;
    let data: Data = read(object)?;
    match data.address_type.as_deref() {
        Some("IPv4" | "IPv6") => {}
        other => return Err(format!("addressType is {other:?}, not IPv4 or IPv6")),
    }
    let ports = data
        .ports
        .into_iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
        .collect();
    let mut endpoints = Vec::new();
    for e in data.endpoints {
        let condition = condition(&e.conditions);
        let pod_uid = e.target_ref.filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.uid);
        for address in &e.addresses {
            let ip = address
                .parse()
                .map_err(|_| format!("endpoints: {address:?} is not an IP address"))?;
            endpoints.push(SliceEndpoint { ip, condition, pod_uid: pod_uid.clone() });
        }
    }
    Ok(Slice { service: format!("{namespace}/{service}"), ports, endpoints })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

/// EndpointSlice conditions, with the API's defaults for missing ones: ready is
/// true when absent, serving follows ready, terminating is false.
fn condition(c: &Conditions) -> Condition {
    let ready = c.ready.unwrap_or(true);
    let serving = c.serving.unwrap_or(ready);
    if c.terminating.unwrap_or(false) {
        // Serving or not, a terminating endpoint takes no new requests.
        Condition::Terminating
    } else if ready && serving {
        Condition::Ready
    } else {
        Condition::NotReady
    }
}

fn read<T: serde::de::DeserializeOwned>(object: &DynamicObject) -> Result<T, Skip> {
    T::deserialize(&object.data).map_err(|err| format!("unreadable: {err}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_pod_on_this_node() {
        let pod = super::pod(
            &object(json!({
                "metadata": {"name": "c1", "namespace": "shop", "uid": "u1",
                             "labels": {"sockeye.dev/proxy": "disabled"},
                             "deletionTimestamp": "2026-11-23T10:00:00Z"},
                "spec": {"nodeName": "node-1", "containers": []},
            })),
            "node-1",
        )
        .unwrap();
        assert_eq!(
            pod,
            Pod {
                namespace: "shop".into(),
                uid: "u1".into(),
                opted_out: true,
                deleting: true,
                host_network: false
            }
        );
    }

    #[test]
    fn odd_pods_are_skipped_with_a_reason() {
        let no_uid = object(json!({"metadata": {"name": "a", "namespace": "n"}}));
        assert_eq!(pod(&no_uid, "node-1").unwrap_err(), "no metadata.uid");
        let elsewhere = object(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u"},
            "spec": {"nodeName": "node-2"},
        }));
        assert!(pod(&elsewhere, "node-1").unwrap_err().contains("not this node"));
        let odd = object(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u"},
            "spec": "nonsense",
        }));
        assert!(pod(&odd, "node-1").unwrap_err().starts_with("unreadable"));
    }

    #[test]
    fn services_keep_tcp_ports_and_guess_their_protocol() {
        let s = service(&object(json!({
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7", "fd00::7"],
                     "ports": [{"name": "grpc-api", "port": 50051},
                               {"name": "web", "port": 80, "appProtocol": "http"},
                               {"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "db", "port": 5432, "protocol": "TCP"}]},
        })))
        .unwrap();
        assert_eq!(
            s.cluster_ips,
            ["10.96.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]
        );
        let ports: Vec<_> = s.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol)).collect();
        assert_eq!(
            ports,
            [
                ("grpc-api", 50051, Protocol::Grpc),
                ("web", 80, Protocol::Http),
                ("db", 5432, Protocol::Tcp)
            ]
        );
    }

    #[test]
    fn an_annotation_puts_a_services_tcp_ports_in_kernel_mode() {
        let annotated = |value: &str| {
            service(&object(json!({
                "metadata": {"name": "db", "namespace": "shop",
                             "annotations": {TCP_MODE_ANNOTATION: value}},
                "spec": {"clusterIP": "10.96.0.8", "ports": [{"port": 5432}]},
            })))
        };
        assert_eq!(annotated("kernel").unwrap().tcp_mode, TcpMode::Kernel);
        assert_eq!(annotated("relay").unwrap().tcp_mode, TcpMode::Relay);
        assert!(annotated("fast").unwrap_err().contains("sockeye.dev/tcp-mode: \"fast\""));
    }

    #[test]
    fn headless_and_odd_services() {
        let headless = service(&object(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        })))
        .unwrap();
        assert!(headless.cluster_ips.is_empty());
        let bad_port = object(json!({
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.8", "ports": [{"port": 70000}]},
        }));
        assert!(service(&bad_port).unwrap_err().contains("not a TCP port"));
        let bad_ip = object(json!({
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.300"},
        }));
        assert!(service(&bad_ip).unwrap_err().contains("not an IP address"));
    }

    #[test]
    fn slice_conditions_follow_the_api_defaults() {
        let s = slice(&object(json!({
            "metadata": {"name": "cart-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "cart"}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc-api", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "uid": "u1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"],
                 "conditions": {"ready": false, "serving": false, "terminating": true}},
            ],
        })))
        .unwrap();
        assert_eq!(s.service, "shop/cart");
        assert_eq!(s.ports, [("grpc-api".to_string(), 8080)]);
        let conditions: Vec<_> = s.endpoints.iter().map(|e| e.condition).collect();
        use Condition::*;
        assert_eq!(conditions, [Ready, NotReady, Terminating, Terminating]);
        assert_eq!(s.endpoints[0].pod_uid.as_deref(), Some("u1"));
    }

    #[test]
    fn odd_slices_are_skipped_with_a_reason() {
        let unlabeled = object(json!({"metadata": {"name": "s", "namespace": "n"}}));
        assert!(slice(&unlabeled).unwrap_err().contains("kubernetes.io/service-name"));
        let fqdn = object(json!({
            "metadata": {"name": "s", "namespace": "n",
                         "labels": {"kubernetes.io/service-name": "x"}},
            "addressType": "FQDN",
        }));
        assert!(slice(&fqdn).unwrap_err().contains("FQDN"));
        let bad_address = object(json!({
            "metadata": {"name": "s", "namespace": "n",
                         "labels": {"kubernetes.io/service-name": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["not-an-ip"]}],
        }));
        assert!(slice(&bad_address).unwrap_err().contains("not-an-ip"));
    }
}

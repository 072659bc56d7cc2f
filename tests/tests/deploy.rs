//! deploy/: every manifest parses into its k8s-openapi type and keeps the invariants
//! the DaemonSet relies on; the Helm chart renders the same objects; the agent's
//! arguments and settings file are ones `sockeye` accepts.

use std::{collections::BTreeMap, path::Path, process::Command};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;
use serde_json::Value;

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

/// Every YAML document of every file in `dir`, by `Kind/name`.
fn documents(dir: &Path, render: impl Fn(&str) -> String) -> BTreeMap<String, Value> {
    let mut docs = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        let text = render(&std::fs::read_to_string(&file).unwrap());
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|err| panic!("{}: not YAML: {err}", file.display()));
            if value.is_null() {
                continue;
            }
            let key = format!("{}/{}", value["kind"].as_str().unwrap(), value["metadata"]["name"]);
            docs.insert(key.replace('"', ""), value);
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(docs: &BTreeMap<String, Value>, key: &str) -> T {
    let value = docs.get(key).unwrap_or_else(|| panic!("no {key} in {:?}", docs.keys()));
    serde_json::from_value(value.clone()).unwrap_or_else(|err| panic!("{key}: {err}"))
}

#[test]
fn manifests_parse_into_their_types_and_keep_the_invariants() {
    let docs = documents(&deploy().join("kubernetes"), str::to_string);
    let _: Namespace = typed(&docs, "Namespace/sockeye-system");
    let account: ServiceAccount = typed(&docs, "ServiceAccount/sockeye");
    let config: ConfigMap = typed(&docs, "ConfigMap/sockeye");
    let binding: ClusterRoleBinding = typed(&docs, "ClusterRoleBinding/sockeye");
    let role: ClusterRole = typed(&docs, "ClusterRole/sockeye");
    let daemonset: DaemonSet = typed(&docs, "DaemonSet/sockeye");
    assert_eq!(docs.len(), 6, "{:?}", docs.keys());

    // RBAC: get/list/watch on exactly what discovery reads.
    let mut granted = Vec::new();
    for rule in role.rules.unwrap() {
        assert_eq!(rule.verbs, ["get", "list", "watch"], "read-only");
        for group in rule.api_groups.unwrap() {
            for resource in rule.resources.clone().unwrap() {
                granted.push(format!("{group}/{resource}"));
            }
        }
    }
    granted.sort();
    assert_eq!(granted, ["/namespaces", "/pods", "/services", "discovery.k8s.io/endpointslices"]);
    assert_eq!(binding.role_ref.name, "sockeye");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(subject.name, account.metadata.name.unwrap());
    assert_eq!(subject.namespace, account.metadata.namespace);

    let spec = daemonset.spec;
    let strategy = spec.update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    // Surge: the new agent starts beside the old one and takes over (hand-off).
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true), "Pods' namespaces are found under the host's /proc");
    assert_eq!(pod.service_account_name.as_deref(), Some("sockeye"));
    let agent = &pod.containers[0];
    let security = agent.security_context.clone().unwrap();
    assert_ne!(security.privileged, Some(true));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    assert_eq!(
        capabilities.add.unwrap(),
        ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_NICE", "SYS_PTRACE", "SYS_RESOURCE"]
    );
    let node_name = agent.env.clone().unwrap().into_iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name.value_from.unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let probe_path = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
        probe.unwrap().http_get.unwrap().path.unwrap()
    };
    assert_eq!(probe_path(agent.liveness_probe.clone()), "/healthz");
    assert_eq!(probe_path(agent.readiness_probe.clone()), "/readyz");
    let requests = agent.resources.clone().unwrap().requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    // Mounts: bpffs, the cgroup tree and the settings, each from a volume that exists.
    let volumes: BTreeMap<String, _> =
        pod.volumes.unwrap().into_iter().map(|v| (v.name.clone(), v)).collect();
    let mounts: BTreeMap<String, String> =
        agent.volume_mounts.clone().unwrap().into_iter().map(|m| (m.mount_path, m.name)).collect();
    for (path, host) in [("/sys/fs/bpf", "/sys/fs/bpf"), ("/sys/fs/cgroup", "/sys/fs/cgroup")] {
        let volume = &volumes[&mounts[path]];
        assert_eq!(volume.host_path.as_ref().unwrap().path, host);
    }
    assert_eq!(volumes[&mounts["/etc/sockeye"]].config_map.as_ref().unwrap().name, "sockeye");

    // The arguments are ones `sockeye run` takes, and the settings file is valid for --kube.
    let args = agent.args.clone().unwrap();
    assert_eq!(&args[..2], ["run", "--kube"]);
    let help = Command::new(sandbox::binary("sockeye").unwrap()).args(["run", "--help"]).output();
    let help = String::from_utf8(help.unwrap().stdout).unwrap();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "`sockeye run --help` has no {flag}");
    }
    let settings_at = args.iter().position(|a| a == "--config").unwrap() + 1;
    let file = Path::new(&args[settings_at]);
    let key = file.file_name().unwrap().to_str().unwrap();
    let text = &config.data.unwrap()[key];
    let dir = std::env::temp_dir().join(format!("sockeye-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(key), text).unwrap();
    let loaded = sockeye::config::Config::load_node_settings(&dir.join(key));
    std::fs::remove_dir_all(&dir).unwrap();
    let settings = loaded.unwrap();
    // No declared ports: with hostNetwork they become host ports, which would keep the
    // surge Pod off the node.
    assert!(agent.ports.is_none(), "{:?}", agent.ports);
    let probe = agent.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(probe.port, IntOrString::Int(i32::from(settings.admin.port())));
}

/// Renders the chart's templates as `helm template` would with the default values:
/// they only substitute `{{ .Values.x }}` and `{{ .Release.Namespace }}`.
fn render(template: &str, values: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("an unclosed {{") + start;
        let expr = rest[start + 2..end].trim();
        let value = match expr.strip_prefix(".Values.") {
            Some(name) => match &values[name] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            None if expr == ".Release.Namespace" => "sockeye-system".into(),
            None => {
                panic!("the chart uses {{{{ {expr} }}}}; teach this renderer or keep it simple")
            }
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_helm_chart_renders_the_same_objects_as_the_manifests() {
    let chart = deploy().join("helm/sockeye");
    let values: BTreeMap<String, Value> =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let rendered = documents(&chart.join("templates"), |t| render(t, &values));
    let mut manifests = documents(&deploy().join("kubernetes"), str::to_string);
    // Helm installs into a namespace it is given; the plain manifests create theirs.
    manifests.remove("Namespace/sockeye-system");
    assert_eq!(rendered.keys().collect::<Vec<_>>(), manifests.keys().collect::<Vec<_>>());
    for (key, object) in &manifests {
        assert_eq!(&rendered[key], object, "{key} differs between the chart and the manifests");
    }
}

//! The operator commands beside `run`: `check` validates a config without running
//! (as `nginx -t` does), `status` shows what a running agent is doing, from its admin
//! endpoint, as a table a person reads at a glance.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{config::Config, discovery::Enrollee, enroll::Enrolled, state::Lifecycle};

/// Validates the config at `path` (node settings only, for `--kube`) as `run` would,
/// including whether it fits the kernel maps it asks for and whether its namespace
/// files are namespaces; returns a summary of what it configures.
pub fn check(path: &Path, kube: bool) -> anyhow::Result<String> {
    let config = if kube { Config::load_node_settings(path)? } else { Config::load(path)? };
    let enrollees: Vec<Enrollee> = config.enroll.netns.iter().map(Enrollee::path).collect();
    Enrolled::check(&enrollees).context("enroll.netns")?;
    let missing = enrollees.iter().filter(|e| !e.path.exists()).count();
    let c = &config.capacity;
    let mut summary = format!(
        "{}: valid. {} services (capacity {}), {} network namespaces (capacity {}), listen {}",
        path.display(),
        config.services.len(),
        c.services,
        config.enroll.netns.len(),
        c.pods,
        config.listen,
    );
    if let Some(listen6) = config.listen6 {
        summary.push_str(&format!(" and {listen6}"));
    }
    summary.push_str(&format!(", admin {}", config.admin));
    if missing > 0 {
        summary.push_str(&format!(
            "\nnote: {missing} enroll.netns path(s) do not exist yet; the agent enrolls them \
             once they appear"
        ));
    }
    Ok(summary)
}

/// Asks the agent's admin endpoint at `admin` what it is doing, and renders it.
pub fn status(admin: SocketAddr) -> anyhow::Result<String> {
    let body = get(admin, "/debug/state").with_context(|| {
        format!("no agent answers at {admin}; is it running (`sockeye run`), and is --admin right?")
    })?;
    let state: Value =
        serde_json::from_str(&body).context("the admin endpoint's /debug/state is not JSON")?;
    Ok(render(admin, &state))
}

fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: sockeye\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// The table `sockeye status` prints for a `/debug/state` document.
pub fn render(admin: SocketAddr, state: &Value) -> String {
    let ready = if state["ready"].as_bool() == Some(true) { "ready" } else { "NOT READY" };
    let full = if state["full"].as_bool() == Some(true) {
        "FULL: new connects fail open to kube-proxy's path"
    } else {
        "taking connections"
    };
    let mut out = format!("sockeye at {admin}: {ready}, {full}\n");
    if let Some(maps) = state["kernel_maps"].as_object() {
        let maps: Vec<String> = maps
            .iter()
            .map(|(name, m)| format!("{name} {}/{}", m["entries"], m["capacity"]))
            .collect();
        out.push_str(&format!("kernel maps: {}\n", maps.join(", ")));
    }
    let counter = |name: &str| state["kernel_counters"][name].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "kernel: {} connects steered; failed open: {} agent gone, {} agent hung, {} agent \
         full, {} Pod full; left alone: {} not enrolled\n\n",
        counter("steered"),
        counter("skip_agent_dead"),
        counter("skip_agent_stale"),
        counter("skip_agent_full"),
        counter("skip_pod_full"),
        counter("skip_not_enrolled"),
    ));
    out.push_str(&services_table(state["services"].as_array().map_or(&[][..], Vec::as_slice)));
    out
}

fn services_table(services: &[Value]) -> String {
    let states = [
        Lifecycle::Ready,
        Lifecycle::Warming,
        Lifecycle::Unhealthy,
        Lifecycle::Ejected,
        Lifecycle::Draining,
    ];
    let mut rows = vec![
        ["SERVICE", "VIP", "PROTOCOL"]
            .into_iter()
            .map(String::from)
            .chain(states.iter().map(|s| s.name().to_uppercase()))
            .chain(["IN FLIGHT".to_string()])
            .collect::<Vec<_>>(),
    ];
    for service in services {
        let endpoints = service["endpoints"].as_array().map_or(&[][..], Vec::as_slice);
        let count = |state: &str| endpoints.iter().filter(|e| e["state"] == state).count();
        let in_flight: u64 = endpoints.iter().filter_map(|e| e["outstanding"].as_u64()).sum();
        let mut row: Vec<String> = ["name", "vip", "protocol"]
            .iter()
            .map(|k| service[k].as_str().unwrap_or("?").to_string())
            .collect();
        row.extend(states.iter().map(|s| count(s.name()).to_string()));
        row.push(in_flight.to_string());
        rows.push(row);
    }
    if services.is_empty() {
        return "no services\n".into();
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> =
                row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_renders_services_per_state_and_the_kernel_at_a_glance() {
        let state = json!({
            "ready": true,
            "full": false,
            "kernel_maps": {"services": {"entries": 2, "capacity": 65536},
                            "pods": {"entries": 1, "capacity": 4096}},
            "kernel_counters": {"steered": 120, "skip_agent_stale": 3},
            "services": [
                {"name": "greeter", "vip": "10.96.0.20:50051", "protocol": "grpc",
                 "endpoints": [{"addr": "10.10.0.3:50051", "state": "ready", "outstanding": 2},
                               {"addr": "10.10.0.4:50051", "state": "ejected", "outstanding": 0}]},
                {"name": "db", "vip": "10.96.0.30:5432", "protocol": "tcp", "endpoints": []},
            ],
        });
        let text = render("127.0.0.1:15090".parse().unwrap(), &state);
        println!("{text}");
        assert!(text.starts_with("sockeye at 127.0.0.1:15090: ready, taking connections\n"));
        assert!(text.contains("kernel maps: pods 1/4096, services 2/65536"), "{text}");
        assert!(text.contains("120 connects steered; failed open: 0 agent gone, 3 agent hung"));
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("SERVICE")).unwrap();
        assert!(lines[header].contains("READY  WARMING  UNHEALTHY  EJECTED  DRAINING  IN FLIGHT"));
        let greeter: Vec<&str> = lines[header + 1].split_whitespace().collect();
        assert_eq!(greeter, ["greeter", "10.96.0.20:50051", "grpc", "1", "0", "0", "1", "0", "2"]);
        assert!(lines[header + 2].starts_with("db "), "{text}");
    }

    #[test]
    fn check_names_the_field_and_notes_namespaces_to_come() {
        let dir = std::env::temp_dir().join(format!("sockeye-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "enroll:\n  netns: [/var/run/netns/sockeye-not-yet]\nservices: []\n")
            .unwrap();
        let summary = check(&path, false).unwrap();
        assert!(summary.contains("valid. 0 services (capacity 65536), 1 network namespaces"));
        assert!(summary.contains("1 enroll.netns path(s) do not exist yet"), "{summary}");
        std::fs::write(&path, "services:\n- name: a\n  vip: 10.96.0.1:0\n").unwrap();
        let err = check(&path, false).unwrap_err();
        assert!(format!("{err:#}").contains("services[0].vip"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
